"""The architecture page and the README's layout follow the tree as it is.

``docs/architecture.md`` names every module of the packages (found by walking the tree,
as the wheel and plugin-zip tests do) and nothing that is gone: every path it names
exists, every ``cloudseg`` command and ``cloudseg:`` Processing algorithm is real, and
every ``Class.member`` and ``snake_case`` name it gives is defined in the packages.
README.md's layout table names every top-level folder and package, and only paths that
exist. Nothing is imported but the command line's parser (no QGIS, no torch).
"""

from __future__ import annotations

import argparse
import ast
import os
import re
from functools import cache
from pathlib import Path

import pytest
from package_tree import BUILD_OUTPUTS, ROOT, tree_modules

ARCHITECTURE = ROOT / "docs" / "architecture.md"
README = ROOT / "README.md"
PACKAGES = ("backend", "training", "cloudseg_plugin")

CODE = re.compile(r"`([^`\n]+)`")
#: A path of the repository as the docs write one: ``backend/cli.py``, ``tests/gui/``,
#: ``benchmarks/*.json``. Placeholders (``<stem>-runs/``) and URLs (``s3://``) are not.
PATH = re.compile(r"[\w.*-]+(?:/[\w.*-]+)*/?")
COMMAND = re.compile(r"cloudseg ([a-z][\w-]*)(?: ([a-z][\w|-]*))?\b.*")
ALGORITHM = re.compile(r"cloudseg:(\w+)")
MEMBER = re.compile(r"([A-Z]\w*)\.(\w+)")
NAME = re.compile(r"[a-z]\w*_\w+")


def code_spans(text: str) -> list[str]:
    """The text's inline code, in order."""
    return CODE.findall(text)


def paths_in(text: str) -> list[str]:
    """The repository paths named as inline code (a span with a ``/``)."""
    return [s for s in code_spans(text) if "/" in s and PATH.fullmatch(s)]


def exists(path: str) -> bool:
    """Whether ``path`` (relative to the root; ``*`` allowed; ``/`` at the end: a folder) exists."""
    if "*" in path:
        return any(ROOT.glob(path))
    target = ROOT / path
    return target.is_dir() if path.endswith("/") else target.exists()


def package_modules() -> list[str]:
    """Every Python module of the installable tree: the root's ``__init__.py`` and the packages'."""
    modules = tree_modules()
    assert any(m.startswith("backend/active/") for m in modules), "the walk found no packages"
    return modules


def top_level_folders() -> list[str]:
    """The root's folders, less hidden ones, caches, egg-info, virtualenvs and build outputs."""
    return sorted(
        entry.name
        for entry in ROOT.iterdir()
        if entry.is_dir()
        and not entry.name.startswith(".")
        and entry.name != "__pycache__"
        and not entry.name.endswith(".egg-info")
        and not (entry / "pyvenv.cfg").is_file()
        and entry.name not in BUILD_OUTPUTS
    )


def packages() -> list[str]:
    """Every package folder below the root: ``backend``, ``backend/active``..."""
    return sorted(
        Path(folder).relative_to(ROOT).as_posix()
        for top in PACKAGES
        for folder, dirs, files in os.walk(ROOT / top)
        if "__init__.py" in files and "__pycache__" not in Path(folder).parts
    )


def layout_section() -> str:
    """README.md's ``## Layout`` section."""
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Layout\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


@cache
def definitions() -> tuple[dict[str, set[str]], set[str], set[str]]:
    """What the packages define: class members by class, other names, and string constants.

    Members are methods, class attributes and ``self.x`` assignments; names are the
    packages, and functions, classes, assignment targets and parameters anywhere.
    """
    members: dict[str, set[str]] = {}
    names: set[str] = {folder.replace("/", ".") for folder in packages()}
    strings: set[str] = set()
    for module in package_modules():
        tree = ast.parse((ROOT / module).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                own = members.setdefault(node.name, set())
                for item in ast.walk(node):
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                        own.add(item.name)
                    elif isinstance(item, ast.Name) and isinstance(item.ctx, ast.Store):
                        own.add(item.id)
                    elif isinstance(item, ast.Attribute) and isinstance(item.ctx, ast.Store):
                        own.add(item.attr)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                strings.add(node.value)
    return members, names, strings


def commands() -> dict[str, set[str]]:
    """The ``cloudseg`` subcommands (with the training package's), and their subcommands."""
    from cloudseg.backend.cli import build_parser

    def choices(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                return dict(action.choices)
        return {}

    return {name: set(choices(sub)) for name, sub in choices(build_parser()).items()}


def processing_algorithms() -> set[str]:
    """The names of the Processing algorithms (``algorithm_name = "..."`` in their modules)."""
    folder = ROOT / "cloudseg_plugin" / "algorithms"
    return {
        name
        for path in sorted(folder.glob("*.py"))
        for name in re.findall(r'^\s+algorithm_name = "(\w+)"', path.read_text("utf-8"), re.M)
    }


def test_every_module_is_named_in_the_architecture_page():
    named = set(code_spans(ARCHITECTURE.read_text(encoding="utf-8")))
    missing = [m for m in package_modules() if m not in named]
    assert not missing, (
        f"docs/architecture.md does not name {', '.join(missing)}: say where each lives "
        "(as `path/module.py`)"
    )


def test_every_path_the_architecture_page_names_exists():
    text = ARCHITECTURE.read_text(encoding="utf-8")
    gone = sorted({p for p in paths_in(text) if not exists(p)})
    assert not gone, f"docs/architecture.md names paths that do not exist: {', '.join(gone)}"
    assert "backend/active/project.py" in paths_in(text)


@pytest.mark.slow
def test_the_commands_and_algorithms_the_architecture_page_names_exist():
    text = ARCHITECTURE.read_text(encoding="utf-8")
    known = commands()
    wrong = []
    for span in code_spans(text):
        if match := COMMAND.fullmatch(span):
            name, word = match.groups()
            subs = known.get(name)
            if subs is None or (subs and word and not set(word.split("|")) <= subs):
                wrong.append(span)
    assert not wrong, f"docs/architecture.md names commands cloudseg lacks: {wrong}"
    assert {"propose", "labels-to-store", "fine-tune", "segment"} <= set(known)

    _, _, strings = definitions()
    algorithms = processing_algorithms()
    named = {m.group(1) for s in code_spans(text) if (m := ALGORITHM.fullmatch(s))}
    # A cloudseg:name span is an algorithm, or a property name the code spells out.
    unknown = sorted(n for n in named if n not in algorithms and f"cloudseg:{n}" not in strings)
    assert not unknown, (
        f"docs/architecture.md names Processing algorithms that do not exist: {unknown}"
    )
    assert {"propose", "labels_to_store", "segment", "check_labels"} <= algorithms


def test_the_names_the_architecture_page_gives_are_defined():
    members, names, _ = definitions()
    wrong = []
    for span in code_spans(ARCHITECTURE.read_text(encoding="utf-8")):
        if (match := MEMBER.fullmatch(span)) and match.group(1) in members:
            if match.group(2) not in members[match.group(1)]:
                wrong.append(span)
        elif NAME.fullmatch(span) and span not in names:
            wrong.append(span)
    assert not wrong, f"docs/architecture.md names what the packages do not define: {wrong}"
    assert "propose_on_scene" in names and "fine_tune" in members["LabelDock"]


def test_readme_layout_names_every_folder_and_package_and_only_real_paths():
    section = layout_section()
    listed = paths_in(section)
    gone = sorted({p for p in listed if not exists(p)})
    assert not gone, f"README.md's layout names paths that do not exist: {', '.join(gone)}"

    def is_listed(folder: str) -> bool:
        return any(p.rstrip("/") == folder or p.startswith(folder + "/") for p in listed)

    for folder in [*top_level_folders(), *packages()]:
        assert is_listed(folder), f"README.md's layout table does not list {folder}/"
    for package in packages():
        assert f"{package}/" in listed, f"README.md's layout table has no row for {package}/"

    # A module named in a row (``dock.py``) lives in that row's folder.
    for row in section.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) < 2:
            continue
        folders = [p for p in paths_in(cells[0]) if p.endswith("/")]
        for name in code_spans(cells[1]):
            if folders and re.fullmatch(r"[\w.-]+\.py", name):
                assert any((ROOT / f / name).is_file() for f in folders), (
                    f"README.md's layout names {name} in {', '.join(folders)}: not there"
                )

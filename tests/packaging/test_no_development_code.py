"""The wheel and the plugin zip hold what users run and no development code.

Benchmarks, studies, their results and the labeled reference scenes of the shared data
live in ``dev/``; the build, demo and screenshot tools in ``scripts/``; the tests in
``tests/``. None of them may reach a user: not as a folder, not as a module copied into
a package, not as a result file, and no shipped module may import one. The zip is built
with ``scripts/package_plugin.py`` (what ``make package`` runs), the wheel by pip
(``conftest.py``, a few seconds: not marked slow, so ``make test-fast`` checks both).
"""

from __future__ import annotations

import ast
import importlib.util
import zipfile
from pathlib import Path

import pytest
from package_tree import ROOT, tree_modules

#: Folders of the checkout for developers only.
DEVELOPMENT_DIRS = ("dev", "scripts", "tests", "docs", "benchmarks", ".ci")
#: What a user runs: the plugin, the command line, the training step, the model cards.
USER_FILES = (
    "__init__.py",
    "metadata.txt",
    "cloudseg_plugin/plugin.py",
    "backend/cli.py",
    "backend/inference/segment.py",
    "training/cli.py",
    "training/finetune.py",
    "resources/icons/cloudseg.svg",
    "resources/models/ukis-csmask-4b-l1c.json",
)


def development_files() -> list[Path]:
    """Every file of the development folders, relative to the root (caches aside)."""
    return [
        path.relative_to(ROOT)
        for folder in DEVELOPMENT_DIRS
        if (ROOT / folder).is_dir()
        for path in (ROOT / folder).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    ]


def development_modules() -> set[str]:
    """The names of the development scripts and helpers (``reference_scenes``, ``study_int8``)."""
    return {p.stem for p in development_files() if p.suffix == ".py" and p.parts[0] != "tests"}


def assert_no_development_code(names: list[str]) -> None:
    """Fail on any archive member that is development code, a result, or lacks for users."""
    shipped = {n.removeprefix("cloudseg/") for n in names if n.startswith("cloudseg/")}
    missing = [f for f in USER_FILES if f not in shipped]
    assert missing == [], f"what users run is missing: {missing}"
    folders = sorted({n for n in shipped if n.split("/")[0] in DEVELOPMENT_DIRS})
    assert folders == [], f"development folders shipped: {folders}"
    results = {p.name for p in development_files() if p.suffix == ".json"}
    assert {p.name for p in (ROOT / "dev" / "results").glob("*.json")} <= results
    modules = development_modules()
    assert {"reference_scenes", "benchmark_accuracy", "study_int8", "demo"} <= modules
    copied = sorted(
        n
        for n in shipped
        if (n.endswith(".py") and Path(n).stem in modules)
        or (n.endswith(".json") and not n.startswith("resources/") and Path(n).name in results)
    )
    assert copied == [], f"development code or results shipped: {copied}"
    for gone in ("training/reference.py", "training/benchmark.py"):
        assert gone not in shipped, gone


def test_no_shipped_module_imports_development_code():
    modules = development_modules()
    wrong = []
    for module in tree_modules():
        tree = ast.parse((ROOT / module).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            wrong += [f"{module}: {n}" for n in names if n.split(".")[0] in modules | {"dev"}]
    assert wrong == [], f"shipped modules import development code: {wrong}"


def test_the_plugin_zip_holds_what_users_run_and_no_development_code(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "cloudseg_package_plugin", ROOT / "scripts" / "package_plugin.py"
    )
    package_plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(package_plugin)
    built = package_plugin.build_zip(tmp_path)
    assert_no_development_code(zipfile.ZipFile(built).namelist())


@pytest.mark.slow
def test_the_wheel_holds_what_users_run_and_no_development_code(wheel):
    assert_no_development_code(zipfile.ZipFile(wheel).namelist())

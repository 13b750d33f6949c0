"""What the checkout holds that an installed cloudseg must hold: found by walking the tree.

The wheel and plugin-zip tests compare their archives with these lists, never with a
list kept by hand, so a package added to the tree and left out of an archive fails them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Top-level folders of the checkout that outputs of a build or a run go into.
BUILD_OUTPUTS = frozenset({"build", "dist", "demo_output", "runs"})
# Top-level folders that are for developers (setup.py and the plugin zip leave them out).
DEVELOPER_DIRS = frozenset({"tests", "scripts", "dev", "docs"}) | BUILD_OUTPUTS
# Files of the root that build the package rather than belong to it.
BUILD_FILES = frozenset({"setup.py"})
DATA = ("metadata.txt", "resources")


def _is_output(folder: Path) -> bool:
    """Whether ``folder`` is hidden (``.git``, ``.venv``), a cache, egg-info or a virtualenv."""
    name = folder.name
    return (
        name.startswith(".")
        or name == "__pycache__"
        or name.endswith(".egg-info")
        or (folder / "pyvenv.cfg").is_file()
    )


def tree_files(root: Path = ROOT) -> list[str]:
    """Return every file of the installable tree, as ``/``-separated paths from ``root``."""
    found = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(
            d
            for d in dirs
            if not _is_output(here / d) and not (here == root and d in DEVELOPER_DIRS)
        )
        for name in sorted(files):
            if name.endswith((".pyc", ".pyo")) or (here == root and name in BUILD_FILES):
                continue
            found.append((here / name).relative_to(root).as_posix())
    return found


def tree_modules(root: Path = ROOT) -> list[str]:
    """Return every Python file of the installable tree (``backend/cli.py``, ...)."""
    return [path for path in tree_files(root) if path.endswith(".py")]


def tree_packages(root: Path = ROOT) -> list[str]:
    """Return every Python package of the tree as installed: ``cloudseg``, ``cloudseg.backend``...

    A package is a folder with an ``__init__.py``; the root is ``cloudseg``.
    """
    names = []
    for path in tree_modules(root):
        if path == "__init__.py":
            names.append("cloudseg")
        elif path.endswith("/__init__.py"):
            names.append("cloudseg." + path.removesuffix("/__init__.py").replace("/", "."))
    return sorted(names)


def tree_data(root: Path = ROOT) -> list[str]:
    """Return the package data of the tree: ``metadata.txt`` and every file of ``resources/``."""
    return [path for path in tree_files(root) if path.split("/")[0] in DATA]


def copy_checkout(target: Path, root: Path = ROOT) -> Path:
    """Copy the checkout to ``target`` as a fresh clone would have it, without build outputs.

    Hidden folders (``.git``, ``.venv``), caches, ``build/``, ``dist/`` and egg-info are
    left behind, so that nothing from an earlier build gets into what is built from the
    copy. Returns ``target``.
    """

    def ignore(folder: str, names: list[str]) -> list[str]:
        here = Path(folder)
        return [
            name
            for name in names
            if name.endswith((".pyc", ".pyo"))
            or _is_output(here / name)
            or (here == root and name in BUILD_OUTPUTS)
        ]

    shutil.copytree(root, target, ignore=ignore, symlinks=True)
    return target

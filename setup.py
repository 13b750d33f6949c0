"""Build shim: the version from the QGIS plugin's metadata.txt, the packages from the tree.

The dependencies and extras come from ``backend/dependencies.py``, the one list of them.
The repository root is the QGIS plugin folder and, installed, the package ``cloudseg``
(``package-dir`` in pyproject.toml). Its subpackages are every folder with an
``__init__.py`` below it, found here rather than listed by hand, so that a new one
cannot be left out of the wheel. Folders for developers never ship.
"""

import importlib.util
import sys
from configparser import ConfigParser
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
# Folders of the checkout that are not part of the installed package.
DEVELOPER_DIRS = ("tests", "scripts", "dev", "docs", "build", "dist", "demo_output", "runs")


def _dependencies() -> object:
    """``backend/dependencies.py``, loaded by its path (standard library only)."""
    spec = importlib.util.spec_from_file_location(
        "cloudseg_dependencies", ROOT / "backend" / "dependencies.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


_deps = _dependencies()
_extras = {g.name: [r.pip for r in g.requirements] for g in _deps.GROUPS if g is not _deps.SEGMENT}
_extras["all"] = sorted(
    {r for g in _deps.GROUPS if g is not _deps.DEV for r in _extras.get(g.name, [])}
)
_metadata = ConfigParser()
_metadata.read(ROOT / "metadata.txt", encoding="utf-8")
_subpackages = find_packages(
    where=str(ROOT), exclude=[p for d in DEVELOPER_DIRS for p in (d, f"{d}.*")]
)
setup(
    version=_metadata["general"]["version"],
    install_requires=[r.pip for r in _deps.SEGMENT.requirements],
    extras_require=_extras,
    packages=["cloudseg", *(f"cloudseg.{name}" for name in sorted(_subpackages))],
    # distutils leaves the setup script out of the root package when it knows its name
    # (relative to the project folder, the working directory of every build); a PEP 517
    # build runs it under another name.
    script_name="setup.py",
)

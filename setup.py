"""Build shim: the version from the QGIS plugin's metadata.txt, the packages from the tree.

The repository root is the QGIS plugin folder and, installed, the package ``cloudseg``
(``package-dir`` in pyproject.toml). Its subpackages are every folder with an
``__init__.py`` below it, found here rather than listed by hand, so that a new one
cannot be left out of the wheel. Folders for developers never ship.
"""

from configparser import ConfigParser
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
# Folders of the checkout that are not part of the installed package.
DEVELOPER_DIRS = ("tests", "scripts", "docs", "benchmarks", "build", "dist", "demo_output", "runs")

_metadata = ConfigParser()
_metadata.read(ROOT / "metadata.txt", encoding="utf-8")
_subpackages = find_packages(
    where=str(ROOT), exclude=[p for d in DEVELOPER_DIRS for p in (d, f"{d}.*")]
)
setup(
    version=_metadata["general"]["version"],
    packages=["cloudseg", *(f"cloudseg.{name}" for name in sorted(_subpackages))],
    # distutils leaves the setup script out of the root package when it knows its name
    # (relative to the project folder, the working directory of every build); a PEP 517
    # build runs it under another name.
    script_name="setup.py",
)

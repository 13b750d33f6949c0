#!/usr/bin/env python3
"""Build the plugin zip that QGIS's "Install from ZIP" accepts: ``cloudseg/...`` inside.

Only what the plugin needs at run time goes in: no tests, CI files, build scripts,
caches or virtual environments. The Python packages are found in the tree (every
top-level folder with an ``__init__.py``, with all its files), as setup.py finds them
for the wheel, so a new one cannot be left out. Standard library only, so it runs
anywhere.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from configparser import ConfigParser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_NAME = "cloudseg"
TOP_FILES = ("__init__.py", "metadata.txt", "LICENSE", "README.md", "CHANGELOG.md")
DATA_DIRS = ("resources",)
# Folders of the checkout that are not part of the plugin (setup.py leaves them out too).
DEVELOPER_DIRS = frozenset(
    {"tests", "scripts", "dev", "docs", "build", "dist", "demo_output", "runs"}
)
SKIP_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache"}
SKIP_SUFFIXES = {".pyc", ".pyo", ".orig", ".rej", ".swp"}


def plugin_version(root: Path = ROOT) -> str:
    """Return the version from ``metadata.txt``."""
    parser = ConfigParser()
    parser.read(root / "metadata.txt", encoding="utf-8")
    return parser.get("general", "version")


def package_dirs(root: Path = ROOT) -> list[str]:
    """Return the plugin's top-level Python packages: the folders with an ``__init__.py``.

    Hidden folders and those of :data:`DEVELOPER_DIRS` are left out.
    """
    return sorted(
        init.parent.name
        for init in root.glob("*/__init__.py")
        if not init.parent.name.startswith(".") and init.parent.name not in DEVELOPER_DIRS
    )


def plugin_files(root: Path = ROOT) -> list[Path]:
    """List the files of the plugin, relative to ``root``, in a stable order."""
    files = [Path(name) for name in TOP_FILES if (root / name).is_file()]
    for package in (*package_dirs(root), *DATA_DIRS):
        for path in sorted((root / package).rglob("*")):
            rel = path.relative_to(root)
            if (
                path.is_file()
                and not SKIP_DIRS.intersection(rel.parts)
                and path.suffix not in SKIP_SUFFIXES
            ):
                files.append(rel)
    return files


def build_zip(output_dir: Path, root: Path = ROOT) -> Path:
    """Write ``cloudseg-VERSION.zip`` into ``output_dir`` and return its path."""
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / f"{PLUGIN_NAME}-{plugin_version(root)}.zip"
    partial = target.with_suffix(".zip.part")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for rel in plugin_files(root):
            archive.write(root / rel, f"{PLUGIN_NAME}/{rel.as_posix()}")
    partial.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=ROOT / "dist")
    args = parser.parse_args(argv)
    target = build_zip(args.output_dir)
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())

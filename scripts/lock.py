#!/usr/bin/env python3
"""``make lock``: refresh ``resources/locks`` from ``backend/dependencies.py``, on purpose.

Resolves with uv (``uv pip compile --universal --generate-hashes``), one lock for every
platform and Python from ``LOCK_PYTHON`` on:

1. ``all.txt``: every group (the venv of ``make install``); versions already in the old
   ``all.txt`` are kept where they still fit (uv prefers them), so a refresh moves only
   what it must;
2. ``segment.txt``, ``training.txt``, ``serve.txt``: the core, and each extra with the core,
   at ``all.txt``'s versions (the QGIS plugin's two steps; a server without torch);
3. ``sizes.json``: each locked file's size, from the package index's JSON API;
4. the generated texts: ``metadata.txt``'s ``about`` and the README's package table.

A new upstream release changes a fresh install only through a commit of these files.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from cloudseg.backend.dependencies import (
    DEV,
    GROUPS,
    LOCK_CONSTRAINTS,
    LOCK_PYTHON,
    PIP,
    SEGMENT,
    Group,
)
from cloudseg.backend.installer import index_files
from cloudseg.backend.locks import ALL, LOCK_DIR, SIZES, lock_file, read_lock
from cloudseg.backend.packaging_text import write_generated_texts

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 30


def requirements_in(groups: tuple[Group, ...]) -> str:
    """The top-level requirements of ``groups`` and pip, one a line."""
    lines = [req.pip for group in groups for req in group.requirements]
    return "\n".join(dict.fromkeys([*lines, PIP.pip])) + "\n"


def not_locked() -> list[str]:
    """The distributions that must come from the system (rasterio on QGIS's GDAL)."""
    return sorted({r.distribution for g in GROUPS for r in g.requirements if not r.locked})


def compile_lock(uv: str, groups: tuple[Group, ...], target: Path, constraints: Path) -> None:
    """Resolve ``groups`` into ``target`` with uv, run in ``constraints``' folder.

    File names are given relative to that folder, so the lock's ``# via`` notes name
    ``all.in`` and ``policy.txt``, never a temporary path.
    """
    folder = constraints.parent
    source = folder / f"{target.stem}.in"
    source.write_text(requirements_in(groups), encoding="utf-8")
    command = [
        uv,
        *("pip", "compile", source.name, "--universal", "--generate-hashes"),
        *("--python-version", LOCK_PYTHON, "--constraint", constraints.name),
        *("--custom-compile-command", "make lock", "--no-strip-markers"),
        *(f"--no-emit-package={name}" for name in not_locked()),
        *("--output-file", str(target.resolve()), "--quiet"),
    ]
    subprocess.run(command, check=True, cwd=folder)


def pins_as_constraints(lock: Path, extra: tuple[str, ...]) -> str:
    """``name==version ; marker`` lines of a lock (no hashes), plus ``extra``."""
    lines = [
        f"{p.name}=={p.version}" + (f" ; {p.marker}" if p.marker else "") for p in read_lock(lock)
    ]
    return "\n".join([*extra, *lines]) + "\n"


def fetch_sizes(locks: list[Path]) -> dict[str, int]:
    """The size of every file a lock accepts, by file name, from the index (PEP 691/700)."""
    wanted: dict[str, set[str]] = {}
    for lock in locks:
        for pin in read_lock(lock):
            wanted.setdefault(pin.name, set()).update(pin.hashes)
    sizes: dict[str, int] = {}
    for name, hashes in sorted(wanted.items()):
        for entry in index_files(name, TIMEOUT_S):
            if entry["hashes"].get("sha256") in hashes:
                sizes[entry["filename"]] = int(entry["size"])
    return dict(sorted(sizes.items()))


def main(argv: list[str] | None = None) -> int:
    """Refresh the locks; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uv", default=str(Path(sys.executable).with_name("uv")))
    parser.add_argument(
        "--texts-only", action="store_true", help="only rewrite metadata.txt and the README"
    )
    args = parser.parse_args(argv)
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    if not args.texts_only:
        with tempfile.TemporaryDirectory() as tmp:
            policy = Path(tmp) / "policy.txt"
            policy.write_text("\n".join(LOCK_CONSTRAINTS) + "\n", encoding="utf-8")
            compile_lock(args.uv, GROUPS, lock_file(ALL), policy)
            pinned = Path(tmp) / "pinned.txt"
            pinned.write_text(pins_as_constraints(lock_file(ALL), ()), encoding="utf-8")
            for group in GROUPS:
                if group is not DEV:  # each extra with the core it builds on
                    wanted = (SEGMENT,) if group is SEGMENT else (SEGMENT, group)
                    compile_lock(args.uv, wanted, lock_file(group.name), pinned)
        sizes = fetch_sizes([lock_file(g.name) for g in GROUPS if g.plugin_step])
        (LOCK_DIR / SIZES).write_text(json.dumps(sizes, indent=1) + "\n", encoding="utf-8")
    for path in write_generated_texts(ROOT):
        print(f"wrote {path.relative_to(ROOT)}")
    print(
        f"locks in {LOCK_DIR.relative_to(ROOT)}: "
        + ", ".join(p.name for p in sorted(LOCK_DIR.iterdir()))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

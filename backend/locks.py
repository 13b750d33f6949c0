"""The locked versions of cloudseg's packages: the files in ``resources/locks``.

``make lock`` writes them from :mod:`.dependencies` (``scripts/lock.py``, with uv): one
universal lock per use, every version exact and every file's SHA-256, for every platform
and Python from :data:`~.dependencies.LOCK_PYTHON` on:

- ``all.txt``: every group; ``make install`` builds the project's venv from it;
- ``segment.txt`` and ``training.txt``: what the QGIS plugin's two install steps install
  (each the closure of its groups, at the versions of ``all.txt``); ``serve.txt``: the
  core and the server, without torch;
- ``sizes.json``: the size of each locked file, so a download is announced before it
  starts.

This module reads them (standard library only: it runs in QGIS's own Python before
anything is installed).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .dependencies import Group

#: Where the lock files live (shipped in the wheel and the plugin zip).
LOCK_DIR = Path(__file__).resolve().parents[1] / "resources" / "locks"
ALL = "all"
SIZES = "sizes.json"

_PIN = re.compile(
    r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$"
)
_HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")


def canonical(name: str) -> str:
    """A distribution name as indexes compare them (PEP 503): ``PyYAML`` -> ``pyyaml``."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Pin:
    """One locked package.

    Attributes:
        name: The canonical distribution name.
        version: The exact version.
        marker: The environment marker (``sys_platform == 'linux'``), or empty.
        hashes: The SHA-256 of every file of that version the lock accepts.
    """

    name: str
    version: str
    marker: str
    hashes: tuple[str, ...]

    def requirement(self) -> str:
        """The pin as one line of a pip requirements file, hashes included."""
        marker = f" ; {self.marker}" if self.marker else ""
        hashes = " ".join(f"--hash=sha256:{h}" for h in self.hashes)
        return f"{self.name}=={self.version}{marker} {hashes}"


def lock_file(name: str) -> Path:
    """The lock file of a group (``segment``) or of everything (``all``)."""
    return LOCK_DIR / f"{name}.txt"


def read_lock(path: Path) -> list[Pin]:
    """Parse a hashed requirements file as uv and pip-tools write it.

    Raises:
        ValueError: One line, for a requirement that is not pinned with ``==`` or has no
            hash (a lock that would let pip choose).
    """
    pins: list[Pin] = []
    current: dict[str, object] | None = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].rstrip() if not raw.lstrip().startswith("--hash") else raw
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("--hash"):
            if current is None:
                raise ValueError(f"{path}: a hash before any requirement")
            current["hashes"].extend(_HASH.findall(stripped))  # type: ignore[union-attr]
            continue
        if stripped.startswith("-"):
            continue  # options such as --index-url
        match = _PIN.match(stripped)
        if match is None:
            raise ValueError(f"{path}: {stripped!r} is not pinned with == (run make lock)")
        current = {"name": canonical(match[1]), "version": match[2], "marker": match[3] or ""}
        current["hashes"] = []
        pins.append(current)  # type: ignore[arg-type]
    result = []
    for entry in pins:
        pin = Pin(
            str(entry["name"]),  # type: ignore[index]
            str(entry["version"]),  # type: ignore[index]
            str(entry["marker"]).strip(),  # type: ignore[index]
            tuple(entry["hashes"]),  # type: ignore[index]
        )
        if not pin.hashes:
            raise ValueError(f"{path}: {pin.name}=={pin.version} has no hash (run make lock)")
        result.append(pin)
    return result


def group_pins(group: Group) -> list[Pin]:
    """The locked packages of a plugin step (its lock file)."""
    return read_lock(lock_file(group.name))


@lru_cache(maxsize=1)
def file_sizes() -> dict[str, int]:
    """The size in bytes of every locked file, by file name (``sizes.json``)."""
    path = LOCK_DIR / SIZES
    if not path.is_file():
        return {}
    return {str(k): int(v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()}


def lock_digest(group: Group) -> str:
    """A short digest of a step's lock file: an install records it, so a newer lock shows."""
    return hashlib.sha256(lock_file(group.name).read_bytes()).hexdigest()[:16]

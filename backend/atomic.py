"""Outputs that appear whole or not at all: one home for write-then-rename.

Every command that writes follows the same contract: an existing output is replaced
only when asked, data is written under a hidden temporary name beside the target, and
the rename onto the target (atomic on one file system) happens only once the data is
complete. A failure or cancel at any moment removes the temporary file and leaves the
earlier result untouched.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputExistsError

#: Files GDAL may write beside a raster.
_SIDE_SUFFIXES = (".aux.xml", ".ovr")


def check_target(path: Path, overwrite: bool) -> None:
    """Refuse to replace an existing output unless asked.

    Raises:
        OutputExistsError: If ``path`` exists and ``overwrite`` is False, or its folder
            does not exist.
    """
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass --overwrite to replace it")
    if not path.parent.is_dir():
        raise OutputExistsError(f"the folder of {path} does not exist; create it first")


def temporary_sibling(path: Path, tag: str = "part") -> Path:
    """A hidden name beside ``path`` that no one mistakes for a result."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.{tag}")


def remove(*paths: Path) -> None:
    """Remove files (and GDAL's side files beside them) that may or may not exist."""
    for path in paths:
        for candidate in (path, *(path.with_name(path.name + s) for s in _SIDE_SUFFIXES)):
            with contextlib.suppress(FileNotFoundError):
                candidate.unlink()


@contextlib.contextmanager
def cleanup_on_failure(*paths: Path) -> Iterator[None]:
    """Remove ``paths`` (and GDAL side files) if the block raises, then re-raise."""
    try:
        yield
    except BaseException:
        remove(*paths)
        raise


@contextlib.contextmanager
def atomic_path(target: Path, tag: str = "part") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    On any failure (or cancel) the temporary file is removed and ``target`` is left as
    it was. A block that writes nothing to the path publishes nothing.
    """
    tmp = temporary_sibling(target, tag)
    with cleanup_on_failure(tmp):
        yield tmp
        if tmp.exists():
            tmp.replace(target)


def write_bytes(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)

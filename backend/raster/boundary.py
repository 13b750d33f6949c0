"""Where a run may read: the folders a server gave it, followed through every indirection.

A command run by its user reads what the user names, and what those files point at
(a VRT's sources, a STAC Item's assets, a SAFE product's band files) is the user's own
choice. A job of ``cloudseg serve`` is different: its input comes from a client, and the
server reads only under its ``--root`` folders, the job's own folder (downloads, the
VRTs it writes) and its uploads. :func:`reading_under` sets those folders for the code
it wraps (the job's thread); every file the scene reader opens is then checked by
:func:`check_raster` first:

- its real path (``..`` and symbolic links resolved) lies under one of the folders;
- it is a format that reads no other file: GeoTIFF, JPEG 2000, or a SAFE zip (read
  through ``/vsizip/``); any other format (ENVI headers, netCDF, HDF, GDAL's own
  ``MEM:::``/``/vsi`` paths, ...) is refused;
- a VRT is read as XML (bounded in size; expat fetches no external entity) and each
  source is checked the same way, recursively; a source on the network (``/vsicurl/``,
  ``/vsis3/``: an input the server may read by URL) is allowed, any other ``/vsi`` or
  driver prefix is refused.

Outside :func:`reading_under` nothing is checked.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import InputError

_ROOTS: contextvars.ContextVar[tuple[Path, ...] | None] = contextvars.ContextVar(
    "cloudseg_read_roots", default=None
)
#: GDAL paths read over the network, within the network timeouts (allowed in a VRT).
NETWORK_PREFIXES = ("/vsicurl/", "/vsis3/")
#: The largest VRT read to find its sources (a VRT is a few KiB per band).
MAX_VRT_BYTES = 16 * 2**20
#: How deep VRTs may nest.
MAX_VRT_DEPTH = 4
_TIFF = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_JP2 = (b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")
_ZIP = b"PK\x03\x04"
_PREFIX = re.compile(r"^[A-Za-z0-9_]{2,}:")  # NETCDF:..., MEM:::..., GTIFF_DIR:...


@contextlib.contextmanager
def reading_under(roots: Iterable[str | Path]) -> Iterator[None]:
    """Let the code inside read only files under ``roots`` (and what they point at there).

    Applies to the calling thread (a context variable), as a server's job thread runs.
    """
    resolved = tuple(Path(r).expanduser().resolve() for r in roots)
    token = _ROOTS.set(resolved)
    try:
        yield
    finally:
        _ROOTS.reset(token)


def active_roots() -> tuple[Path, ...] | None:
    """The folders reads are limited to, or None when reads are not limited."""
    return _ROOTS.get()


def check_path(path: str | Path, what: str | None = None) -> Path:
    """Refuse a local path outside the active roots (``..`` and links resolved).

    Args:
        path: The file or folder about to be read.
        what: How the message names it (default: the path as given).

    Returns:
        The resolved path.

    Raises:
        InputError: For a path outside every root, or a GDAL special path.
    """
    roots = _ROOTS.get()
    shown = what or str(path)
    text = str(path)
    if roots is None:
        return Path(text)
    if text.startswith("/vsi") or _PREFIX.match(text):
        raise InputError(f"{shown}: GDAL special paths are not read by this server")
    resolved = Path(text).expanduser().resolve()
    if not any(resolved == root or root in resolved.parents for root in roots):
        raise InputError(f"{shown} is outside the folders this server reads; refused")
    return resolved


def check_raster(path: str | Path, what: str | None = None) -> None:
    """Refuse a raster the active roots do not allow, or that reads files elsewhere.

    A ``/vsizip/`` path (a SAFE zip's band file) is checked by its zip file. Nothing is
    checked outside :func:`reading_under`.

    Raises:
        InputError: One line naming the file (or the VRT source) that is refused.
    """
    if _ROOTS.get() is None:
        return
    _check_raster(str(path), what or str(path), depth=0)


def _check_raster(text: str, shown: str, depth: int) -> None:
    if text.startswith("/vsizip/"):
        zip_path = _zip_file(text[len("/vsizip/") :])
        resolved = check_path(zip_path, shown)
        with resolved.open("rb") as stream:
            if stream.read(4) != _ZIP:
                raise InputError(f"{shown}: not a zip file; refused")
        return
    resolved = check_path(text, shown)
    if resolved.is_dir():
        return
    if not resolved.is_file():
        raise InputError(f"{shown}: no such file")
    with resolved.open("rb") as stream:
        head = stream.read(16)
    if head.startswith(_TIFF) or head.startswith(_JP2):
        return
    if head.lstrip().startswith(b"<VRTDataset"):
        _check_vrt(resolved, shown, depth)
        return
    raise InputError(
        f"cannot read {shown}: not a GeoTIFF, JPEG 2000, VRT or SAFE zip, the formats "
        "this server reads"
    )


def _zip_file(inner: str) -> str:
    """The zip file of a ``/vsizip/`` path: the part up to the first ``.zip``."""
    match = re.match(r"^(.*?\.zip)(/|$)", inner, flags=re.IGNORECASE)
    if not match:
        raise InputError(f"/vsizip/{inner}: no zip file in the path; refused")
    return match.group(1)


def _check_vrt(vrt: Path, shown: str, depth: int) -> None:
    """Check every source a VRT reads (its ``SourceFilename`` elements), recursively."""
    if depth >= MAX_VRT_DEPTH:
        raise InputError(f"{shown}: VRTs nested more than {MAX_VRT_DEPTH} deep; refused")
    from ..metadata_files import parse_xml, read_file  # expat: no external entities fetched

    root = parse_xml(read_file(vrt, shown, MAX_VRT_BYTES), shown)  # the one bounded read
    kinds = ("SourceFilename", "SourceDataset", "OverviewDataset")
    for element in root.iter():
        tag = element.tag.rsplit("}", 1)[-1] if isinstance(element.tag, str) else ""
        if tag not in kinds:  # inline VRT sources' own sources are met in this walk too
            continue
        source = (element.text or "").strip()
        if not source:
            continue
        if source.startswith(NETWORK_PREFIXES):
            continue
        if source.startswith("/vsi") or _PREFIX.match(source):
            raise InputError(f"{shown} reads {source!r}, which this server does not read; refused")
        if element.get("relativeToVRT", "0") == "1":
            target = vrt.parent / source
        elif Path(source).is_absolute():
            target = Path(source)
        else:  # GDAL would read it from its working folder
            raise InputError(f"{shown} reads {source!r} from the working folder; refused")
        _check_raster(str(target), f"{shown} (its source {source})", depth + 1)
    if root.find(".//PixelFunctionCode") is not None:
        raise InputError(f"{shown}: a VRT with pixel function code; refused")


__all__ = ["active_roots", "check_path", "check_raster", "reading_under"]

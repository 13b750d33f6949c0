"""Metadata files an input brings, read within a size limit: one rule for every reader.

A scene comes with small text files: a SAFE product's ``MTD_MSIL1C.xml`` /
``MTD_MSIL2A.xml`` and its granule's ``MTD_TL.xml`` (tens of KiB to about 1.5 MiB in
ESA's products), STAC Items and ItemCollections, a batch's list of inputs, a training
source's ``data.json``. None of them is ever near :data:`MAX_METADATA_BYTES`, but a
damaged or hostile one can be: a 1.6 MB zip whose ``MTD_TL.xml`` inflates to 1.5 GB
took 3.4 GB of memory when read whole. Every such read goes through here:

- at most ``limit + 1`` bytes are read (from a file, or inflated from a zip member), so
  a file over the limit costs ``limit`` bytes of memory, however large it claims or
  turns out to be;
- over the limit, not UTF-8, not JSON, not XML: one line (:class:`~.errors.InputError`)
  naming the file and what is wrong.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ElementTree
import zipfile
from pathlib import Path
from typing import IO, Any

from .errors import InputError

#: The largest metadata file read, bytes: 20 times ESA's largest tile metadata, and room
#: for an ItemCollection of thousands of Items.
MAX_METADATA_BYTES = 32 * 2**20


def _size(limit: int) -> str:
    """``32 MiB`` (or bytes for a small limit)."""
    return f"{limit / 2**20:g} MiB" if limit >= 2**20 else f"{limit} bytes"


def read_limited(stream: IO[bytes], shown: str, limit: int = MAX_METADATA_BYTES) -> bytes:
    """At most ``limit`` bytes of an open binary stream, all of it or an error.

    Args:
        stream: A file or zip member open for reading.
        shown: How the message names the file.
        limit: The largest size accepted, bytes.

    Raises:
        InputError: If the stream holds more than ``limit`` bytes (``limit + 1`` are read
            to tell, never more).
    """
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise InputError(
            f"{shown} is larger than {_size(limit)}, more than any metadata file cloudseg "
            "reads; the file is damaged or not what its name says"
        )
    return data


def read_file(path: str | Path, shown: str | None = None, limit: int = MAX_METADATA_BYTES) -> bytes:
    """The bytes of a local metadata file (see :func:`read_limited`).

    Raises:
        InputError: For a file over ``limit``, or one that cannot be read (one line).
    """
    shown = shown or str(path)
    try:
        with Path(path).expanduser().open("rb") as stream:
            return read_limited(stream, shown, limit)
    except FileNotFoundError:
        raise InputError(f"{shown}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{shown} is a folder, not a file") from None
    except OSError as exc:
        raise InputError(f"{shown} cannot be read ({exc.strerror or exc})") from None


def read_member(
    archive: zipfile.ZipFile, name: str, shown: str | None = None, limit: int = MAX_METADATA_BYTES
) -> bytes:
    """The inflated bytes of a zip member, inflated no further than ``limit + 1`` bytes.

    The size the zip's directory declares is not trusted: the member is inflated as a
    stream and counted.

    Raises:
        InputError: For a member over ``limit``, or one that cannot be inflated.
    """
    shown = shown or f"{name} in {archive.filename}"
    try:
        with archive.open(name) as stream:
            return read_limited(stream, shown, limit)
    except InputError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError) as exc:
        raise InputError(f"{shown} cannot be inflated ({exc}); the zip is damaged") from None


def as_text(data: bytes, shown: str) -> str:
    """``data`` decoded as UTF-8 (the encoding of every metadata file read).

    Raises:
        InputError: Naming the first byte that is not UTF-8, and where it is.
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InputError(
            f"{shown} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); "
            "the file is damaged"
        ) from None


def read_text(path: str | Path, shown: str | None = None, limit: int = MAX_METADATA_BYTES) -> str:
    """A local metadata file as text (:func:`read_file`, then :func:`as_text`)."""
    shown = shown or str(path)
    return as_text(read_file(path, shown, limit), shown)


def parse_json(text: str | bytes, shown: str) -> Any:
    """JSON text as Python values.

    Raises:
        InputError: ``<file>: not JSON (<where and why>)`` or not UTF-8.
    """
    if isinstance(text, bytes):
        text = as_text(text, shown)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "nested too deep"
        raise InputError(f"{shown}: not JSON ({reason})") from None


def read_json(path: str | Path, shown: str | None = None, limit: int = MAX_METADATA_BYTES) -> Any:
    """A local JSON metadata file, read within ``limit`` and parsed."""
    shown = shown or str(path)
    return parse_json(read_file(path, shown, limit), shown)


def parse_xml(text: str | bytes, shown: str) -> ElementTree.Element:
    """XML as an element tree; expat fetches no external entity.

    Bytes are read in the encoding the XML declaration names (UTF-8 without one).

    Raises:
        InputError: ``<file> is not UTF-8 text (byte ... on line ...)`` for bytes that
            break their UTF-8, else ``<file> is not well-formed XML (<expat's reason,
            line, column>)``.
    """
    try:
        return ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        if isinstance(text, bytes):
            declared = _DECLARED.match(text[:200])
            if declared is None or declared[1].lower().replace(b"_", b"-") in (b"utf-8", b"utf8"):
                as_text(text, shown)  # names the byte that is not UTF-8, if one is not
        raise InputError(f"{shown} is not well-formed XML ({exc}); the file is damaged") from None


#: An XML declaration's encoding.
_DECLARED = re.compile(rb"""^\s*<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")


__all__ = [
    "MAX_METADATA_BYTES",
    "as_text",
    "parse_json",
    "parse_xml",
    "read_file",
    "read_json",
    "read_limited",
    "read_member",
    "read_text",
]

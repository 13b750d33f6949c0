"""Sentinel-2 SAFE products (folder or zip): band files, level, scale and offsets.

Reads the product metadata (``MTD_MSIL1C.xml`` / ``MTD_MSIL2A.xml``): processing level,
processing baseline, quantification value and the per-band radiometric offsets that
baseline 04.00 (January 2022) introduced; and finds the granule's tile metadata
(``MTD_TL.xml``: the sun's angles, read by the shadow geometry). Every metadata file is
read within :data:`~cloudseg.backend.metadata_files.MAX_METADATA_BYTES` and checked: a
file over it, one that is not UTF-8 or not XML, a quantification value that is not a
positive number or an offset for a band that Sentinel-2 does not have is one line
naming the file, never a traceback or a silently wrong scale.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..metadata_files import parse_xml, read_file, read_member
from .bands import S2_BANDS, band_from_filename

#: The band order of ``band_id`` attributes in the product metadata.
BAND_IDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10",
            "B11", "B12")  # fmt: skip
DEFAULT_QUANTIFICATION = 10000.0
BASELINE_OFFSET_DN = -1000.0  # products from baseline 04.00 on


@dataclass(frozen=True)
class SafeProduct:
    """What cloudseg needs from a SAFE product.

    Attributes:
        path: The ``.SAFE`` folder or ``.zip``.
        product_level: ``"L1C"`` or ``"L2A"``.
        baseline: Processing baseline, e.g. ``"04.00"``.
        quantification: DN per unit reflectance (10000).
        offsets: Per-band additive offset in DN (``-1000`` from baseline 04.00).
        band_files: GDAL paths of the finest-resolution file of each band.
        band_resolution: Resolution in metres of each file in ``band_files``.
        sensing_time: When the scene was acquired (``PRODUCT_START_TIME``, ISO 8601), if
            the metadata says.
    """

    path: Path
    product_level: str
    baseline: str
    quantification: float
    offsets: dict[str, float] = field(default_factory=dict)
    band_files: dict[str, str] = field(default_factory=dict)
    band_resolution: dict[str, int] = field(default_factory=dict)
    sensing_time: str | None = None


def is_safe(path: Path) -> bool:
    """Tell whether ``path`` looks like a SAFE product (folder or zip)."""
    if path.is_dir():
        return path.name.upper().endswith(".SAFE") or any(path.glob("MTD_MSIL*.xml"))
    if path.suffix.lower() == ".zip" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return any(re.search(r"(^|/)MTD_MSIL(1C|2A)\.xml$", n) for n in archive.namelist())
    return False


def _baseline_tuple(baseline: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", baseline)) or (0,)


def _text(root: ET.Element, tag: str) -> str | None:
    node = next(root.iter(tag), None)
    return node.text.strip() if node is not None and node.text else None


def _number(text: str | None, what: str, shown: str, positive: bool = False) -> float:
    """A number of the metadata, finite (and above 0 where ``positive``).

    Raises:
        InputError: Naming the file, the field and its text.
    """
    try:
        value = float(text or "")
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or (positive and value <= 0):
        kind = "a positive number" if positive else "a number"
        raise InputError(
            f"{shown}: {what} is {text!r}, not {kind}; the metadata is damaged or not "
            "from ESA: download the product again"
        )
    return value


def _band_of(band_id: str | None, tag: str, shown: str) -> str:
    """The band a ``band_id`` attribute names (0-12, ESA's order :data:`BAND_IDS`).

    Raises:
        InputError: For an id that is not one of Sentinel-2's 13 bands.
    """
    text = (band_id or "").strip()
    if not text.isdigit() or int(text) >= len(BAND_IDS):
        raise InputError(
            f"{shown}: {tag} has band_id {band_id!r}, not a Sentinel-2 band (0-"
            f"{len(BAND_IDS) - 1}); the metadata is damaged or not from ESA: download the "
            "product again"
        )
    return BAND_IDS[int(text)]


def parse_metadata(
    xml_text: str | bytes, gdal_prefix: str, path: Path, shown: str | None = None
) -> SafeProduct:
    """Parse a product metadata document.

    Args:
        xml_text: Contents of ``MTD_MSIL1C.xml`` or ``MTD_MSIL2A.xml`` (bytes: UTF-8).
        gdal_prefix: GDAL path of the product root (``/vsizip/...`` for zips), to which
            the metadata's relative image paths are appended.
        path: The product path.
        shown: How messages name the metadata file (default: the product's path).

    Raises:
        InputError: If the document is not Sentinel-2 product metadata, is not UTF-8 or
            XML, or holds values that cannot be a product's (a quantification value
            that is not a positive number, an offset of an unknown band).
    """
    shown = shown or str(path)
    root = parse_xml(xml_text, shown)
    level_text = _text(root, "PROCESSING_LEVEL") or ""
    level = "L2A" if "2A" in level_text else "L1C" if "1C" in level_text else None
    if level is None:
        raise InputError(f"{shown}: product level {level_text!r} is not Level-1C or Level-2A")
    baseline = _text(root, "PROCESSING_BASELINE") or "00.00"
    quant_tag = "BOA_QUANTIFICATION_VALUE" if level == "L2A" else "QUANTIFICATION_VALUE"
    quant_text = _text(root, quant_tag)
    quantification = (
        DEFAULT_QUANTIFICATION
        if quant_text is None
        else _number(quant_text, quant_tag, shown, positive=True)
    )

    offset_tag = "BOA_ADD_OFFSET" if level == "L2A" else "RADIO_ADD_OFFSET"
    offsets = {
        _band_of(node.get("band_id"), offset_tag, shown): _number(
            (node.text or "0").strip(), f"{offset_tag} of band_id {node.get('band_id')}", shown
        )
        for node in root.iter(offset_tag)
    }
    if not offsets and _baseline_tuple(baseline) >= (4, 0):
        offsets = dict.fromkeys(BAND_IDS, BASELINE_OFFSET_DN)

    band_files: dict[str, str] = {}
    band_resolution: dict[str, int] = {}
    for node in root.iter("IMAGE_FILE"):
        rel = (node.text or "").strip()
        parts = Path(rel).parts
        if rel.startswith(("/", "\\")) or ".." in parts or ":" in rel:
            raise InputError(
                f"{shown} points at {rel!r}, outside the product; "
                "the metadata is damaged or not from ESA: download the product again"
            )
        band = band_from_filename(Path(rel).name)
        if band is None or "/QI_DATA/" in rel:
            continue
        match = re.search(r"_(\d{2})m$", rel)
        resolution = int(match.group(1)) if match else S2_BANDS[band]
        if band not in band_resolution or resolution < band_resolution[band]:
            band_files[band] = f"{gdal_prefix}/{rel}.jp2"
            band_resolution[band] = resolution
    if not band_files:
        raise InputError(f"{shown} lists no band images")
    sensing = _text(root, "PRODUCT_START_TIME") or _text(root, "DATATAKE_SENSING_START")
    return SafeProduct(
        path, level, baseline, quantification, offsets, band_files, band_resolution, sensing
    )


def open_safe(path: Path) -> SafeProduct:
    """Read a SAFE product's metadata from its folder or zip (within the size limit).

    Raises:
        InputError: If no product metadata is found, or it cannot be read or used.
    """
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [
                n
                for n in archive.namelist()
                if re.search(r"(^|/)MTD_MSIL(1C|2A)\.xml$", n) and n.count("/") <= 1
            ]
            if not names:
                raise InputError(f"{path}: no MTD_MSIL1C.xml or MTD_MSIL2A.xml in the zip")
            inner = names[0].rsplit("/", 1)[0] if "/" in names[0] else ""
            shown = f"{names[0]} in {path}"
            data = read_member(archive, names[0], shown)
        prefix = f"/vsizip/{path.resolve()}" + (f"/{inner}" if inner else "")
        return parse_metadata(data, prefix, path, shown)
    candidates = sorted(path.glob("MTD_MSIL*.xml"))
    if not candidates:
        raise InputError(f"{path}: no MTD_MSIL1C.xml or MTD_MSIL2A.xml in the product folder")
    from .boundary import check_path

    check_path(candidates[0])  # a server job reads under its roots only (a link out)
    shown = str(candidates[0])
    return parse_metadata(read_file(candidates[0], shown), str(path.resolve()), path, shown)


def tile_metadata(path: Path) -> tuple[bytes, str] | None:
    """The first granule's ``GRANULE/*/MTD_TL.xml`` of a SAFE folder or zip, and its name.

    Returns:
        ``(bytes, how messages name it)``; None where the product has none (or ``path``
        is not a SAFE folder or zip).

    Raises:
        InputError: For a file over the size limit, or one that cannot be read.
    """
    if path.is_dir():
        found = sorted(path.glob("GRANULE/*/MTD_TL.xml"))
        if not found:
            return None
        from .boundary import check_path

        check_path(found[0])  # a server job reads under its roots only (a link out)
        return read_file(found[0], str(found[0])), str(found[0])
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if re.search(r"GRANULE/[^/]+/MTD_TL\.xml$", n)]
            if not names:
                return None
            shown = f"{sorted(names)[0]} in {path}"
            return read_member(archive, sorted(names)[0], shown), shown
    return None

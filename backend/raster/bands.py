"""Sentinel-2 band names: canonical names, common aliases and native resolutions."""

from __future__ import annotations

import re

from ..errors import BandError

#: Canonical Sentinel-2 MSI bands and their native resolution in metres.
S2_BANDS: dict[str, int] = {
    "B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20,
    "B08": 10, "B8A": 20, "B09": 60, "B10": 60, "B11": 20, "B12": 20,
}  # fmt: skip

#: Common names (STAC eo:common_name, ukis-csmask, Landsat-style) -> Sentinel-2 band.
ALIASES: dict[str, str] = {
    "coastal": "B01", "blue": "B02", "green": "B03", "red": "B04",
    "rededge1": "B05", "rededge2": "B06", "rededge3": "B07",
    "nir": "B08", "nir08": "B8A", "narrownir": "B8A", "rededge4": "B8A",
    "watervapour": "B09", "watervapor": "B09", "cirrus": "B10",
    "swir16": "B11", "swir1": "B11", "swir22": "B12", "swir2": "B12",
}  # fmt: skip

_BAND_RE = re.compile(r"^B?0*(\d{1,2})(A?)$")


def canonical_band(name: str) -> str:
    """Map a band name or alias to its canonical Sentinel-2 name.

    Accepts ``B02``, ``B2``, ``b02``, ``B8A`` and the aliases in :data:`ALIASES`
    (``blue``, ``nir``, ``swir16``...). Product file names such as
    ``T32TQM_20200101T101421_B02_10m`` are handled by :func:`band_from_filename`.

    Args:
        name: A band name.

    Returns:
        The canonical name, e.g. ``"B08"`` or ``"B8A"``.

    Raises:
        BandError: If the name is not a Sentinel-2 band or known alias.
    """
    key = name.strip().lower().replace("-", "").replace("_", "").replace(" ", "")
    if key in ALIASES:
        return ALIASES[key]
    match = _BAND_RE.match(key.upper())
    if match:
        number, suffix = int(match.group(1)), match.group(2)
        candidate = f"B{number}A" if suffix else f"B{number:02d}"
        if candidate in S2_BANDS:
            return candidate
    valid = ", ".join(S2_BANDS)
    raise BandError(
        f"unknown band name {name!r}: use Sentinel-2 names ({valid}) or "
        f"common names ({', '.join(sorted(ALIASES))})"
    )


def band_from_filename(stem: str) -> str | None:
    """Find the Sentinel-2 band a file holds from its name, or None.

    Recognises ``B02``, ``B8A``, ``T32TQM_20200101T101421_B02_10m`` and ``blue``.

    Args:
        stem: The file name without its suffix.

    Returns:
        The canonical band name, or None if the name does not say.
    """
    for token in reversed(re.split(r"[_.\-\s]+", stem)):
        try:
            return canonical_band(token)
        except BandError:
            continue
    return None


#: The most bands a band list may name (a Sentinel-2 product has 13).
MAX_BANDS = 64


def parse_band_list(text: str) -> list[str]:
    """Parse ``"B04,B03,B02,B08"`` (or aliases) into canonical names.

    Raises:
        BandError: On an unknown or repeated band.
    """
    parts = text.split(",", MAX_BANDS)
    if len(parts) > MAX_BANDS:
        raise BandError(f"the band list names more than {MAX_BANDS} bands")
    bands = [canonical_band(part) for part in parts if part.strip()]
    if not bands:
        raise BandError("the band list is empty: give names like B02,B03,B04,B08")
    from collections import Counter

    repeated = sorted(b for b, n in Counter(bands).items() if n > 1)
    if repeated:
        raise BandError(f"band(s) listed twice: {', '.join(repeated)}")
    return bands

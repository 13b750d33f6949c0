"""Which processing level a scene is: L1C (top of atmosphere) or L2A (surface reflectance).

The built-in models come in an L1C and an L2A form, and the wrong one changes the mask
(on the L2A chip adwp: 38.7 % cloud with the L1C model, 45.3 % with the L2A model). The
level is read where it is written down, in this order, and the evidence is kept so that
every surface can say how the level was found:

1. the SAFE product's metadata (``MTD_MSIL2A.xml``), read by the reader itself;
2. a STAC Item beside the file (``<name>.json``: ``processing:level``,
   ``s2:product_type``);
3. GDAL metadata of the band files (``PROCESSING_LEVEL``, ``PRODUCT_TYPE``...);
4. the names of the file and its folders (``S2B_MSIL2A_...``, ``..._L2A_...``);
5. the radiometry: top-of-atmosphere blue reflectance carries the atmosphere's path
   radiance, so even the darkest pixels of a scene stay above about 0.06 (the labeled
   L1C and Landsat TOA scenes: 0.070-0.104 at the 1st percentile of B02), while
   atmospherically corrected dark surfaces go far below (the L2A chip akny: 0.027). A
   1st percentile below :data:`DARK_BLUE_L2A` means L2A; above it the radiometry cannot
   tell (the other L2A chips lie at 0.057-0.074, among the TOA scenes).

When none of these says, the level is unknown: the run assumes L1C and warns visibly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: A 1st percentile of blue (B02) reflectance below this is surface reflectance.
DARK_BLUE_L2A = 0.045
_NAME = re.compile(r"MSIL(1C|2A)|(?:^|[^A-Z0-9])(L1C|L2A)(?:$|[^A-Z0-9])")
_TAG_KEYS = ("PROCESSING_LEVEL", "PRODUCT_TYPE", "PRODUCT_LEVEL", "LEVEL")


@dataclass(frozen=True)
class Level:
    """A scene's processing level and how it was found.

    Attributes:
        level: ``"L1C"``, ``"L2A"``, or None when nothing says.
        how: The evidence, in words ("file name S2B_MSIL2A_...", "assumed").
    """

    level: str | None
    how: str

    @property
    def known(self) -> bool:
        """Whether the level was found, not assumed."""
        return self.level is not None

    def describe(self, assumed: str = "L1C") -> str:
        """``"L2A (from the file name ...)"`` or ``"L1C (assumed: ...)"``."""
        if self.level is None:
            return f"{assumed} (assumed: {self.how})"
        return f"{self.level} ({self.how})"


def _from_text(text: str) -> str | None:
    """L1C or L2A if ``text`` names one (``MSIL2A``, ``Level-2A``, ``S2MSI2A``, ``L1C``)."""
    upper = text.upper()
    match = _NAME.search(upper)
    if match:
        found = match.group(1) or match.group(2)
        return found if found.startswith("L") else "L" + found
    if re.search(r"LEVEL[-_ ]?2A|MSI2A", upper):
        return "L2A"
    if re.search(r"LEVEL[-_ ]?1C|MSI1C", upper):
        return "L1C"
    return None


def from_stac(path: Path) -> Level | None:
    """The level a STAC Item beside ``path`` (``<stem>.json``) gives, if any."""
    item = path.with_suffix(".json") if path.suffix else path / "item.json"
    if not item.is_file():
        return None
    from ..errors import InputError
    from ..metadata_files import read_json
    from .boundary import check_path

    try:
        check_path(item)  # a server job reads under its roots only
        properties = read_json(item).get("properties", {})  # within the metadata limit
    except (AttributeError, InputError):
        return None
    for key in ("processing:level", "s2:product_type", "product_type"):
        value = properties.get(key)
        level = _from_text(str(value)) if value else None
        if level:
            return Level(level, f"STAC {item.name}: {key}={value}")
    return None


def from_tags(tags: dict[str, Any], where: str) -> Level | None:
    """The level GDAL metadata of a band file names, if any."""
    for key, value in tags.items():
        if key.upper() in _TAG_KEYS or key.upper().endswith("PROCESSING_LEVEL"):
            level = _from_text(str(value))
            if level:
                return Level(level, f"GDAL metadata of {where}: {key}={value}")
    return None


def from_names(path: Path) -> Level | None:
    """The level the names of ``path`` and its folder give, nearest first."""
    for part in (path.name, path.parent.name):
        level = _from_text(Path(part).stem if part == path.name else part)
        if level:
            return Level(level, f"the name {part}")
    return None


def from_radiometry(blue: np.ndarray) -> Level | None:
    """L2A when the darkest blue pixels are darker than the atmosphere allows at the top.

    Args:
        blue: A sample of B02 reflectance (NaN where no data).
    """
    valid = blue[np.isfinite(blue)]
    if valid.size < 100:
        return None
    dark = float(np.percentile(valid, 1))
    if dark < DARK_BLUE_L2A:
        return Level(
            "L2A",
            f"radiometry: the darkest blue pixels are at reflectance {dark:.3f}, below the "
            f"{DARK_BLUE_L2A:g} that the atmosphere alone gives at the top of the atmosphere",
        )
    return None


UNKNOWN = Level(
    None,
    "no SAFE or STAC metadata, GDAL metadata or file name says, and the radiometry cannot tell",
)

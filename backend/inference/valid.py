"""The valid-pixel mask (``--valid``).

**Valid pixels.** What an analyst keeps for a composite or a time series: 1 where the
pixel is usable, 0 where it is cloud or cloud shadow or within a buffer of them, 255
where the input has no data. Buffers are given in metres, one for cloud (every cloud
class) and one for shadow, and grow each class by a Euclidean disk: a pixel is unusable
when its centre lies within the buffer of a cloud (or shadow) pixel's centre. Defaults
are Fmask's (Zhu & Woodcock 2012; Qiu et al. 2019, Fmask 4): 3 pixels of 30 m for cloud
and for shadow, i.e. 90 m; ukis-csmask buffers 4 pixels (120 m at 30 m).

The mask is made from the class raster as the run writes it, strip by strip with a
halo of the largest buffer above and below (never the whole scene), so it is exact at
strip edges and the same for any strip height; a run in column blocks (a tight memory
budget) gives the same mask.

The class raster itself comes from the one class decision, with the run's cloud and
shadow thresholds if any (:func:`cloudseg.backend.inference.decision.decide`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..choices import DEFAULT_BUFFER_CLOUD_M, DEFAULT_BUFFER_SHADOW_M
from ..errors import InputError
from .decision import NODATA, unusable_classes

#: Strip height for making the valid mask.
STRIP = 512


def buffer_pixels(metres: float, pixel_m: float | None) -> float:
    """A buffer in pixels (fractional: the disk's radius) for a pixel size in metres.

    Raises:
        InputError: For a negative buffer, or metres on a grid without a pixel size.
    """
    if not math.isfinite(metres) or metres < 0:
        raise InputError(f"buffer {metres} m: give 0 or more metres, a finite number")
    if metres == 0:
        return 0.0
    if not pixel_m:
        raise InputError(
            "the input has no georeferenced pixel size: a buffer in metres cannot be "
            "applied; set the buffers to 0 or georeference the input"
        )
    return metres / pixel_m


def grow(mask: np.ndarray, radius: float) -> np.ndarray:
    """``mask`` grown by a disk of ``radius`` pixels (centre distance <= radius)."""
    if not mask.any():
        return mask.copy()
    if radius <= 0:
        return mask.copy()
    from scipy.ndimage import distance_transform_edt

    return distance_transform_edt(~mask) <= radius


def valid_rows(classes: np.ndarray, kinds: dict[int, str], radii: dict[str, float]) -> np.ndarray:
    """The valid mask of a block of class rows (exact for rows a halo away from its edges)."""
    unusable = np.zeros(classes.shape, dtype=bool)
    for kind in ("cloud", "shadow"):
        values = [v for v, k in kinds.items() if k == kind]
        if values:
            unusable |= grow(np.isin(classes, values), radii[kind])
    valid = (~unusable).astype(np.uint8)
    valid[classes == NODATA] = NODATA
    return valid


def write_valid(
    classes_path: Path,
    valid_path: Path,
    kinds: dict[int, str],
    radii: dict[str, float],
    strip: int = STRIP,
) -> dict[str, int]:
    """Write the valid mask of a finished class raster, strip by strip with a halo.

    Returns:
        Pixel counts: ``usable``, ``unusable``, ``nodata``.
    """
    import rasterio
    from rasterio.windows import Window

    halo = int(np.ceil(max(radii.values(), default=0.0)))
    counts = {"usable": 0, "unusable": 0, "nodata": 0}
    with rasterio.open(classes_path) as src:
        profile = src.profile | {"count": 1, "dtype": "uint8", "nodata": NODATA}
        profile.pop("photometric", None)
        with rasterio.open(valid_path, "w", **profile) as dst:
            for row in range(0, src.height, strip):
                top = max(row - halo, 0)
                bottom = min(row + strip + halo, src.height)
                block = src.read(1, window=Window(0, top, src.width, bottom - top))
                valid = valid_rows(block, kinds, radii)
                core = valid[row - top : row - top + min(strip, src.height - row)]
                dst.write(core, 1, window=Window(0, row, src.width, core.shape[0]))
                counts["usable"] += int((core == 1).sum())
                counts["unusable"] += int((core == 0).sum())
                counts["nodata"] += int((core == NODATA).sum())
            dst.write_colormap(1, {0: (160, 160, 160, 255), 1: (0, 0, 0, 0), NODATA: (0, 0, 0, 0)})
            dst.set_band_description(1, "valid (1 usable, 0 cloud, shadow or buffer)")
    return counts


__all__ = [
    "DEFAULT_BUFFER_CLOUD_M",
    "DEFAULT_BUFFER_SHADOW_M",
    "unusable_classes",
    "valid_rows",
    "write_valid",
]

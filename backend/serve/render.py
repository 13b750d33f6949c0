"""What a browser is shown of a job: small PNG previews, never the whole raster.

Every preview is read at most :data:`PREVIEW_PIXELS` on its longer side: the scene
through the run's own reader (the bands, scaling and extent of the run, averaged down;
bounded memory whatever the scene's size), the class, probability and uncertainty COGs
from their overviews. The scene is shown in true colour (B04, B03, B02; 0-0.3
reflectance, gamma 1/1.6) with the mask over it in the classes' own colours.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

#: Longest side of a preview, pixels.
PREVIEW_PIXELS = 1024
TRUE_COLOUR = ("B04", "B03", "B02")
#: Reflectance shown as full brightness in the true-colour preview.
BRIGHT_REFLECTANCE = 0.3
#: Opacity of the mask over the scene.
MASK_ALPHA = 0.55


def _shape(height: int, width: int, size: int = PREVIEW_PIXELS) -> tuple[int, int]:
    scale = min(1.0, size / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _save(rgb: np.ndarray, path: Path) -> Path:
    from PIL import Image

    Image.fromarray(rgb).save(path, compress_level=6)  # optimize=True: 3x slower, 1 % smaller
    return path


def true_colour(source: str, options: Any) -> np.ndarray:
    """The scene (or the run's extent) in true colour, uint8 (rows, cols, 3).

    A scene without B04, B03, B02 shows its first band in grey.
    """
    from ..inference.engine import open_input

    with open_input(source, options, options.bounds) as reader:
        bands = [b for b in TRUE_COLOUR if b in reader.bands] or reader.bands[:1]
        shape = _shape(reader.height, reader.width)
        values = reader.read(bands, 0, 0, reader.height, reader.width, out_shape=shape)
    if len(bands) == 1:
        values = np.repeat(values, 3, axis=0)
    scaled = np.clip(np.nan_to_num(values, nan=0.0) / BRIGHT_REFLECTANCE, 0, 1) ** (1 / 1.6)
    return (scaled * 255).astype(np.uint8).transpose(1, 2, 0)


def _read_small(path: Path, band: int, shape: tuple[int, int], nearest: bool) -> np.ndarray:
    import rasterio
    from rasterio.enums import Resampling

    with rasterio.open(path) as ds:
        method = Resampling.nearest if nearest else Resampling.average
        return ds.read(band, out_shape=shape, resampling=method)


def _colormap(values: np.ndarray, name: str, nodata: np.ndarray) -> np.ndarray:
    """0-1 values through a matplotlib colormap; nodata black."""
    from matplotlib import colormaps

    rgb = (colormaps[name](np.clip(values, 0, 1))[..., :3] * 255).astype(np.uint8)
    rgb[nodata] = 0
    return rgb


def segment_previews(
    source: str, options: Any, files: dict[str, Path], folder: Path
) -> dict[str, Path]:
    """PNG previews of a segment job: the scene, the mask over it, probability, doubt.

    Returns:
        ``preview_scene``, ``preview_mask``, ``preview_cloud_probability`` and
        ``preview_uncertainty``, each a PNG in ``folder``.
    """
    from ..inference.segment import load_classes

    scene = true_colour(source, options)
    shape = scene.shape[:2]
    mask = _read_small(files["mask"], 1, shape, nearest=True)
    overlay = scene.astype(np.float32)
    classes = load_classes(files["mask"])
    for cls in classes:
        if cls["name"] == "clear":
            continue
        colour = np.array([int(cls["color"].lstrip("#")[i : i + 2], 16) for i in (0, 2, 4)])
        where = mask == cls["value"]
        overlay[where] = (1 - MASK_ALPHA) * overlay[where] + MASK_ALPHA * colour
    nodata = mask == 255
    overlay[nodata] = 0
    out = {
        "preview_scene": _save(scene, folder / "preview_scene.png"),
        "preview_mask": _save(overlay.astype(np.uint8), folder / "preview_mask.png"),
    }
    names = [c["name"] for c in classes]
    if "cloud" in names:
        cloud = _read_small(files["probabilities"], names.index("cloud") + 1, shape, False)
        out["preview_cloud_probability"] = _save(
            _colormap(cloud / 100.0, "magma", nodata), folder / "preview_cloud_probability.png"
        )
    doubt = _read_small(files["uncertainty"], 1, shape, nearest=False)
    out["preview_uncertainty"] = _save(
        _colormap(doubt / 100.0, "viridis", nodata), folder / "preview_uncertainty.png"
    )
    return out


def cam_preview(cam: Path, folder: Path) -> dict[str, Path]:
    """A PNG of the first class activation map (0-1, inferno)."""
    import rasterio

    with rasterio.open(cam) as ds:
        shape = _shape(ds.height, ds.width)
    values = _read_small(cam, 1, shape, nearest=False).astype(np.float32)
    nodata = ~np.isfinite(values)
    png = _save(_colormap(np.nan_to_num(values), "inferno", nodata), folder / "preview_cam.png")
    return {"preview_cam": png}


def geojson_from_gpkg(gpkg: Path, geojson: Path) -> Path:
    """The polygons as GeoJSON (RFC 7946: longitude, latitude in WGS 84)."""
    from osgeo import gdal

    gdal.UseExceptions()
    gdal.VectorTranslate(str(geojson), str(gpkg), format="GeoJSON", dstSRS="EPSG:4326")
    return geojson

"""The labeled real scenes of the shared data, as engine inputs with label rasters.

Accuracy is measured on these scenes (``dev/benchmark_accuracy.py``, the model cards'
metrics, the tests that hold the defaults to ukis-csmask's own results). Each scene is
written as a user would have it: a GeoTIFF of uint16 reflectance x 10000 whose band
descriptions name the bands, so a default ``cloudseg segment`` run reads it without
options, and a label raster on the same grid (0 clear, 1 cloud, 2 cloud shadow, 255
unlabeled). The reflectance that ukis-csmask's ``CSmask`` gets is the same, rounded the
same way. See ``PROVENANCE.md`` beside the data for sources and licences.

- ``ukis-s2-l1c``: ukis-csmask's Sentinel-2 L1C test scene, 512 x 512 px, 6 bands,
  cloud and shadow labels. Its grid is not recorded; ukis-csmask resamples Sentinel-2
  to 30 m before masking, so it is written at 30 m (its most likely true resolution)
  and, as ``ukis-s2-l1c-as-10m``, with a 10 m pixel size: the case of 10 m input.
- ``ukis-landsat5``, ``ukis-landsat7``: ukis-csmask's Landsat TM/ETM+ test chips
  (~30 m, 6 bands of TOA reflectance, cloud and shadow labels), not georeferenced.
- ``38cloud-landsat8``: a 38-Cloud Landsat-8 patch (384 x 384 px, blue, green, red,
  nir), digital numbers to TOA reflectance with Landsat-8's rescaling (2e-5 x DN - 0.1,
  without sun-elevation correction); cloud labels only, so only cloud is scored.
- The CloudSEN12 figure patches have 3 bands, fewer than any built-in model needs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cloudseg.backend.errors import InputError
from cloudseg.backend.store.keys import IGNORE
from cloudseg.training.metrics import confusion_matrix, metrics_from_confusion

#: Label values of the written label rasters.
CLASSES = ("clear", "cloud", "cloud shadow")
#: ukis-csmask's band names for our Sentinel-2 names.
UKIS_BANDS = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir", "B11": "swir16"}
UKIS_BANDS |= {"B12": "swir22"}
SIX_BANDS = ("B02", "B03", "B04", "B08", "B11", "B12")


@dataclass
class LabeledScene:
    """One labeled scene, written as an image GeoTIFF and a label GeoTIFF.

    Attributes:
        name: Short id (``ukis-s2-l1c``).
        description: What it is, for tables.
        image: The image GeoTIFF (uint16 reflectance x 10000, named bands).
        labels: The label GeoTIFF (:data:`CLASSES` values, 255 unlabeled).
        reflectance: ``(rows, cols, bands)`` float32 reflectance, as ``CSmask`` takes it.
        bands: Sentinel-2 names of the image's bands, in order.
        product_level: ``"L1C"`` (all the labeled scenes here are top-of-atmosphere).
        resolution_m: The pixel size written, or None where not georeferenced.
        scored: The classes whose metrics mean something on this scene.
        true_resolution: Whether the written pixel size is the scene's own.
    """

    name: str
    description: str
    image: Path
    labels: Path
    reflectance: np.ndarray
    bands: tuple[str, ...]
    product_level: str = "L1C"
    resolution_m: float | None = None
    scored: tuple[str, ...] = CLASSES
    true_resolution: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def reference(self) -> np.ndarray:
        """The labels as an array (255 unlabeled)."""
        import rasterio

        with rasterio.open(self.labels) as ds:
            return ds.read(1)


def _ukis_labels(mask: np.ndarray) -> np.ndarray:
    """ukis-csmask test masks (0 shadow, 4 cloud, 1-3 clear surfaces) as our classes."""
    mask = mask[..., 0]
    return np.select([mask == 4, mask == 0], [1, 2], default=0).astype(np.uint8)


def _write(
    folder: Path,
    name: str,
    reflectance: np.ndarray,
    labels: np.ndarray,
    bands: tuple[str, ...],
    resolution_m: float | None,
) -> tuple[Path, Path, np.ndarray]:
    """Write image and labels; return their paths and the reflectance as written."""
    import rasterio
    from rasterio.transform import from_origin

    dn = np.clip(np.rint(reflectance * 10000), 0, 65535).astype(np.uint16)
    grid: dict[str, Any] = {}
    if resolution_m is not None:  # a UTM grid (the real one is not recorded)
        grid = {
            "crs": "EPSG:32632",
            "transform": from_origin(500000, 5300000, *(resolution_m,) * 2),
        }
    common = {"driver": "GTiff", "height": dn.shape[0], "width": dn.shape[1], **grid}
    image, label_path = folder / f"{name}.tif", folder / f"{name}.labels.tif"
    with rasterio.open(image, "w", count=len(bands), dtype="uint16", **common) as ds:
        ds.write(np.moveaxis(dn, -1, 0))
        for i, band in enumerate(bands, start=1):
            ds.set_band_description(i, band)
    with rasterio.open(label_path, "w", count=1, dtype="uint8", nodata=IGNORE, **common) as ds:
        ds.write(labels, 1)
    return image, label_path, dn.astype(np.float32) / np.float32(10000)


def labeled_scenes(data: Path, folder: Path) -> Iterator[LabeledScene]:
    """Write the labeled real scenes of ``data`` (``../shared/data/real``) into ``folder``.

    Raises:
        InputError: If ``data`` lacks the ukis-csmask test files.
    """
    s2 = data / "ukis_sentinel2" / "sentinel2.npz"
    if not s2.is_file():
        raise InputError(f"{s2} is missing; point --data at the shared real data folder")
    folder.mkdir(parents=True, exist_ok=True)
    npz = np.load(s2)
    labels = _ukis_labels(npz["msk"])
    for name, res, true in (("ukis-s2-l1c", 30.0, True), ("ukis-s2-l1c-as-10m", 10.0, False)):
        image, label_path, refl = _write(folder, name, npz["img"], labels, SIX_BANDS, res)
        yield LabeledScene(
            name,
            "ukis-csmask Sentinel-2 L1C test scene, 512 x 512 px, 6 bands"
            + (", written at 30 m" if true else ", written as 10 m input"),
            image,
            label_path,
            refl,
            SIX_BANDS,
            resolution_m=res,
            true_resolution=true,
        )
    for sensor in ("landsat5", "landsat7"):
        npz = np.load(data / "ukis_landsat" / f"{sensor}.npz")
        image, label_path, refl = _write(
            folder, f"ukis-{sensor}", npz["img"], _ukis_labels(npz["msk"]), SIX_BANDS, None
        )
        yield LabeledScene(
            f"ukis-{sensor}",
            f"ukis-csmask {sensor.replace('landsat', 'Landsat-')} test chip, 512 x 512 px, "
            "6 bands, ~30 m",
            image,
            label_path,
            refl,
            SIX_BANDS,
        )
    yield from _landsat8_38cloud(data / "landsat38cloud", folder)


def _landsat8_38cloud(source: Path, folder: Path) -> Iterator[LabeledScene]:
    import rasterio

    gt = sorted(source.glob("gt_*.TIF"))
    if not gt:
        return
    suffix = gt[0].name.removeprefix("gt_")
    stack = []
    for colour in ("blue", "green", "red", "nir"):
        with rasterio.open(source / f"{colour}_{suffix}") as ds:
            stack.append(ds.read(1).astype(np.float32) * np.float32(2e-5) - np.float32(0.1))
    with rasterio.open(gt[0]) as ds:
        labels = (ds.read(1) > 0).astype(np.uint8)  # 255 cloud, 0 anything else
    bands = ("B02", "B03", "B04", "B08")
    image, label_path, refl = _write(
        folder, "38cloud-landsat8", np.stack(stack, axis=-1), labels, bands, None
    )
    yield LabeledScene(
        "38cloud-landsat8",
        "38-Cloud Landsat-8 patch, 384 x 384 px, 4 bands, ~30 m, cloud labels only",
        image,
        label_path,
        refl,
        bands,
        scored=("cloud",),
    )


def csmask_classes(scene: LabeledScene, bands: int, product_level: str = "l1c") -> np.ndarray:
    """ukis-csmask's own ``CSmask`` mask of a scene with its first ``bands`` bands (4 or 6).

    ukis-csmask picks its 6-band model when given 6 bands and its 4-band model for 4.
    """
    from ukis_csmask.mask import CSmask

    names = [UKIS_BANDS[b] for b in scene.bands[:bands]]
    image = np.ascontiguousarray(scene.reflectance[..., :bands])
    return CSmask(image, band_order=names, product_level=product_level).csm[..., 0]


def scored_only(metrics: dict[str, Any], scored: tuple[str, ...]) -> dict[str, Any]:
    """``metrics`` (``metrics_from_confusion``) with per-class figures of ``scored`` only."""
    per_class = {k: v for k, v in metrics["per_class"].items() if k in scored}
    return metrics | {"per_class": per_class}


def score(scene: LabeledScene, prediction: np.ndarray) -> dict[str, Any]:
    """Metrics of a class raster against the scene's labels, for the classes it scores."""
    matrix = confusion_matrix(scene.reference(), prediction, len(CLASSES))
    return scored_only(metrics_from_confusion(matrix, list(CLASSES)), scene.scored)


def on_grid(scene: LabeledScene, folder: Path, pixel_m: float = 30.0) -> Path:
    """The scene's image on a UTM grid of ``pixel_m`` (for scenes not georeferenced).

    Buffers in metres need a pixel size; the Landsat test chips record none (~30 m).
    """
    import rasterio
    from rasterio.transform import from_origin

    out = folder / f"{scene.name}-{pixel_m:g}m.tif"
    with rasterio.open(scene.image) as src:
        profile = src.profile | {
            "crs": "EPSG:32632",
            "transform": from_origin(500000, 5300000, pixel_m, pixel_m),
        }
        with rasterio.open(out, "w", **profile) as dst:
            dst.write(src.read())
            dst.descriptions = src.descriptions
    return out


def reference_valid(labels: np.ndarray, buffer_px: int = 4) -> np.ndarray:
    """ukis-csmask's reference valid mask: cloud and shadow labels grown as its tests do.

    Their test suite (``test_csmask_valid``) grows the invalid labels by
    ``scipy.ndimage.binary_dilation(iterations=4)`` (4 steps of the 4-neighbour cross).
    """
    from scipy import ndimage

    invalid = np.isin(labels, (CLASSES.index("cloud"), CLASSES.index("cloud shadow")))
    grown = ndimage.binary_dilation(invalid, iterations=buffer_px) if buffer_px else invalid
    return (~grown).astype(np.uint8)


def csmask_valid(scene: LabeledScene, bands: int = 6, buffer_px: int = 4) -> np.ndarray:
    """ukis-csmask's own ``valid`` output for a scene (its buffer: ``buffer_px`` pixels)."""
    from ukis_csmask.mask import CSmask

    names = [UKIS_BANDS[b] for b in scene.bands[:bands]]
    image = np.ascontiguousarray(scene.reflectance[..., :bands])
    return CSmask(image, band_order=names, invalid_buffer=buffer_px).valid[..., 0]

"""A store ingested from a raw dataset with ``mask_values``, as the docs describe, and its check.

The labeled ukis-csmask Sentinel-2 scene (float32 reflectance 0-1; raw mask values 0
cloud shadow, 4 cloud, 1 and 3 clear surfaces) is written as a ``raw`` source
(``Scenes/``, ``Masks/``, ``data.json`` with ``mask_values``) on a 30 m UTM grid, with
the cloud of one 32 px corner of three 64 px windows labeled clear (clouds an analyst
missed; the windows' other clouds and shadows labeled right), and ingested. Its label
check writes the report with a relative ``--out``, as the example of
docs/label-quality.md does. Used by the review tests, the GUI driver of the review tab
and the screenshot of it (``scripts/screenshot_qgis.py``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

BANDS = ["B02", "B03", "B04", "B08", "B11", "B12"]
SCHEME = {
    "bands": BANDS,
    "classes": ["clear", "cloud", "cloud shadow"],
    "mask_values": {"0": 2, "1": 0, "2": 0, "3": 0, "4": 1},
}
SCENE = "sentinel2"
#: The 64 px windows (row, col) with a missed cloud, and the corner of each (row, col).
MISSED = {(64, 0): (32, 32), (192, 320): (32, 0), (64, 384): (32, 0)}


def raw_source(real_data: Path, folder: Path, georeferenced: bool = True) -> Path:
    """The scene as a raw source folder with a ``data.json`` that maps raw mask values."""
    import rasterio
    from rasterio.transform import from_origin

    chip = np.load(real_data / "ukis_sentinel2" / "sentinel2.npz")
    image = np.moveaxis(chip["img"], -1, 0).astype(np.float32)
    mask = chip["msk"][..., 0].copy()
    for (row, col), (down, right) in MISSED.items():
        corner = mask[row + down : row + down + 32, col + right : col + right + 32]
        corner[corner == 4] = 1  # cloud labeled clear
    for name in ("Scenes", "Masks"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    grid = {"crs": "EPSG:32632", "transform": from_origin(500000, 5300000, 30, 30)}
    profile = {"driver": "GTiff", "width": 512, "height": 512} | (grid if georeferenced else {})
    with rasterio.open(
        folder / "Scenes" / f"{SCENE}.tif", "w", **profile, count=6, dtype="float32"
    ) as dst:
        dst.write(image)
        dst.descriptions = tuple(BANDS)
    with rasterio.open(
        folder / "Masks" / f"{SCENE}.tif", "w", **profile, count=1, dtype="uint8"
    ) as dst:
        dst.write(mask[None])
    (folder / "data.json").write_text(json.dumps(SCHEME), encoding="utf-8")
    return folder


def mask_values_store(real_data: Path, work: Path, georeferenced: bool = True) -> Path:
    """The raw source ingested into ``work/store`` (collection id ``s2-clouds``)."""
    from cloudseg.backend.store.ingest import ingest

    source = raw_source(real_data, work / "source", georeferenced)
    ingest(source, work / "store", layout="raw", name="s2-clouds", env_file=None)
    return work / "store"


def checked(store: Path, work: Path) -> Path:
    """Check the store's labels from ``work`` with ``--out check`` (relative); the report."""
    from cloudseg.training.label_check import check_labels

    before = Path.cwd()
    os.chdir(work)
    try:
        result = check_labels(store, "ukis-csmask-6b-l1c", "check", window=64)
    finally:
        os.chdir(before)
    return work / "check" / Path(result.report).name

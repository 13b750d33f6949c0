"""The review of suspicious labels on a store ingested the way its docs describe.

The store is the labeled Sentinel-2 scene ingested from a raw source whose
``data.json`` maps raw mask values to classes (``mask_values``), reflectance stored as
float 0-1 (see tests/review_store.py). A correction is stored as the store holds its
scenes; a report's raster paths are found from anywhere; the dashboard draws the
classes in their colours.
"""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from review_store import SCENE, mask_values_store

from cloudseg.backend.active.review import (
    decide,
    open_window,
    review_queue,
)
from cloudseg.backend.models.cards import CLASS_COLORS
from cloudseg.backend.store.dashboard import dashboard_html
from cloudseg.backend.store.dataset import open_dataset
from cloudseg.backend.store.keys import item_key
from cloudseg.backend.store.report import dataset_report

pytestmark = pytest.mark.real_data

WINDOW = [192, 320, 64, 64]  # a missed cloud; 27 % cloud and 21 % shadow labeled


@pytest.fixture
def store(real_data, tmp_path):
    return mask_values_store(real_data, tmp_path)


def _report(folder: Path, store: Path, rasters: dict[str, str] | None = None) -> Path:
    """A label check report flagging WINDOW (as ``cloudseg labels check`` writes one)."""
    entry = {"scene": SCENE, "score": 0.8, "flagged_share": 0.05, "flagged": False,
             "windows": [{"window": WINDOW, "flagged_share": 0.36}]} | (rasters or {})  # fmt: skip
    data = {"model": "ukis-csmask-6b-l1c", "store": str(store), "scenes": [entry], "limit": 0.1}
    folder.mkdir(parents=True, exist_ok=True)
    report = folder / "label_issues.json"
    report.write_text(json.dumps(data), encoding="utf-8")
    return report


def test_a_correction_keeps_the_stores_scheme_values_and_collection(store, tmp_path):
    report = _report(tmp_path / "check", store)
    dataset, (suspect,) = review_queue(report)
    assert (dataset.bands, [c["name"] for c in dataset.classes]) == (
        ["B02", "B03", "B04", "B08", "B11", "B12"],
        ["clear", "cloud", "cloud shadow"],
    )
    files = open_window(report, suspect, tmp_path / "review")
    # Corrected as it stands (the stored label's polygons): recorded, nothing refused.
    fixed = decide(report, suspect, "corrected", files.corrections, who="analyst")
    assert fixed == f"{SCENE}-fix-r192-c320-v1"

    dataset = open_dataset(store)
    image, labels = dataset.read(fixed)
    original, stored = dataset.read(SCENE, tuple(WINDOW))
    assert image.dtype == np.float32  # as the store holds its scenes, not uint16 x 10000
    np.testing.assert_array_equal(image, original)
    np.testing.assert_array_equal(labels, stored)
    assert {1, 2} <= set(np.unique(labels).tolist())  # cloud and shadow, the store's values
    assert dataset.collection["id"] == "s2-clouds"  # not renamed
    assert dataset.scheme.mask_values == {0: 2, 1: 0, 2: 0, 3: 0, 4: 1}  # the store's own
    item = dataset.item(fixed)
    assert item.properties["cloudseg:corrects"] == {"scene": SCENE, "window": WINDOW}
    assert item.assets["image"].extra_fields["cloudseg:dtype"] == "float32"
    (record,) = dataset.item(SCENE).properties["cloudseg:label_review"]
    assert (record["decision"], record["corrected_scene"]) == ("corrected", fixed)
    # The dashboard's band chart stays in reflectance: no means of 100-200, no bar below 0.
    stats = dataset_report(dataset.storage)["band_stats"]
    assert all(0 < s["mean"] < 1 and s["mean"] - s["std"] > -0.2 for s in stats.values()), stats


def test_the_reports_rasters_are_found_from_anywhere_or_said_missing(store, tmp_path, monkeypatch):
    import rasterio

    # A check run from tmp_path with --out check (relative) recorded "check/issues/...".
    check = tmp_path / "check"
    for kind, value in (("issues", 1), ("predicted", 2)):
        (check / kind).mkdir(parents=True)
        with rasterio.open(
            check / kind / f"{SCENE}.tif", "w", driver="GTiff", width=512, height=512,
            count=1, dtype="uint8", crs="EPSG:32632",
            transform=rasterio.transform.from_origin(500000, 5300000, 30, 30),
        ) as dst:  # fmt: skip
            dst.write(np.full((1, 512, 512), value, np.uint8))
    rasters = {"issue_raster": f"check/issues/{SCENE}.tif",
               "predicted_raster": f"check/predicted/{SCENE}.tif"}  # fmt: skip
    report = _report(check, store, rasters)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # QGIS runs from anywhere

    _, (suspect,) = review_queue(report)
    files = open_window(report, suspect, tmp_path / "review")
    assert files.flagged is not None and files.model is not None and files.missing == []
    with rasterio.open(files.flagged) as flagged, rasterio.open(files.model) as model:
        assert (flagged.read(1) == 1).all() and (model.read(1) == 2).all()

    # Gone: said, not silently left out.
    (check / "issues" / f"{SCENE}.tif").unlink()
    files = open_window(report, suspect, tmp_path / "review")
    assert files.flagged is None and files.model is not None
    assert files.missing == [f"flagged: check/issues/{SCENE}.tif"]


def _thumbnail_pixels(page: str) -> np.ndarray:
    """The RGB pixels of the first worst-window thumbnail of a dashboard page."""
    from PIL import Image

    data = re.search(r'<figure><img alt="[^"]*" src="data:image/png;base64,([^"]+)"', page)
    assert data is not None, "no thumbnail"
    with Image.open(io.BytesIO(base64.b64decode(data.group(1)))) as picture:
        return np.asarray(picture.convert("RGB"))


@pytest.mark.slow
def test_the_dashboards_stored_label_thumbnails_show_cloud_and_shadow_colours(store):
    dataset = open_dataset(store)
    key = item_key(SCENE)
    item = json.loads(dataset.storage.read_bytes(key))
    item["properties"]["cloudseg:label_quality"] = {  # as cloudseg labels check records it
        "score": 0.8, "flagged_share": 0.05, "flagged": True, "rank": 1,
        "windows": [{"window": WINDOW, "flagged_share": 0.36}], "model": "ukis-csmask-6b-l1c",
    }  # fmt: skip
    dataset.storage.write_bytes(key, json.dumps(item).encode())
    pixels = _thumbnail_pixels(dashboard_html(dataset)).reshape(-1, 3)

    def share(colour: str) -> float:
        rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
        return float((np.abs(pixels.astype(int) - rgb).max(axis=1) <= 8).mean())

    # The window's label is a quarter cloud and a fifth shadow: both drawn in their colours.
    assert share(CLASS_COLORS["cloud"]) > 0.02 and share(CLASS_COLORS["shadow"]) > 0.02

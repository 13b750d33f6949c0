"""The valid-pixel mask and the sensitivity control, on real scenes."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import rasterio
from scipy import ndimage

from cloudseg.backend.inference.decision import decide
from cloudseg.backend.inference.valid import valid_rows, write_valid
from cloudseg.backend.models.cards import ClassInfo

CLASSES = [ClassInfo(0, "clear", "#000000"), ClassInfo(1, "cloud", "#ffffff"),
           ClassInfo(2, "cloud shadow", "#444444")]  # fmt: skip
KINDS = {1: "cloud", 2: "shadow"}


def disk(radius: float) -> np.ndarray:
    r = int(np.floor(radius))
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return x**2 + y**2 <= radius**2


def reference(classes: np.ndarray, radii: dict[str, float]) -> np.ndarray:
    """scipy's binary dilation with a disk, on the whole scene."""
    unusable = ndimage.binary_dilation(classes == 1, structure=disk(radii["cloud"]))
    unusable |= ndimage.binary_dilation(classes == 2, structure=disk(radii["shadow"]))
    valid = (~unusable).astype(np.uint8)
    valid[classes == 255] = 255
    return valid


def _class_raster(path, classes):
    profile = {"driver": "GTiff", "width": classes.shape[1], "height": classes.shape[0],
               "count": 1, "dtype": "uint8", "nodata": 255, "crs": "EPSG:32632",
               "transform": rasterio.transform.from_origin(500000, 5300000, 10, 10)}  # fmt: skip
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(classes, 1)


@pytest.mark.slow
@pytest.mark.real_data
def test_the_buffer_is_scipys_dilation_and_the_same_for_any_strip_height(
    multiband, tmp_path, venv_env
):
    mask, valid = tmp_path / "mask.tif", tmp_path / "valid.tif"
    run = subprocess.run(
        ["cloudseg", "segment", str(multiband), str(mask), "--product-level", "L2A",
         "--valid", str(valid), "--buffer-cloud", "60", "--buffer-shadow", "30", "--json", "-q"],
        capture_output=True, text=True, env=venv_env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    with rasterio.open(mask) as ds:
        classes = ds.read(1)
        pixel = ds.transform.a
    with rasterio.open(valid) as ds:
        written = ds.read(1)
        assert ds.nodata == 255 and json.loads(ds.tags()["CLOUDSEG_BUFFERS_M"]) == {
            "cloud": 60.0,
            "shadow": 30.0,
        }
    radii = {"cloud": 60 / pixel, "shadow": 30 / pixel}
    expected = reference(classes, radii)
    np.testing.assert_array_equal(written, expected)
    masked = ((classes == 1) | (classes == 2)).sum()
    assert (written == 0).sum() > masked > 0  # cloud and shadow, and their buffers
    assert result["usable_percent"] == pytest.approx(100 * (written == 1).mean(), abs=1e-3)
    # Any strip height gives the same mask.
    for strip in (7, 100, 513):
        write_valid(mask, tmp_path / f"strip{strip}.tif", KINDS, radii, strip=strip)
        with rasterio.open(tmp_path / f"strip{strip}.tif") as ds:
            np.testing.assert_array_equal(ds.read(1), expected)


def test_a_cloud_at_a_strip_edge_grows_across_it_and_nodata_stays(tmp_path):
    classes = np.zeros((40, 30), np.uint8)
    classes[19, 15] = 1  # the last row of the first strip of 20
    classes[0:3, 0:30] = 255  # no data along the top
    classes[30, 5] = 2
    _class_raster(tmp_path / "c.tif", classes)
    radii = {"cloud": 3.0, "shadow": 1.5}
    write_valid(tmp_path / "c.tif", tmp_path / "v.tif", KINDS, radii, strip=20)
    with rasterio.open(tmp_path / "v.tif") as ds:
        valid = ds.read(1)
    np.testing.assert_array_equal(valid, reference(classes, radii))
    assert (valid[20:23, 15] == 0).all() and valid[23, 15] == 1  # 3 rows into the next strip
    assert valid[16, 15] == 0 and valid[15, 15] == 1
    assert (valid[0:3] == 255).all()  # no data stays no data, never "usable"
    assert valid[30, 6] == 0 and valid[30, 7] == 1  # shadow: 1.5 px


def test_the_default_decision_is_the_argmax_byte_for_byte_and_thresholds_move_it():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1, 1, 1], size=(64, 64)).transpose(2, 0, 1).astype(np.float32)
    np.testing.assert_array_equal(decide(probs, CLASSES), probs.argmax(axis=0).astype(np.uint8))
    eager = decide(probs, CLASSES, cloud_threshold=0.2)
    timid = decide(probs, CLASSES, cloud_threshold=0.8)
    np.testing.assert_array_equal(eager == 1, probs[1] >= 0.2)
    np.testing.assert_array_equal(timid == 1, probs[1] >= 0.8)
    rest = ~(probs[1] >= 0.8)  # the others: the more probable of clear and shadow
    np.testing.assert_array_equal(timid[rest], np.where(probs[2] > probs[0], 2, 0)[rest])
    shadow = decide(probs, CLASSES, shadow_threshold=0.3)
    argmax = probs.argmax(axis=0)
    np.testing.assert_array_equal(shadow == 1, argmax == 1)  # cloud stays the argmax's
    np.testing.assert_array_equal(shadow == 2, (probs[2] >= 0.3) & (argmax != 1))


@pytest.mark.slow
@pytest.mark.real_data
def test_default_sensitivity_reproduces_todays_mask_and_a_threshold_changes_it(
    multiband, tmp_path, venv_env
):
    masks = {}
    for name, extra in (("plain", []), ("eager", ["--cloud-threshold", "0.2"])):
        out = tmp_path / f"{name}.tif"
        run = subprocess.run(
            ["cloudseg", "segment", str(multiband), str(out), "--product-level", "L2A", "-q",
             *extra], capture_output=True, text=True, env=venv_env,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        with rasterio.open(out) as ds:
            masks[name] = ds.read(1)
            tags = ds.tags()
    assert tags["CLOUDSEG_DECISION"] == json.dumps(
        {"cloud_threshold": 0.2, "shadow_threshold": None}
    )
    assert (masks["eager"] == 1).sum() > (masks["plain"] == 1).sum()
    assert ((masks["plain"] == 1) <= (masks["eager"] == 1)).all()  # cloud only grows
    bad = subprocess.run(
        ["cloudseg", "segment", str(multiband), str(tmp_path / "x.tif"),
         "--cloud-threshold", "1.5"],
        capture_output=True, text=True, env=venv_env,
    )  # fmt: skip
    assert bad.returncode != 0 and "give a probability above 0 and at most 1" in bad.stderr
    assert not (tmp_path / "x.tif").exists()


def test_valid_rows_keeps_clear_land_usable():
    classes = np.array([[0, 0, 0], [0, 0, 0]], np.uint8)
    np.testing.assert_array_equal(valid_rows(classes, KINDS, {"cloud": 2, "shadow": 2}), 1)

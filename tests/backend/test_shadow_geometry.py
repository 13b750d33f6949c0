"""``--shadow-geometry``: shadows kept only where a cloud of the scene can cast them."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform

from cloudseg.backend.errors import CancelledError
from cloudseg.backend.inference import shadow
from cloudseg.backend.inference.engine import (
    BASE_MEMORY_MIB,
    ArrayScene,
    bytes_per_column,
    plan_reader,
    predict,
)
from cloudseg.backend.inference.options import RunOptions
from cloudseg.backend.inference.segment import SegmentOptions, segment
from cloudseg.backend.raster.reader import open_scene

from .conftest import BANDS, stack_bands

MODEL = "ukis-csmask-4b-l2a"
ROOT = Path(__file__).resolve().parents[2]
CLEAR, CLOUD, SHADOW = 0, 1, 2

pytestmark = pytest.mark.real_data


def _mask(path):
    with rasterio.open(path) as ds:
        return ds.read(1), ds.tags()


def _angle_between(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


@pytest.mark.slow
def test_sun_angles_come_from_the_products_tile_metadata(make_safe, band_folder, tmp_path):
    safe = make_safe(band_folder, tmp_path, level="L2A", sun=(35.2, 151.7))
    result = segment(safe, tmp_path / "mask.tif", SegmentOptions(shadow_geometry=True))
    report = result.shadow_geometry
    assert report["sun"] == {
        "azimuth": 151.7,
        "zenith": 35.2,
        "source": "MTD_TL.xml",
        "confidence": None,
    }
    assert report["heights_m"] == list(shadow.HEIGHTS_M)
    # The farthest projection is the highest cloud's: height x tan(zenith), in pixels.
    expected = shadow.HEIGHTS_M[1] * math.tan(math.radians(35.2)) / 10.0
    assert report["reach_px"] == pytest.approx(expected, abs=0.1)
    _, tags = _mask(tmp_path / "mask.tif")
    assert json.loads(tags["CLOUDSEG_SHADOW_GEOMETRY"]) == report
    zipped = make_safe(band_folder, tmp_path / "zip", level="L2A", as_zip=True, sun=(35.2, 151.7))
    assert shadow.sun_from_source(zipped) == shadow.SunAngles(151.7, 35.2, "MTD_TL.xml")


@pytest.mark.slow
def test_sun_angles_from_gdal_tags_and_stac_properties(band_folder, tmp_path):
    tiff = stack_bands(band_folder, tmp_path / "tagged.tif", BANDS)
    with rasterio.open(tiff, "r+") as ds:
        ds.update_tags(SUN_AZIMUTH="140.5", SUN_ELEVATION="50")
    result = segment(tiff, tmp_path / "mask.tif", SegmentOptions(shadow_geometry=True))
    assert result.shadow_geometry["sun"]["source"] == "GDAL metadata"
    assert result.shadow_geometry["sun"]["azimuth"] == 140.5
    assert result.shadow_geometry["sun"]["zenith"] == pytest.approx(40.0)
    stac = {"view:sun_azimuth": 120.0, "view:sun_elevation": 60.0, "datetime": "2020"}
    assert shadow.sun_from_tags(stac, "STAC Item") == shadow.SunAngles(120.0, 30.0, "STAC Item")
    assert shadow.sun_from_tags({"SUN_AZIMUTH": "north"}) is None


def _label_direction(labels: np.ndarray) -> float:
    """The sun azimuth the labels imply: the shift of labeled cloud onto labeled shadow."""
    cloud, dark = labels == CLOUD, labels == SHADOW
    best, best_azimuth = -1.0, 0.0
    for azimuth in range(0, 360, 5):
        away = math.radians(azimuth + 180)
        hits = 0
        for d in range(4, 64, 4):
            dy, dx = round(-d * math.cos(away)), round(d * math.sin(away))
            moved = np.roll(np.roll(cloud, dy, 0), dx, 1)
            hits += np.count_nonzero(moved & dark & ~cloud)
        if hits > best:
            best, best_azimuth = hits, float(azimuth)
    return best_azimuth


@pytest.mark.slow
def test_the_estimated_sun_agrees_with_the_labels_shadows(labeled_s2, tmp_path):
    scene, _ = labeled_s2
    options = SegmentOptions(model="ukis-csmask-6b-l1c", shadow_geometry=True, stats=None)
    result = segment(scene.image, tmp_path / "mask.tif", options)
    sun = result.shadow_geometry["sun"]
    assert sun["source"] == "estimated from the scene"
    assert sun["zenith"] is None and sun["confidence"] > shadow.MIN_CONFIDENCE
    assert _angle_between(sun["azimuth"], _label_direction(scene.reference())) <= 20


@pytest.mark.slow
def test_the_step_moves_only_shadow_and_clear_and_counts_what_it_changed(labeled_s2, tmp_path):
    scene, _ = labeled_s2
    model = "ukis-csmask-6b-l1c"
    options = SegmentOptions(model=model, uncertainty=tmp_path / "ua.tif")
    without = segment(scene.image, tmp_path / "a.tif", options)
    options = SegmentOptions(model=model, shadow_geometry=True, uncertainty=tmp_path / "ub.tif")
    with_step = segment(scene.image, tmp_path / "b.tif", options)
    a, tags = _mask(tmp_path / "a.tif")
    b, _ = _mask(tmp_path / "b.tif")
    changed = a != b
    assert changed.any()
    assert set(np.unique(a[changed])) <= {CLEAR, SHADOW}
    assert set(np.unique(b[changed])) <= {CLEAR, SHADOW}
    assert np.array_equal(a == CLOUD, b == CLOUD)
    assert with_step.shadow_geometry["changed_pixels"] == int(changed.sum())
    assert "CLOUDSEG_SHADOW_GEOMETRY" not in tags and without.shadow_geometry is None
    # The uncertainty raster is the refined probabilities' doubt.
    doubt_a, _ = _mask(tmp_path / "ua.tif")
    doubt_b, _ = _mask(tmp_path / "ub.tif")
    assert np.mean(doubt_a[changed] != doubt_b[changed]) > 0.9
    # Shadow it removes lies where no labeled cloud is upwind: mostly not labeled shadow.
    removed = (a == SHADOW) & (b == CLEAR)
    assert np.count_nonzero(scene.reference()[removed] == SHADOW) < 0.5 * removed.sum()


#: The real chip whose clouds and shadows the step reads best (Addis Ababa, mostly clear).
AKNY = "oncloudn_l2a/akny"


@pytest.mark.slow
def test_the_estimate_agrees_with_the_sun_at_the_chips_place_and_time(
    real_data, tmp_path, monkeypatch
):
    monkeypatch.syspath_prepend(str(ROOT / "dev"))
    from study_shadow_geometry import solar_position

    with rasterio.open(real_data / AKNY / "B02.tif") as ds:
        x, y = (ds.bounds.left + ds.bounds.right) / 2, (ds.bounds.bottom + ds.bounds.top) / 2
        (lon,), (lat,) = transform(ds.crs, "EPSG:4326", [x], [y])
    # test_metadata.csv: akny, Addis Ababa, 2020-09-10T07:57:42Z
    azimuth, _ = solar_position(lat, lon, dt.datetime(2020, 9, 10, 7, 57, 42))
    assert 95 < azimuth < 104  # the morning sun in the east
    result = segment(real_data / AKNY, tmp_path / "m.tif", SegmentOptions(shadow_geometry=True))
    sun = result.shadow_geometry["sun"]
    assert sun["confidence"] >= shadow.MIN_CONFIDENCE
    assert _angle_between(sun["azimuth"], azimuth) <= 15


@pytest.fixture(scope="module")
def wide_chip(real_data, tmp_path_factory):
    """The akny chip five times side by side, 2560 px wide (the prior on 8 px cells).

    With its sun in GDAL tags (the position at its place and time): a scene of copies
    repeats every 512 px, which no estimate should be asked to see through.
    """
    chip = stack_bands(real_data / AKNY, tmp_path_factory.mktemp("wide") / "chip.tif", BANDS)
    with rasterio.open(chip) as src:
        profile, data = src.profile, src.read()
    wide = np.concatenate([data] * 5, axis=2)
    path = chip.with_name("wide.tif")
    profile.update(width=wide.shape[2], tiled=True, blockxsize=512, blockysize=512)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(wide)
        dst.descriptions = tuple(BANDS)
        dst.update_tags(SUN_AZIMUTH="99.2", SUN_ZENITH="21.6")
    return path


@pytest.mark.slow
def test_the_same_mask_over_column_blocks_and_strip_sizes(wide_chip, tmp_path, monkeypatch):
    base = {"model": MODEL, "shadow_geometry": True}
    one = segment(wide_chip, tmp_path / "one.tif", SegmentOptions(**base))
    assert one.shadow_geometry["cell_px"] == shadow.CELL
    assert one.shadow_geometry["changed_pixels"] > 0
    monkeypatch.setattr(shadow, "STRIP_ROWS", 64)
    monkeypatch.setattr(shadow, "IN_MEMORY_MIB", 0)  # the first pass stored on disk
    for columns in (1800, 1500, 1300):  # a budget that splits the scene in blocks
        budget = BASE_MEMORY_MIB + shadow.memory_mib(512, 2560, 3)
        budget += bytes_per_column(4, 3, 256, 1.0) * columns / 2**20
        options = SegmentOptions(**base, max_memory_mib=budget)
        with open_scene(wide_chip) as reader:
            if len(plan_reader(reader, options, budget).blocks) > 1:
                break
    else:
        pytest.fail("no budget splits the scene into column blocks")
    blocks = segment(wide_chip, tmp_path / "blocks.tif", options)
    a, _ = _mask(tmp_path / "one.tif")
    b, _ = _mask(tmp_path / "blocks.tif")
    assert np.array_equal(a, b)
    assert one.shadow_geometry == blocks.shadow_geometry
    assert not list(tmp_path.glob(".cloudseg-shadow*"))  # the stored pass is gone
    # A stored pass a killed run left beside the output goes with the next run.
    left = tmp_path / ".cloudseg-shadow.999999-deadbeef.part"
    left.mkdir()
    (left / "probs.npy").write_bytes(b"left by a killed run")
    segment(wide_chip, tmp_path / "again.tif", SegmentOptions(**base))
    assert not left.exists()


@pytest.mark.slow
def test_no_shadow_is_added_on_a_cloud_free_patch(real_data):
    chip = []
    for band in BANDS:
        with rasterio.open(real_data / AKNY / f"{band}.tif") as ds:
            chip.append(ds.read(1).astype(np.float32) * 1e-4)
    image = np.stack(chip)
    options = RunOptions(model=MODEL, precision="fp32")
    whole = predict(ArrayScene(image, BANDS, 10.0), options).classes()
    windows = [
        (r, c)
        for r in range(0, 512, 128)
        for c in range(0, 512, 128)
        if not np.any(whole[r : r + 128, c : c + 128] == CLOUD)
    ]
    assert windows
    for r, c in windows:
        crop = ArrayScene(np.ascontiguousarray(image[:, r : r + 128, c : c + 128]), BANDS, 10.0)
        without = predict(crop, options).classes()
        with_step = predict(crop, RunOptions(model=MODEL, precision="fp32", shadow_geometry=True))
        assert np.count_nonzero(with_step.classes() == SHADOW) <= np.count_nonzero(
            without == SHADOW
        )
        assert with_step.shadow_geometry is not None


@pytest.mark.slow
def test_cancel_during_the_step_leaves_no_output(multiband, tmp_path):
    seen = []

    def progress(percent, message):
        seen.append(message)

    def cancelled():
        return any(m.startswith("shadow geometry") for m in seen)

    with pytest.raises(CancelledError):
        segment(
            multiband,
            tmp_path / "mask.tif",
            SegmentOptions(model=MODEL, shadow_geometry=True, stats=tmp_path / "s.json"),
            progress=progress,
            cancelled=cancelled,
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_the_cli_says_what_the_step_did_and_explain_refuses_it(multiband, tmp_path, venv_env):
    import subprocess

    out = tmp_path / "mask.tif"
    done = subprocess.run(
        ["cloudseg", "segment", str(multiband), str(out), "--shadow-geometry", "--quiet"],
        capture_output=True,
        text=True,
        env=venv_env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "shadow geometry: " in done.stdout
    explained = subprocess.run(
        ["cloudseg", "explain", str(multiband), str(tmp_path / "cam.tif"), "--shadow-geometry"],
        capture_output=True,
        text=True,
        env=venv_env,
        timeout=300,
    )
    assert explained.returncode != 0
    assert explained.stderr.strip().count("\n") == 0
    assert "--shadow-geometry" in explained.stderr
    assert not (tmp_path / "cam.tif").exists()


def test_the_prior_projects_away_from_the_sun():
    cloud = np.zeros((64, 64), bool)
    cloud[30:34, 30:34] = True
    # Sun in the south: shadows fall north (smaller rows), up to 10 cells away.
    prior = shadow.shadow_prior(cloud, 180.0, 0.0, 10.0)
    assert prior[20:30, 30:34].all()  # north of the cloud
    assert not prior[40:50, 30:34].any()  # south of it: no cloud can cast there
    assert prior[54:].all()  # the way south leaves the scene: a cloud outside may cast
    assert not prior[:15].any()


@pytest.mark.slow
def test_shadow_beside_a_swath_edge_is_kept(real_data, tmp_path):
    """Where the sun shines over pixels without data, a cloud there is unseen: keep shadow."""
    scene = stack_bands(real_data / AKNY, tmp_path / "akny.tif", BANDS)
    with rasterio.open(scene, "r+") as ds:
        data = ds.read()
        data[:, :, 384:] = 0  # the eastern quarter outside the swath (nodata 0)
        ds.write(data)
        ds.update_tags(SUN_AZIMUTH="99.2", SUN_ZENITH="21.6")  # morning sun in the east
    runs = {}
    for step in (False, True):
        options = SegmentOptions(model=MODEL, shadow_geometry=step)
        runs[step] = segment(scene, tmp_path / f"m{step}.tif", options)
    a, _ = _mask(tmp_path / "mFalse.tif")
    b, _ = _mask(tmp_path / "mTrue.tif")
    reach = runs[True].shadow_geometry["reach_px"]
    beside = slice(int(384 - reach) + 2, 384)  # within reach, west of the edge
    assert np.count_nonzero(a[:, beside] == SHADOW) > 0
    assert np.array_equal(a[:, beside], b[:, beside])
    assert runs[True].shadow_geometry["changed_pixels"] > 0  # elsewhere it acts
    prior = shadow.shadow_prior(
        np.zeros((64, 64), bool),
        90.0,
        0.0,
        10.0,
        unseen=np.pad(np.ones((64, 8), bool), ((0, 0), (56, 0))),
    )
    assert prior[:, 46:56].all() and not prior[:, :40].any()


@pytest.mark.slow
def test_the_changed_count_follows_the_runs_thresholds(labeled_s2, tmp_path):
    scene, _ = labeled_s2
    base = {"model": "ukis-csmask-6b-l1c", "shadow_threshold": 0.6, "cloud_threshold": 0.4}
    segment(scene.image, tmp_path / "a.tif", SegmentOptions(**base))
    result = segment(scene.image, tmp_path / "b.tif", SegmentOptions(**base, shadow_geometry=True))
    a, _ = _mask(tmp_path / "a.tif")
    b, _ = _mask(tmp_path / "b.tif")
    assert result.shadow_geometry["changed_pixels"] == int(np.count_nonzero(a != b)) > 0

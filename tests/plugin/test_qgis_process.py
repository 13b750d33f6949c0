"""Headless use: qgis_process enables the plugin, lists the provider and runs algorithms."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import rasterio

ROOT = Path(__file__).resolve().parents[2]
QGIS_PROCESS = shutil.which("qgis_process.bin") or "/usr/bin/qgis_process.bin"


@pytest.fixture
def qgis_process_env(venv_env, tmp_path):
    """An empty QGIS profile and a plugin folder holding a link to this checkout."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "cloudseg").symlink_to(ROOT, target_is_directory=True)
    env = dict(venv_env)
    env["QGIS_PLUGINPATH"] = str(plugins)
    env["QGIS_CUSTOM_CONFIG_PATH"] = str(tmp_path / "profile")
    return env


def qgis_process(*args, env):
    return subprocess.run(
        [QGIS_PROCESS, *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.slow
def test_qgis_process_lists_and_runs_the_cloudseg_provider(qgis_process_env, tmp_path):
    enabled = qgis_process("plugins", "enable", "cloudseg", env=qgis_process_env)
    assert enabled.returncode == 0, enabled.stderr

    listing = qgis_process("list", env=qgis_process_env)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert "Cloud segmentation (cloudseg)" in lines
    assert any(
        line.split() == ["cloudseg:environment", "Check", "environment", "(GPU,", "packages)"]
        for line in lines
    )

    report = tmp_path / "env.json"
    run = qgis_process(
        "--json", "run", "cloudseg:environment", "--", f"OUTPUT={report}", env=qgis_process_env
    )
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout)["results"]
    assert results["DEVICE"] in {"cpu", "cuda"}
    assert results["MISSING"] == ""
    assert json.loads(report.read_text())["device"] == results["DEVICE"]


@pytest.mark.slow
def test_qgis_process_segments_a_real_chip(qgis_process_env, multiband, tmp_path):
    assert qgis_process("plugins", "enable", "cloudseg", env=qgis_process_env).returncode == 0
    out = tmp_path / "mask.tif"
    run = qgis_process(
        "--json",
        "run",
        "cloudseg:segment",
        "--",
        f"INPUT={multiband}",
        "PRODUCT_LEVEL=L2A",
        f"OUTPUT={out}",
        env=qgis_process_env,
    )
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout)["results"]
    assert results["OUTPUT"] == str(out) and out.is_file()
    assert results["MODEL_USED"] == "ukis-csmask-4b-l2a"
    total = results["CLOUD_PERCENT"] + results["SHADOW_PERCENT"] + results["CLEAR_PERCENT"]
    assert total == pytest.approx(100, abs=0.01)
    # What it cost: the chip's area, seconds per km², and energy only where measured.
    with rasterio.open(multiband) as src:
        km2 = src.width * src.height * abs(src.transform.a * src.transform.e) / 1e6
    assert results["KM2"] == pytest.approx(km2, rel=1e-4)
    assert results["SECONDS_PER_KM2"] == pytest.approx(results["SECONDS"] / km2, rel=0.05)
    assert results["ENERGY_METHOD"] in ("rapl", "nvml", "not measured")
    assert ("JOULES" in results and results["JOULES"] is not None) == (
        results["ENERGY_METHOD"] != "not measured"
    )

    failed = qgis_process(
        "run",
        "cloudseg:segment",
        "--",
        f"INPUT={multiband}",
        "MODEL=ukis-csmask-6b-l2a",
        f"OUTPUT={tmp_path / 'other.tif'}",
        env=qgis_process_env,
    )
    assert failed.returncode != 0
    assert "needs band(s) B11, B12" in failed.stdout + failed.stderr
    assert not (tmp_path / "other.tif").exists()


@pytest.mark.slow
def test_qgis_process_writes_uncertainty_then_proposals_on_a_real_chip(
    qgis_process_env, multiband, tmp_path
):
    """The first steps of the active-learning loop, headless: doubt, then proposals."""
    from osgeo import ogr

    assert qgis_process("plugins", "enable", "cloudseg", env=qgis_process_env).returncode == 0
    doubt = tmp_path / "doubt.tif"
    run = qgis_process(
        "--json",
        "run",
        "cloudseg:segment",
        "--",
        f"INPUT={multiband}",
        "PRODUCT_LEVEL=L2A",
        f"OUTPUT={tmp_path / 'mask.tif'}",
        f"UNCERTAINTY={doubt}",
        f"VECTOR={tmp_path / 'polygons.gpkg'}",
        "MIN_AREA=0",
        env=qgis_process_env,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["results"]["UNCERTAINTY"] == str(doubt)
    with rasterio.open(doubt) as ds:
        assert "CLOUDSEG_UNCERTAINTY" in ds.tags() and ds.read(1).max() <= 100
    project = tmp_path / "labels.gpkg"
    proposed = qgis_process(
        "--json",
        "run",
        "cloudseg:propose",
        "--",
        f"UNCERTAINTY={doubt}",
        f"PROJECT={project}",
        "BOX=64",
        "COUNT=6",
        env=qgis_process_env,
    )
    assert proposed.returncode == 0, proposed.stderr
    assert json.loads(proposed.stdout)["results"]["PROPOSED"] == 6
    dataset = ogr.Open(str(project))
    features = list(dataset.GetLayerByName("proposals"))
    assert [f.GetField("rank") for f in features] == [1, 2, 3, 4, 5, 6]
    assert {f.GetField("scene") for f in features} == {multiband.stem}  # the raster's scene
    assert {f.GetField("status") for f in features} == {"todo"}
    scores = [f.GetField("score") for f in features]
    assert scores == sorted(scores, reverse=True)
    dataset = None

    # The analyst labels box 1 (here: keeps the model's polygons) and marks it done.
    dataset = ogr.Open(str(project), 1)
    layer = dataset.GetLayerByName("proposals")
    first = next(f for f in layer if f.GetField("rank") == 1)
    first.SetField("status", "labeled")
    layer.SetFeature(first)
    polygons = ogr.Open(str(tmp_path / "polygons.gpkg"))
    labels = dataset.GetLayerByName("labels")  # made empty with the proposals
    for polygon in polygons.GetLayerByName("cloudseg"):
        copy = ogr.Feature(labels.GetLayerDefn())
        copy.SetGeometry(polygon.GetGeometryRef().Clone())
        copy.SetField("class", polygon.GetField("class"))
        labels.CreateFeature(copy)
    dataset = polygons = labels = None
    store = tmp_path / "store"
    stored = qgis_process(
        "--json",
        "run",
        "cloudseg:labels_to_store",
        "--",
        f"PROJECT={project}",
        f"INPUT={multiband}",
        f"STORE={store}",
        "CONTEXT=8",
        env=qgis_process_env,
    )
    assert stored.returncode == 0, stored.stderr
    assert json.loads(stored.stdout)["results"]["ADDED"] == 1
    from cloudseg.backend.store.dataset import open_dataset

    (scene,) = open_dataset(store).scenes()
    image, labels = open_dataset(store).read(scene)
    assert image.shape == (4, 80, 80) and labels.shape == (80, 80)  # 8 px of context

    # From the scene alone: segmented with doubt into <project>-runs, then proposed.
    fresh = tmp_path / "fresh.gpkg"
    proposed = qgis_process(
        "--json",
        "run",
        "cloudseg:propose",
        "--",
        f"SCENE={multiband}",
        "MODEL=ukis-csmask-4b-l2a",
        f"PROJECT={fresh}",
        "BOX=64",
        "COUNT=3",
        env=qgis_process_env,
    )
    assert proposed.returncode == 0, proposed.stderr
    assert json.loads(proposed.stdout)["results"]["PROPOSED"] == 3
    runs = sorted(p.name.split("_")[-1] for p in (tmp_path / "fresh-runs").iterdir())
    assert runs == ["mask.tif", "uncertainty.tif"]


@pytest.mark.slow
@pytest.mark.real_data
def test_qgis_process_explains_a_real_chip(qgis_process_env, multiband, tmp_path):
    """cloudseg:explain headless: a georeferenced 0-1 map of an extent of the chip."""
    assert qgis_process("plugins", "enable", "cloudseg", env=qgis_process_env).returncode == 0
    with rasterio.open(multiband) as src:
        left, top = src.transform * (0, 0)
        right, bottom = src.transform * (96, 96)
        crs = src.crs.to_string()
    out = tmp_path / "why.tif"
    run = qgis_process(
        "--json",
        "run",
        "cloudseg:explain",
        "--",
        f"INPUT={multiband}",
        "CLASSES=cloud",
        "METHOD=1",
        "MODEL=ukis-csmask-4b-l2a",
        f"EXTENT={left},{right},{bottom},{top} [{crs}]",
        f"OUTPUT={out}",
        env=qgis_process_env,
    )
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout)["results"]
    assert results["MODEL_USED"] == "ukis-csmask-4b-l2a"
    assert results["KM2"] == pytest.approx(96 * 96 * 100 / 1e6)  # the extent explained
    assert results["ENERGY_METHOD"] in ("rapl", "nvml", "not measured")
    with rasterio.open(out) as cam:
        assert (cam.width, cam.height, cam.count) == (96, 96, 1)
        assert cam.crs.to_string() == crs and cam.transform.c == pytest.approx(left)
        assert json.loads(cam.tags()["CLOUDSEG_EXPLAIN"])["method"] == "hirescam"
        values = cam.read(1)
    assert values.min() >= 0 and values.max() <= 1


@pytest.mark.slow
def test_qgis_process_segments_a_folder_as_a_batch(qgis_process_env, batch_scenes, tmp_path):
    assert qgis_process("plugins", "enable", "cloudseg", env=qgis_process_env).returncode == 0
    out = tmp_path / "masks"
    run = qgis_process(
        "--json", "run", "cloudseg:segment_batch", "--", f"INPUT={batch_scenes}",
        "PRODUCT_LEVEL=L2A", "WORKERS=2", f"OUTPUT_FOLDER={out}", env=qgis_process_env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout)["results"]
    assert (results["DONE"], results["SKIPPED"], results["FAILED"]) == (10, 0, 1)
    manifest = json.loads((out / "manifest.json").read_text())
    failed = [r for r in manifest["records"] if r["status"] == "failed"]
    assert [r["scene"] for r in failed] == ["broken"] and "cannot read" in failed[0]["error"]
    assert len(list(out.glob("*.tif"))) == 10
    again = qgis_process(
        "--json", "run", "cloudseg:segment_batch", "--", f"INPUT={batch_scenes}",
        "PRODUCT_LEVEL=L2A", f"OUTPUT_FOLDER={out}", env=qgis_process_env,
    )  # fmt: skip
    results = json.loads(again.stdout)["results"]
    assert (results["DONE"], results["SKIPPED"], results["FAILED"]) == (0, 10, 1)

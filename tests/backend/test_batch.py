"""Batch segmentation on a real Dask LocalCluster: manifest, resume, bad scenes, S3."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import rasterio

from cloudseg.backend.errors import CloudsegError

pytestmark = pytest.mark.real_data

BANDS = ("B02", "B03", "B04", "B08")  # the On Cloud N chips' bands


@pytest.fixture
def scenes(batch_scenes):
    """Ten real scenes and a broken one (see tests/conftest.py)."""
    return batch_scenes


def _run(venv_env, *args):
    return subprocess.run(
        ["cloudseg", "segment-batch", *map(str, args), "--product-level", "L2A", "--json", "-q"],
        capture_output=True, text=True, env=venv_env, timeout=600,
    )  # fmt: skip


@pytest.mark.slow
def test_a_batch_runs_on_a_local_cluster_and_a_rerun_skips_every_scene(scenes, tmp_path, venv_env):
    out = tmp_path / "out"
    first = _run(venv_env, scenes, "--out", out, "--workers", "2")
    assert first.returncode == 1, first.stderr  # the broken scene
    result = json.loads(first.stdout)
    assert result["workers"] == 2 and result["counts"] == {"done": 10, "failed": 1}
    assert "failed: broken: cannot read" in first.stderr and "Dask dashboard:" in first.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["scenes"] == 11
    by_scene = {r["scene"]: r for r in manifest["records"]}
    assert by_scene["broken"]["status"] == "failed" and "\n" not in by_scene["broken"]["error"]
    done = [r for r in manifest["records"] if r["status"] == "done"]
    assert {r["model"] for r in done} == {"ukis-csmask-4b-l2a"}
    assert len({r["worker"] for r in done}) == 2  # both workers segmented scenes
    # A mask of the batch is the mask of a single run, its cloud % the mask's.
    single = tmp_path / "single.tif"
    run = subprocess.run(
        ["cloudseg", "segment", str(scenes / "adwp-top.tif"), str(single), "--product-level",
         "L2A", "-q"], capture_output=True, text=True, env=venv_env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    with rasterio.open(single) as a, rasterio.open(out / "adwp-top.tif") as b:
        mask = b.read(1)
        np.testing.assert_array_equal(a.read(1), mask)
    valid = mask != 255
    assert by_scene["adwp-top"]["cloud_percent"] == pytest.approx(
        100 * (mask[valid] == 1).mean(), abs=0.01
    )
    # One STAC Item per done scene, read back by pystac, eo:cloud_cover the record's.
    import pystac

    for record in done:
        item = pystac.Item.from_file(str(out / f"{record['scene']}.stac.json"))
        assert item.properties["eo:cloud_cover"] == record["cloud_percent"]
        assert item.assets["mask"].get_absolute_href() == str(out / f"{record['scene']}.tif")
    linked = pystac.Collection.from_file(str(out / "collection.json")).get_items()
    assert sorted(i.id for i in linked) == sorted(r["scene"] for r in done)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tif")}

    again = json.loads(_run(venv_env, scenes, "--out", out, "--workers", "2").stdout)
    assert again["counts"] == {"skipped": 10, "failed": 1}
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tif")} == stamps  # untouched
    # Other settings make other masks: nothing is skipped.
    other = json.loads(
        _run(venv_env, scenes / "adwp-top.tif", "--out", out, "--resolution", "preview").stdout
    )
    assert other["counts"] == {"done": 1}


def test_inputs_from_a_list_a_pattern_and_a_stac_item_collection(scenes, tmp_path):
    from cloudseg.backend.batch import find_scenes

    listing = tmp_path / "scenes.txt"
    listing.write_text(f"# two scenes\n{scenes / 'adwp-top.tif'}\n\n{scenes / 'adwu-top.tif'}\n")
    assert [s.scene for s in find_scenes([str(listing)], tmp_path)] == ["adwp-top", "adwu-top"]
    found = find_scenes([str(scenes / "*-bottom.tif")], tmp_path)
    assert len(found) == 5 and all(s.scene.endswith("-bottom") for s in found)
    collection = {
        "type": "FeatureCollection",
        "features": [{"type": "Feature", "id": "item-a", "assets": {
            "image": {"href": str(scenes / "adwp-top.tif"), "roles": ["data"]}}}],
    }  # fmt: skip
    (tmp_path / "items.json").write_text(json.dumps(collection))
    (tmp_path / "bad.json").write_text(json.dumps({"features": [{"id": "x"}]}))
    with pytest.raises(CloudsegError, match="not a STAC Item or ItemCollection"):
        find_scenes([str(tmp_path / "bad.json")], tmp_path)
    with pytest.raises(CloudsegError, match="no such file, folder or pattern"):
        find_scenes([str(tmp_path / "missing")], tmp_path)
    assert find_scenes([str(tmp_path / "items.json")], tmp_path)[0].scene == "item-a"


@pytest.mark.slow
def test_band_assets_become_one_scene_that_segments(real_data, tmp_path):
    from cloudseg.backend.batch import find_scenes, segment_batch

    chip = real_data / "oncloudn_l2a" / "adwp"
    item = {
        "type": "Feature",
        "id": "adwp",
        "assets": {b: {"href": str(chip / f"{b}.tif")} for b in BANDS},
    }
    (tmp_path / "item.json").write_text(json.dumps(item))
    (scene,) = find_scenes([str(tmp_path / "item.json")], tmp_path)
    assert scene.scene == "adwp" and [band for band, _ in scene.bands] == list(BANDS)
    result = segment_batch([str(tmp_path / "item.json")], str(tmp_path / "out"),
                           {"product_level": "L2A"}, workers=1)  # fmt: skip
    assert result.counts() == {"done": 1}
    with rasterio.open(tmp_path / "out" / "adwp.tif") as ds:
        assert (ds.width, ds.height) == (512, 512)


@pytest.mark.slow
def test_inputs_and_outputs_on_s3(scenes, s3_server, s3_bucket, tmp_path):
    import boto3

    from cloudseg.backend.batch import segment_batch

    endpoint, bucket = s3_server["endpoint"], s3_bucket
    client = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=s3_server["access_key"],
        aws_secret_access_key=s3_server["secret_key"], region_name="us-east-1",
    )  # fmt: skip
    for name in ("adwp-top.tif", "adwu-top.tif"):
        client.upload_file(str(scenes / name), bucket, f"in/{name}")
    result = segment_batch([f"s3://{bucket}/in/"], f"s3://{bucket}/out", {"product_level": "L2A"},
                           workers=1, endpoint_url=endpoint)  # fmt: skip
    assert result.counts() == {"done": 2}
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"]}
    assert keys == {"out/manifest.json", "out/collection.json", "out/adwp-top.tif",
                    "out/adwp-top.json", "out/adwp-top.stac.json", "out/adwu-top.tif",
                    "out/adwu-top.json", "out/adwu-top.stac.json"}  # fmt: skip
    again = segment_batch([f"s3://{bucket}/in/"], f"s3://{bucket}/out", {"product_level": "L2A"},
                          workers=1, endpoint_url=endpoint)  # fmt: skip
    assert again.counts() == {"skipped": 2}


def test_an_output_folder_holding_an_input_is_refused(scenes, tmp_path):
    from cloudseg.backend.batch import segment_batch
    from cloudseg.backend.errors import InputError

    with pytest.raises(InputError, match="would replace its input"):
        segment_batch([str(scenes / "adwp-top.tif")], str(scenes), {"product_level": "L2A"})


@pytest.mark.slow
def test_an_existing_cluster_runs_the_batch_by_its_address_or_scheduler_file(scenes, tmp_path):
    from distributed import LocalCluster

    from cloudseg.backend.batch import segment_batch

    # The scheduler writes its file as `dask scheduler --scheduler-file` does, at start
    # (Client.write_scheduler_file would serialize live metrics, which may hold tuple keys).
    scheduler_file = tmp_path / "scheduler.json"
    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        scheduler_kwargs={"scheduler_file": str(scheduler_file)},
    ) as cluster:
        by_address = segment_batch(
            [str(scenes / "adwp-top.tif")],
            str(tmp_path / "a"),
            {"product_level": "L2A"},
            scheduler=cluster.scheduler_address,
        )
        assert by_address.counts() == {"done": 1} and by_address.workers == 1
        assert scheduler_file.is_file()
        by_file = segment_batch(
            [str(scenes / "adwp-top.tif")],
            str(tmp_path / "a"),
            {"product_level": "L2A"},
            scheduler=str(scheduler_file),
        )
        assert by_file.counts() == {"skipped": 1}
    assert (tmp_path / "a" / "adwp-top.tif").is_file()


def test_workers_share_the_cores_and_each_gpu_takes_one_scene_at_a_time():
    from cloudseg.backend.batch import machine_workers, worker_environments

    assert machine_workers(None, cores=16) == (4, 4)  # one worker per 4 cores
    assert machine_workers(None, cores=2) == (1, 2)
    assert machine_workers(None, cores=16, gpus=2) == (2, 8)  # one worker per GPU
    assert machine_workers(3, cores=16, gpus=2) == (3, 5)
    envs = worker_environments(3, 5, gpus=2)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1", "0"]
    assert all(e["CLOUDSEG_THREADS"] == "5" for e in envs)
    assert "CUDA_VISIBLE_DEVICES" not in worker_environments(2, 1, gpus=0)[0]


def test_a_memory_budget_does_not_change_the_settings_key_but_a_threshold_does():
    """Column blocks give the same masks: a re-run with another budget resumes."""
    from cloudseg.backend.batch import settings_key

    base = {"resolution": "native"}
    assert settings_key(base | {"max_memory_mib": 900.0}, "m") == settings_key(base, "m")
    assert settings_key(base | {"cloud_threshold": 0.3}, "m") != settings_key(base, "m")

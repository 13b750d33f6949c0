"""Ingestion of real labeled data into Zarr + STAC, locally and on a real S3 endpoint."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from cloudseg.backend.errors import InputError
from cloudseg.backend.store.dataset import open_dataset
from cloudseg.backend.store.ingest import ingest
from cloudseg.backend.store.storage import StorageError

CLOUDSEN12 = "cloudsen12_figures"
UNLABELED = {
    f"ROI_4683-{level}" for level in ("almost-clear", "cloudy", "low-cloudy", "mid-cloudy")
}


def expected_cloudsen12(real_data: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each labeled patch's image and class mask, read straight from the source files."""
    out = {}
    root = real_data / CLOUDSEN12
    for image_path in sorted(root.rglob("S2L1C.tif")):
        folder = image_path.parent
        label = next(
            (folder / n for n in ("manual_hq.tif", "manual_sc.tif") if (folder / n).exists()), None
        )
        if label is None:
            continue
        with rasterio.open(image_path) as ds:
            image = ds.read()
        with rasterio.open(label) as ds:
            raw = ds.read(1)
            nodata = ds.nodata
        mask = np.where((raw == nodata) | np.isin(raw, [4, 5, 6]), 255, raw).astype(np.uint8)
        out["-".join(folder.relative_to(root).parts)] = (image, mask)
    return out


def assert_store_equals_source(store, expected):
    ds = open_dataset(store, env_file=None)
    assert ds.scenes() == sorted(expected)
    for scene, (image, mask) in expected.items():
        got_image, got_mask = ds.read(scene)
        assert got_image.dtype == image.dtype
        np.testing.assert_array_equal(got_image, image)
        np.testing.assert_array_equal(got_mask, mask)
    return ds


@pytest.mark.slow
def test_real_cloudsen12_patches_round_trip_exactly_with_stac(real_data, tmp_path):
    store = tmp_path / "store"
    result = ingest(real_data / CLOUDSEN12, store, env_file=None)
    assert result.layout == "cloudsen12"
    assert {name for name, _ in result.failed} == UNLABELED
    assert all("unlabeled" in reason for _, reason in result.failed)
    expected = expected_cloudsen12(real_data)
    assert len(expected) == 11 and sorted(result.ingested) == sorted(expected)
    ds = assert_store_equals_source(store, expected)

    collection = json.loads((store / "stac/collection.json").read_text())
    assert [b["name"] for b in collection["summaries"]["eo:bands"]] == ["B02", "B03", "B04"]
    assert collection["cloudseg:scheme"]["classes"][3]["name"] == "cloud shadow"
    assert sorted(link["href"] for link in collection["links"] if link["rel"] == "item") == [
        f"items/{s}.json" for s in sorted(expected)
    ]
    item = ds.item("ROI_1746-high-cloudy")
    assert item.properties["proj:code"] == "EPSG:32643" and item.properties["proj:shape"] == [
        509,
        509,
    ]
    assert item.properties["cloudsen12:label_type"] == "manual_hq"
    assert -180 < item.bbox[0] < item.bbox[2] < 180
    assert (store / item.assets["image"].href.replace("../../", "")).is_dir()
    image, mask = ds.read("ROI_1746-high-cloudy", window=(100, 200, 256, 256))
    full_image, full_mask = expected["ROI_1746-high-cloudy"]
    np.testing.assert_array_equal(image, full_image[:, 100:356, 200:456])
    np.testing.assert_array_equal(mask, full_mask[100:356, 200:456])
    with pytest.raises(InputError, match="outside scene"):
        ds.read("ROI_1746-high-cloudy", window=(400, 0, 256, 256))

    report = json.loads((store / "report/report.json").read_text())
    assert report["scenes"] == 11
    labeled = sum(int((m != 255).sum()) for _, m in expected.values())
    assert sum(v for k, v in report["class_pixels"].items() if k != "ignore") == labeled
    for png in ("class_balance", "cloud_fraction", "band_means", "scenes_by_month", "places"):
        assert (store / f"report/{png}.png").read_bytes()[:4] == b"\x89PNG"

    again = ingest(real_data / CLOUDSEN12, store, env_file=None)
    assert again.ingested == [] and sorted(again.skipped) == sorted(expected)


@pytest.mark.slow
def test_s3_endpoint_round_trip_and_rerun(real_data, s3_bucket, s3_server):
    store = f"s3://{s3_bucket}/clouds"
    result = ingest(real_data / CLOUDSEN12, store, env_file=None)
    assert len(result.ingested) == 11 and result.store == store
    assert_store_equals_source(store, expected_cloudsen12(real_data))
    again = ingest(real_data / CLOUDSEN12, store, env_file=None)
    assert again.ingested == [] and len(again.skipped) == 11


@pytest.mark.slow
def test_s3_wrong_credentials_or_bucket_fail_at_once_without_secrets(
    real_data, s3_bucket, s3_server, monkeypatch, tmp_path
):
    monkeypatch.setenv("MINIO_SECRET_KEY", "not-the-secret-123")
    with pytest.raises(StorageError, match="refused the credentials") as refused:
        ingest(real_data / CLOUDSEN12, f"s3://{s3_bucket}/x", env_file=None)
    assert "not-the-secret-123" not in str(refused.value)
    assert s3_server["access_key"] not in str(refused.value)
    monkeypatch.setenv("MINIO_SECRET_KEY", s3_server["secret_key"])
    with pytest.raises(StorageError, match="bucket no-such-bucket does not exist"):
        ingest(real_data / CLOUDSEN12, "s3://no-such-bucket/x", env_file=None)

    env_file = tmp_path / ".env"  # the same settings from a .env file
    env_file.write_text(
        f"MINIO_ENDPOINT={s3_server['endpoint']}\nMINIO_ACCESS_KEY={s3_server['access_key']}\n"
        f"MINIO_SECRET_KEY={s3_server['secret_key']}\nS3_BUCKET_NAME={s3_bucket}\n"
    )
    for variable in ("MINIO_ENDPOINT", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"):
        monkeypatch.delenv(variable)
    result = ingest(real_data / CLOUDSEN12, "s3:///from-env", env_file=env_file, report=False)
    assert result.store == f"s3://{s3_bucket}/from-env" and len(result.ingested) == 11


def store_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.slow
def test_killed_ingestion_resumes_to_the_same_store(real_data, tmp_path, venv_env):
    clean, resumed = tmp_path / "clean", tmp_path / "resumed"
    ingest(real_data / CLOUDSEN12, clean, env_file=None)
    command = [
        sys.executable,
        "-m",
        "cloudseg.backend.cli",
        "ingest",
        str(real_data / CLOUDSEN12),
        str(resumed),
        "-q",
    ]  # no .env in tmp_path: no S3 settings are read
    process = subprocess.Popen(command, env=venv_env, cwd=tmp_path)
    items = resumed / "stac" / "items"
    deadline = time.monotonic() + 60
    while not (items.is_dir() and len(list(items.glob("*.json"))) >= 3):
        assert process.poll() is None, "ingestion ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    partial = len(list(items.glob("*.json")))
    assert 3 <= partial < 11 and not (resumed / "stac/collection.json").exists()
    assert subprocess.run(command, env=venv_env, cwd=tmp_path).returncode == 0
    assert store_files(resumed) == store_files(clean)


def write_tif(path: Path, data: np.ndarray, transform=None, nodata=None) -> Path:
    from rasterio.transform import from_origin

    data = data if data.ndim == 3 else data[None]
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype,
        crs="EPSG:32643",
        transform=transform or from_origin(300000, 4000000, 10, 10),
        nodata=nodata,
    ) as ds:
        ds.write(data)
    return path


def test_bad_scenes_are_reported_by_name_and_the_good_ones_ingested(real_data, tmp_path):
    from rasterio.transform import from_origin

    expected = expected_cloudsen12(real_data)
    image, mask = expected["ROI_1746-high-cloudy"]
    source = tmp_path / "pairs"
    (source / "images").mkdir(parents=True)
    (source / "masks").mkdir()
    (source / "data.json").write_text(
        json.dumps(
            {
                "bands": ["B02", "B03", "B04"],
                "classes": ["clear", "thick cloud", "thin cloud", "cloud shadow"],
            }
        )
    )
    for name in ("good", "size", "grid", "values", "nans"):
        write_tif(source / "images" / f"{name}.tif", image)
    write_tif(source / "masks/good.tif", mask, nodata=255)
    write_tif(source / "masks/size.tif", mask[:500], nodata=255)
    write_tif(source / "masks/grid.tif", mask, transform=from_origin(300100, 4000000, 10, 10))
    write_tif(
        source / "masks/values.tif", np.where(mask == 1, 9, mask).astype(np.uint8), nodata=255
    )
    nan_image = image.copy()
    nan_image[0, 5, 5] = np.nan
    write_tif(source / "images/nans.tif", nan_image)
    write_tif(source / "masks/nans.tif", mask, nodata=255)
    (source / "images/broken.tif").write_bytes(b"not a tiff")
    write_tif(source / "masks/broken.tif", mask, nodata=255)
    outside = write_tif(tmp_path / "outside.tif", image)
    (source / "images/escape.tif").symlink_to(outside)
    write_tif(source / "masks/escape.tif", mask, nodata=255)
    write_tif(source / "images/lonely.tif", image)

    result = ingest(source, tmp_path / "store", env_file=None)
    assert result.layout == "pairs" and result.ingested == ["good"]
    reasons = dict(result.failed)
    assert "509 x 509 but the mask is 500 x 509" in reasons["size"]
    assert "different grids" in reasons["grid"]
    assert "unknown mask value(s) [9]" in reasons["values"]
    assert "NaN" in reasons["nans"]
    assert "unreadable" in reasons["broken"]
    assert "escapes the source folder" in reasons["escape"]
    assert "no mask" in reasons["lonely"]
    assert_store_equals_source(tmp_path / "store", {"good": (image, mask)})


def test_npz_chips_with_a_mapped_class_scheme(real_data, tmp_path):
    source = tmp_path / "npz"
    source.mkdir()
    for name in ("landsat5", "landsat7"):
        shutil.copy(real_data / "ukis_landsat" / f"{name}.npz", source)
    (source / "data.json").write_text(
        json.dumps(
            {
                "bands": ["blue", "green", "red", "nir", "swir16", "swir22"],
                "classes": ["clear", "cloud", "cloud shadow"],
                "mask_values": {"0": 2, "1": 0, "2": 0, "3": 0, "4": 1},
            }
        )
    )
    result = ingest(source, tmp_path / "store", env_file=None, report=False)
    assert result.layout == "npz" and result.ingested == ["landsat5", "landsat7"]
    ds = open_dataset(tmp_path / "store", env_file=None)
    chip = np.load(real_data / "ukis_landsat/landsat5.npz")
    image, mask = ds.read("landsat5")
    np.testing.assert_array_equal(image, np.moveaxis(chip["img"], -1, 0))
    lookup = np.array([2, 0, 0, 0, 1], dtype=np.uint8)
    np.testing.assert_array_equal(mask, lookup[chip["msk"][..., 0]])
    assert ds.item("landsat5").geometry is None  # not georeferenced


def test_more_scenes_join_a_store_of_the_same_bands_and_classes_mapped_otherwise(
    real_data, tmp_path
):
    """A second source may map its raw masks differently: the stored classes are the same."""
    scheme = {
        "bands": ["blue", "green", "red", "nir", "swir16", "swir22"],
        "classes": ["clear", "cloud", "cloud shadow"],
    }
    chip = np.load(real_data / "ukis_landsat/landsat5.npz")
    classes = np.array([2, 0, 0, 0, 1], dtype=np.uint8)[chip["msk"][..., 0]]
    first, second, other = tmp_path / "first", tmp_path / "second", tmp_path / "other"
    for folder, data in (
        (first, scheme | {"mask_values": {"0": 2, "1": 0, "2": 0, "3": 0, "4": 1}}),
        (second, scheme),  # masks hold the class values themselves
        (other, scheme | {"classes": ["clear", "cloud", "shadow"]}),
    ):
        for sub in ("Scenes", "Masks"):
            (folder / sub).mkdir(parents=True)
        (folder / "data.json").write_text(json.dumps(data))
    np.save(first / "Scenes/s1.npy", chip["img"])
    np.save(first / "Masks/s1.npy", chip["msk"][..., 0])
    for folder in (second, other):
        np.save(folder / "Scenes/s2.npy", chip["img"])
        np.save(folder / "Masks/s2.npy", classes)
    store = tmp_path / "store"
    ingest(first, store, name="landsat-clouds", env_file=None, report=False)
    result = ingest(second, store, name="landsat-clouds", env_file=None, report=False)
    assert result.ingested == ["s2"]
    ds = open_dataset(store, env_file=None)
    np.testing.assert_array_equal(ds.read("s1")[1], ds.read("s2")[1])
    assert ds.scheme.mask_values == {0: 2, 1: 0, 2: 0, 3: 0, 4: 1}  # the store's, kept
    with pytest.raises(InputError, match="other bands or classes"):  # other class names
        ingest(other, store, name="landsat-clouds", env_file=None, report=False)


def test_raw_layout_with_npy_one_hot_masks_and_metadata(real_data, tmp_path):
    source = tmp_path / "raw_dataset"
    for folder in ("Scenes", "Masks", "Metadata"):
        (source / folder).mkdir(parents=True)
    chip = np.load(real_data / "ukis_landsat/landsat7.npz")
    classes = np.array([2, 0, 0, 0, 1], dtype=np.uint8)[chip["msk"][..., 0]]
    np.save(source / "Scenes/s1.npy", chip["img"])  # (rows, cols, bands)
    np.save(source / "Masks/s1.npy", np.eye(3, dtype=bool)[classes])  # one-hot (rows, cols, 3)
    (source / "Metadata/s1.json").write_text(
        json.dumps({"datetime": "2001-07-04T10:30:00Z", "sensor": "ETM+"})
    )
    (source / "data.json").write_text(
        json.dumps(
            {
                "bands": ["blue", "green", "red", "nir", "swir16", "swir22"],
                "classes": ["clear", "cloud", "shadow"],
            }
        )
    )
    result = ingest(source, tmp_path / "store", env_file=None)
    assert result.layout == "raw" and result.ingested == ["s1"]
    ds = open_dataset(tmp_path / "store", env_file=None)
    image, mask = ds.read("s1")
    np.testing.assert_array_equal(image, np.moveaxis(chip["img"], -1, 0))
    np.testing.assert_array_equal(mask, classes)
    item = ds.item("s1")
    assert item.datetime.year == 2001 and item.properties["sensor"] == "ETM+"
    report = json.loads((tmp_path / "store/report/report.json").read_text())
    assert report["scenes_by_month"] == {"2001-07": 1}


def test_unknown_layout_and_missing_scheme_are_clear(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="unknown layout"):
        ingest(tmp_path / "empty", tmp_path / "store", env_file=None)
    (tmp_path / "pairs/images").mkdir(parents=True)
    (tmp_path / "pairs/masks").mkdir()
    with pytest.raises(InputError, match=r"no data\.json"):
        ingest(tmp_path / "pairs", tmp_path / "store", env_file=None)
    assert not (tmp_path / "store").exists()


def test_store_items_of_any_grid_and_date_come_from_the_stac_module():
    """``store_item``: footprint and ``proj`` from the grid, an open span for no date."""
    import datetime as dt

    import pystac
    from rasterio.crs import CRS

    from cloudseg.backend.inference.stac_item import OPEN_END, SENTINEL2_START, store_item

    lcc = CRS.from_proj4(
        "+proj=lcc +lat_1=33 +lat_2=45 +lat_0=39 +lon_0=-96.5 +ellps=GRS80 +units=m +no_defs"
    ).to_wkt()
    common = {
        "bands": ["B02", "B03"], "image_href": "../../zarr/s/image", "image_dtype": "uint16",
        "mask_href": "../../zarr/s/mask", "image_chunks": [2, 256, 256],
    }  # fmt: skip
    when = dt.datetime(2020, 4, 29, 8, 20, 47, tzinfo=dt.timezone.utc)
    utm = store_item(
        "utm", shape=(100, 200), crs_wkt=CRS.from_epsg(32643).to_wkt(),
        transform=(10, 0, 300000, 0, -10, 4000000), datetime=when,
        properties={"sensor": "MSI"}, **common,
    )  # fmt: skip
    west, south, east, north = utm["bbox"]
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    np.testing.assert_allclose(utm["geometry"]["coordinates"][0], ring, atol=1e-7)
    assert utm["properties"]["proj:code"] == "EPSG:32643"
    assert utm["properties"]["proj:shape"] == [100, 200]
    assert utm["properties"]["datetime"] == "2020-04-29T08:20:47Z"
    assert "start_datetime" not in utm["properties"] and utm["properties"]["sensor"] == "MSI"
    assert utm["assets"]["image"]["type"] == "application/vnd+zarr"
    assert [b["name"] for b in utm["assets"]["image"]["eo:bands"]] == ["B02", "B03"]
    assert utm["assets"]["mask"]["roles"] == ["labels"]

    custom = store_item(
        "lcc", shape=(100, 200), crs_wkt=lcc, transform=(20, 0, 5e5, 0, -20, 3e5),
        datetime=None, properties={}, **common,
    )  # fmt: skip
    assert custom["properties"]["proj:wkt2"] == lcc and custom["properties"]["proj:code"] is None
    assert custom["properties"]["start_datetime"] == SENTINEL2_START.isoformat()
    assert custom["properties"]["end_datetime"] == OPEN_END.isoformat()
    assert custom["properties"]["cloudseg:datetime_unknown"] is True

    plain = store_item(
        "plain", shape=(100, 200), crs_wkt=None, transform=None, datetime=None,
        properties={}, **common,
    )  # fmt: skip
    assert plain["geometry"] is None and "bbox" not in plain
    assert "proj:transform" not in plain["properties"]
    for data in (utm, custom, plain):
        assert pystac.Item.from_dict(data).id == data["id"]

"""Masks leave as STAC: Items of segment runs and batches, read back with pystac, on real chips."""

from __future__ import annotations

import csv
import datetime as dt
import functools
import hashlib
import http.server
import io
import json
import re
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from rasterio.warp import transform_bounds

from cloudseg.backend._version import __version__
from cloudseg.backend.errors import CancelledError, OutputConflictError, OutputExistsError
from cloudseg.backend.inference.segment import SegmentOptions, load_classes, segment
from cloudseg.backend.models.registry import load_model

pytestmark = pytest.mark.real_data

BANDS = ("B02", "B03", "B04", "B08")
MODEL = "ukis-csmask-4b-l2a"


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def chip_time(real_data, chip):
    """The chip's acquisition time as the On Cloud N metadata gives it."""
    with (real_data / "oncloudn_l2a" / "test_metadata.csv").open() as handle:
        rows = {row["chip_id"]: row["datetime"] for row in csv.DictReader(handle)}
    return dt.datetime.fromisoformat(rows[chip].replace("Z", "+00:00"))


def mask_cover(mask_path):
    """Cloud and shadow % of the data pixels, counted from the mask itself."""
    with rasterio.open(mask_path) as ds:
        mask = ds.read(1)
    data = mask[mask != 255]
    return 100 * (data == 1).mean(), 100 * (data == 2).mean()


def check_core(stac_object):
    """Valid against the STAC core schema (pystac's own copy: no network needed)."""
    from pystac.validation import JsonSchemaSTACValidator

    data = stac_object.to_dict()
    JsonSchemaSTACValidator().validate_core(
        data, stac_object.STAC_OBJECT_TYPE, data["stac_version"], stac_object.get_self_href()
    )


def check_assets(item):
    """Every asset's file exists, with the size and SHA2-256 multihash the Item records."""
    for name, asset in item.assets.items():
        path = asset.get_absolute_href()
        assert path and pystac.utils.is_absolute_href(path), name
        file = Path(path)
        assert file.is_file(), (name, path)
        assert asset.extra_fields["file:size"] == file.stat().st_size, name
        assert asset.extra_fields["file:checksum"] == "1220" + sha256(file), name


@pytest.fixture(scope="module")
def full_run(band_folder, tmp_path_factory):
    """One run of the chip with every output and its STAC Item."""
    out = tmp_path_factory.mktemp("item")
    options = SegmentOptions(
        product_level="L2A", probabilities=out / "p.tif", valid=out / "valid.tif",
        polygons=out / "clouds.gpkg", stats=out / "stats.json", stac_item=out / "mask.json",
    )  # fmt: skip
    result = segment(band_folder, out / "mask.tif", options)
    return out, result


@pytest.mark.slow
def test_a_run_writes_an_item_pystac_reads_with_its_outputs_and_statistics(
    full_run, band_folder, real_data
):
    out, result = full_run
    item = pystac.Item.from_file(str(out / "mask.json"))
    assert item.id == "mask" and result.stac_item == out / "mask.json"
    check_core(item)
    assert set(item.assets) == {"mask", "probabilities", "valid", "polygons", "stats"}
    check_assets(item)
    assert item.assets["mask"].href == "./mask.tif"  # relative: the folder can move
    assert "data" in item.assets["mask"].roles and item.assets["valid"].roles == ["data-mask"]
    assert item.assets["mask"].media_type == pystac.MediaType.COG
    # eo:cloud_cover is the run's cloud %, and the mask's own share of cloud pixels.
    cloud, shadow = mask_cover(out / "mask.tif")
    assert item.properties["eo:cloud_cover"] == result.class_percent["cloud"]
    assert item.properties["eo:cloud_cover"] == pytest.approx(cloud, abs=0.001)
    assert item.properties["cloudseg:shadow_cover"] == pytest.approx(shadow, abs=0.001)
    assert item.properties["cloudseg:usable_percent"] == result.usable_percent
    stats = json.loads((out / "stats.json").read_text())
    assert item.properties["cloudseg:class_percent"] == stats["class_percent"]
    # Classes: those of the mask, with the run's counts; 255 is nodata.
    classes = item.assets["mask"].extra_fields["classification:classes"]
    written = load_classes(out / "mask.tif")
    assert [(c["value"], c["title"]) for c in classes[:-1]] == [
        (c["value"], c["name"]) for c in written
    ]
    assert [c["color_hint"] for c in classes[:-1]] == [c["color"][1:7].upper() for c in written]
    assert [c["count"] for c in classes[:-1]] == list(result.class_pixels.values())
    assert classes[-1]["value"] == 255 and classes[-1]["nodata"] is True
    # Where: the raster's footprint in WGS 84; when: the chip's acquisition time.
    with rasterio.open(out / "mask.tif") as ds:
        bounds = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
        assert item.properties["proj:shape"] == [ds.height, ds.width]
    assert item.bbox == pytest.approx(list(bounds), abs=1e-5)
    assert item.datetime == chip_time(real_data, "adwp")
    assert "TIFFTAG_DATETIME" in item.properties["cloudseg:datetime_from"]
    # How: cloudseg's version, the model and the accuracy its card measured.
    assert item.properties["processing:software"] == {"cloudseg": __version__}
    card = load_model(MODEL).card
    assert item.properties["cloudseg:model"] == MODEL == result.model
    assert item.properties["cloudseg:model_accuracy"] == card.headline()
    assert card.headline() in item.properties["processing:lineage"]
    assert item.get_links("derived_from") == []  # not read from an Item
    for extension in ("classification", "file", "eo", "processing", "projection", "raster"):
        assert any(f"/{extension}/" in uri for uri in item.stac_extensions), extension


@pytest.mark.slow
def test_the_command_line_writes_the_item_and_checks_it_as_an_output(
    band_folder, tmp_path, venv_env
):
    def run(*args):
        return subprocess.run(
            ["cloudseg", "segment", str(band_folder), *map(str, args), "--product-level", "L2A",
             "-q"], capture_output=True, text=True, env=venv_env, timeout=300,
        )  # fmt: skip

    done = run(tmp_path / "m.tif", "--stac-item", tmp_path / "m.json")
    assert done.returncode == 0, done.stderr
    assert f"STAC Item: {tmp_path / 'm.json'}" in done.stdout
    item = pystac.Item.from_file(str(tmp_path / "m.json"))
    check_assets(item)
    assert set(item.assets) == {"mask"}
    # The same rules as every output: no overwrite unless asked, not another output.
    again = run(tmp_path / "m2.tif", "--stac-item", tmp_path / "m.json")
    assert again.returncode != 0 and "m.json exists; pass --overwrite" in again.stderr
    clash = run(tmp_path / "m3.tif", "--stac-item", tmp_path / "s.json", "--stats",
                tmp_path / "s.json")  # fmt: skip
    assert clash.returncode != 0 and "--stac-item and --stats are the same file" in clash.stderr
    assert not (tmp_path / "m2.tif").exists() and not (tmp_path / "m3.tif").exists()


@pytest.mark.slow
def test_a_cancelled_run_leaves_no_item_and_the_earlier_one_as_it_was(band_folder, tmp_path):
    item_path = tmp_path / "m.json"
    item_path.write_text("earlier")
    staged = []

    def progress(percent, message):
        staged.append(percent >= 99.0)  # the COGs are staged: the next poll is the last

    options = SegmentOptions(product_level="L2A", stac_item=item_path, overwrite=True)
    with pytest.raises(CancelledError):
        segment(band_folder, tmp_path / "m.tif", options, progress, cancelled=lambda: any(staged))
    assert item_path.read_text() == "earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]  # no temporary left


def test_an_item_output_over_an_input_or_of_another_suffix_is_refused(band_folder, tmp_path):
    with pytest.raises(OutputConflictError, match=r"must end in \.json"):
        segment(band_folder, tmp_path / "m.tif",
                SegmentOptions(product_level="L2A", stac_item=tmp_path / "m.xml"))  # fmt: skip
    (tmp_path / "taken.json").write_text("{}")
    with pytest.raises(OutputExistsError):
        segment(band_folder, tmp_path / "m.tif",
                SegmentOptions(product_level="L2A", stac_item=tmp_path / "taken.json"))  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.json"]


@pytest.mark.slow
def test_a_safe_product_gives_the_item_its_sensing_time(band_folder, make_safe, tmp_path):
    safe = make_safe(band_folder, tmp_path)
    item_path = tmp_path / "m.json"
    segment(safe, tmp_path / "m.tif", SegmentOptions(stac_item=item_path))
    item = pystac.Item.from_file(str(item_path))
    assert item.datetime == dt.datetime(2020, 1, 1, 8, 0, 0, 24000, tzinfo=dt.timezone.utc)
    assert item.properties["cloudseg:datetime_from"].startswith("SAFE metadata")


# -- a STAC Item as input -------------------------------------------------------------------
def band_item(real_data, folder, chip="adwp", relative=True):
    """A STAC Item of a chip's band files (copied beside it: hrefs relative to the Item)."""
    source = real_data / "oncloudn_l2a" / chip
    if relative:
        for band in BANDS:
            shutil.copy2(source / f"{band}.tif", folder / f"{band}.tif")
    href = (lambda b: f"./{b}.tif") if relative else (lambda b: str(source / f"{b}.tif"))
    when = chip_time(real_data, chip).isoformat().replace("+00:00", "Z")
    item = {
        "type": "Feature", "stac_version": "1.0.0", "id": chip,
        "geometry": None, "properties": {"datetime": when}, "links": [],
        "assets": {b: {"href": href(b), "type": "image/tiff"} for b in BANDS},
    }  # fmt: skip
    path = folder / f"{chip}.json"
    path.write_text(json.dumps(item))
    return path


@pytest.mark.slow
def test_a_stac_item_input_segments_its_bands_and_its_item_derives_from_it(
    real_data, full_run, tmp_path
):
    source = tmp_path / "source"
    source.mkdir()
    item_in = band_item(real_data, source)
    out_item = tmp_path / "m.json"
    result = segment(item_in, tmp_path / "m.tif",
                     SegmentOptions(product_level="L2A", stac_item=out_item))  # fmt: skip
    with rasterio.open(tmp_path / "m.tif") as a, rasterio.open(full_run[0] / "mask.tif") as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))  # the mask of its band files
    item = pystac.Item.from_file(str(out_item))
    (link,) = item.get_links("derived_from")
    assert link.href == str(item_in) == result.source_item
    assert item.datetime == chip_time(real_data, "adwp")
    assert item.properties["cloudseg:datetime_from"] == "the source STAC Item adwp"
    check_assets(item)
    # Its band files are inputs: no output may replace one.
    with pytest.raises(OutputConflictError, match="is an input of this run"):
        segment(item_in, source / "B02.tif", SegmentOptions(product_level="L2A", overwrite=True))
    with pytest.raises(OutputConflictError, match="is an input of this run"):
        segment(item_in, tmp_path / "x.tif",
                SegmentOptions(product_level="L2A", stac_item=item_in, overwrite=True))  # fmt: skip
    # Also when the Item names another place as its own (a self link).
    data = json.loads(item_in.read_text())
    data["links"] = [{"rel": "self", "href": "https://example.invalid/items/adwp"}]
    item_in.write_text(json.dumps(data))
    with pytest.raises(OutputConflictError, match="is an input of this run"):
        segment(item_in, tmp_path / "x.tif",
                SegmentOptions(product_level="L2A", stac_item=item_in, overwrite=True))  # fmt: skip
    assert json.loads(item_in.read_text()) == data
    # The derived Item links to where the source Item says it lives.
    options = SegmentOptions(product_level="L2A", stac_item=tmp_path / "y.json")
    segment(item_in, tmp_path / "y.tif", options)
    linked = pystac.Item.from_file(str(tmp_path / "y.json")).get_links("derived_from")
    assert [link.href for link in linked] == ["https://example.invalid/items/adwp"]


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """A static file server that answers byte ranges, as object stores and CDNs do."""

    def send_head(self):
        ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        path = Path(self.translate_path(self.path))
        if not ranged or not path.is_file():
            return super().send_head()
        data = path.read_bytes()
        start = int(ranged[1])
        end = min(int(ranged[2] or len(data) - 1), len(data) - 1)
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(str(path)))
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        return io.BytesIO(data[start : end + 1])

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_a_stac_item_by_url_reads_its_assets_over_http(real_data, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    band_item(real_data, served, "akny").rename(served / "akny")  # as a STAC API names it
    handler = functools.partial(RangeHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/akny"
        options = SegmentOptions(product_level="L2A", stac_item=tmp_path / "m.json")
        result = segment(url, tmp_path / "m.tif", options)
    finally:
        server.shutdown()
        server.server_close()
    item = pystac.Item.from_file(str(tmp_path / "m.json"))
    assert item.get_links("derived_from")[0].href == url == result.source_item
    assert item.datetime == chip_time(real_data, "akny")
    assert item.properties["eo:cloud_cover"] == pytest.approx(
        mask_cover(tmp_path / "m.tif")[0], abs=0.001
    )


# -- segment-batch: an Item per scene and a collection ---------------------------------------
@pytest.fixture
def three_scenes(batch_scenes, tmp_path):
    """Three real scenes (halves of On Cloud N chips) and the broken one, in a folder."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("adwp-top.tif", "adwu-top.tif", "akny-bottom.tif", "broken.tif"):
        shutil.copy2(batch_scenes / name, folder / name)
    return folder


def run_batch(inputs, out, **more):
    from cloudseg.backend.batch import segment_batch

    return segment_batch([str(i) for i in inputs], str(out), {"product_level": "L2A"},
                         workers=1, processes=False, **more)  # fmt: skip


def collection_items(out):
    """The collection's Items, read back through its links; and the collection."""
    collection = pystac.Collection.from_file(str(out / "collection.json"))
    return {i.id: i for i in collection.get_items()}, collection


@pytest.mark.slow
def test_a_batch_leaves_an_item_per_done_scene_and_a_collection_of_them(three_scenes, tmp_path):
    out = tmp_path / "out"
    result = run_batch([three_scenes], out)
    assert result.counts() == {"done": 3, "failed": 1}
    records = {r["scene"]: r for r in result.records}
    items, collection = collection_items(out)
    assert sorted(items) == ["adwp-top", "adwu-top", "akny-bottom"]  # not the broken one
    check_core(collection)
    assert not (out / "broken.stac.json").exists()
    for scene, item in items.items():
        alone = pystac.Item.from_file(str(out / f"{scene}.stac.json"))
        assert alone.properties == item.properties and alone.id == scene
        check_core(alone)
        check_assets(item)
        assert item.assets["mask"].get_absolute_href() == str(out / f"{scene}.tif")
        # eo:cloud_cover: the record's cloud %, and the mask's own share of cloud pixels.
        cloud, shadow = mask_cover(out / f"{scene}.tif")
        assert item.properties["eo:cloud_cover"] == records[scene]["cloud_percent"]
        assert item.properties["eo:cloud_cover"] == pytest.approx(cloud, abs=0.001)
        assert item.properties["cloudseg:shadow_cover"] == pytest.approx(shadow, abs=0.001)
        assert item.collection_id == collection.id == "out"
        assert item.get_collection().id == "out"
        west, south, east, north = collection.extent.spatial.bboxes[0]
        assert west <= item.bbox[0] and south <= item.bbox[1]
        assert east >= item.bbox[2] and north >= item.bbox[3]
    covers = [i.properties["eo:cloud_cover"] for i in items.values()]
    summary = collection.summaries.get_range("eo:cloud_cover")
    assert (summary.minimum, summary.maximum) == (min(covers), max(covers))


@pytest.mark.slow
def test_a_rerun_keeps_every_item_and_repairs_what_a_killed_run_left(three_scenes, tmp_path):
    out = tmp_path / "out"
    run_batch([three_scenes], out)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.stac.json")}
    again = run_batch([three_scenes], out)
    assert again.counts() == {"skipped": 3, "failed": 1}
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.stac.json")} == stamps
    assert sorted(collection_items(out)[0]) == ["adwp-top", "adwu-top", "akny-bottom"]
    # A run on one scene alone: the Items of the others stay in the collection.
    one = run_batch([three_scenes / "adwp-top.tif"], out)
    assert one.counts() == {"skipped": 1}
    assert sorted(collection_items(out)[0]) == ["adwp-top", "adwu-top", "akny-bottom"]
    # What a killed run leaves: a collection written before its last scenes finished,
    # a scene whose Item never came. The next run lists every done scene again.
    data = json.loads((out / "collection.json").read_text())
    data["links"] = [link for link in data["links"] if link.get("title") == "adwp-top"]
    (out / "collection.json").write_text(json.dumps(data))
    (out / "adwu-top.stac.json").unlink()
    repaired = run_batch([three_scenes], out)
    by_scene = {r["scene"]: r for r in repaired.records}
    assert by_scene["adwu-top"]["status"] == "done"
    assert by_scene["adwu-top"]["redone"] == "its STAC Item is missing"
    assert by_scene["akny-bottom"]["status"] == "skipped"
    items, _ = collection_items(out)
    assert sorted(items) == ["adwp-top", "adwu-top", "akny-bottom"]
    check_assets(items["adwu-top"])


@pytest.mark.slow
def test_batch_items_of_stac_inputs_derive_from_them(real_data, tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    item_in = band_item(real_data, source, "akny")
    out = tmp_path / "out"
    assert run_batch([item_in], out).counts() == {"done": 1}
    item = pystac.Item.from_file(str(out / "akny.stac.json"))
    assert item.get_links("derived_from")[0].href == str(item_in)
    assert item.datetime == chip_time(real_data, "akny")
    check_assets(item)


@pytest.mark.parametrize(
    ("name", "says"),
    [("collection", "collection.json"), ("adwp.stac", "STAC Item of the scene 'adwp'")],
)
def test_a_scene_named_like_the_batch_stac_files_is_refused(batch_scenes, tmp_path, name, says):
    from cloudseg.backend.errors import InputError

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy2(batch_scenes / "adwp-top.tif", folder / f"{name}.tif")
    with pytest.raises(InputError, match=re.escape(says)):
        run_batch([folder], tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_items_and_collection_on_s3(batch_scenes, s3_server, s3_bucket, tmp_path):
    import boto3

    endpoint = s3_server["endpoint"]
    client = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=s3_server["access_key"],
        aws_secret_access_key=s3_server["secret_key"], region_name="us-east-1",
    )  # fmt: skip
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("adwp-top.tif", "adwu-top.tif"):
        shutil.copy2(batch_scenes / name, folder / name)
    url = f"s3://{s3_bucket}/masks"
    assert run_batch([folder], url, endpoint_url=endpoint).counts() == {"done": 2}
    listed = client.list_objects_v2(Bucket=s3_bucket, Prefix="masks/")["Contents"]
    keys = {o["Key"]: o["Size"] for o in listed}
    assert {"masks/collection.json", "masks/adwp-top.stac.json", "masks/adwu-top.stac.json"} <= set(
        keys
    )

    def read(key):
        return client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()

    collection = pystac.Collection.from_dict(json.loads(read("masks/collection.json")))
    hrefs = sorted(link.href for link in collection.get_links("item"))
    assert hrefs == ["./adwp-top.stac.json", "./adwu-top.stac.json"]
    for scene in ("adwp-top", "adwu-top"):
        item = pystac.Item.from_dict(json.loads(read(f"masks/{scene}.stac.json")))
        mask = item.assets["mask"]
        assert mask.href == f"./{scene}.tif"  # relative: the prefix holds it
        data = read(f"masks/{scene}.tif")
        assert mask.extra_fields["file:size"] == len(data) == keys[f"masks/{scene}.tif"]
        assert mask.extra_fields["file:checksum"] == "1220" + hashlib.sha256(data).hexdigest()
    again = run_batch([folder], url, endpoint_url=endpoint)
    assert again.counts() == {"skipped": 2}


@pytest.mark.slow
def test_a_scene_without_georeferencing_gets_an_item_without_a_footprint(band_folder, tmp_path):
    from rasterio.transform import Affine

    from .conftest import stack_bands

    scene = stack_bands(band_folder, tmp_path / "plain.tif", list(BANDS), crs=None,
                        transform=Affine.identity())  # fmt: skip
    segment(
        scene,
        tmp_path / "m.tif",
        SegmentOptions(product_level="L2A", stac_item=tmp_path / "m.json"),
    )
    item = pystac.Item.from_file(str(tmp_path / "m.json"))
    assert item.geometry is None and item.bbox is None  # not rio-stac's whole world
    assert "not georeferenced" in item.properties["cloudseg:note"]
    assert item.properties["eo:cloud_cover"] == pytest.approx(
        mask_cover(tmp_path / "m.tif")[0], abs=0.001
    )
    check_core(item)
    check_assets(item)

"""The label loop from scripts: label a box from a raster or polygons, mark it, list boxes."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from cloudseg.backend.active.labels import label_box, labels_to_store
from cloudseg.backend.active.project import LabelProject
from cloudseg.backend.active.propose import propose
from cloudseg.backend.errors import InputError
from cloudseg.backend.store.dataset import open_dataset

MODEL = "ukis-csmask-4b-l1c"


@pytest.fixture
def s2(labeled_s2):
    return labeled_s2


def _project(s2, tmp_path, count=4):
    scene, doubt = s2
    project = tmp_path / "coast.gpkg"
    propose(doubt, project, box=64, count=count, scene=scene.image.stem)
    return project


def proposal_rows(project):
    return [p.to_dict() for p in LabelProject(project).read().proposals]


def read_proposals(project, transform):
    return [(p.box(transform), p) for p in LabelProject(project).read().proposals]


def _truth(scene, box):
    return scene.reference()[box.row : box.row + box.size, box.col : box.col + box.size]


def _stored(project, scene, store, box):
    labels_to_store(project, scene.image, store, context=0)
    _, labels = open_dataset(store).read(f"{scene.image.stem}-r{box.row}-c{box.col}-{box.size}")
    return labels


def _warped(source, target, crs):
    """``source`` reprojected to ``crs`` (nearest), as a user's file in another CRS."""
    import rasterio
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    with rasterio.open(source) as src:
        transform, width, height = calculate_default_transform(
            src.crs, crs, src.width, src.height, *src.bounds
        )
        profile = src.profile | {"crs": crs, "transform": transform}
        profile |= {"width": width, "height": height, "nodata": 255}
        with rasterio.open(target, "w", **profile) as dst:
            reproject(
                rasterio.band(src, 1),
                rasterio.band(dst, 1),
                resampling=Resampling.nearest,
                dst_nodata=255,
            )
    return target


@pytest.mark.slow
@pytest.mark.real_data
def test_a_box_labeled_from_the_truth_raster_stores_exactly_the_truth(s2, tmp_path):
    scene, _ = s2
    project = _project(s2, tmp_path)
    rows = proposal_rows(project)
    assert [r["status"] for r in rows] == ["todo"] * 4 and rows[0]["rank"] == 1
    fid = rows[0]["fid"]
    added = label_box(project, fid, scene.labels)
    assert added > 0
    (box, fields), *_ = read_proposals(project, _transform(scene))
    assert fields.status == "labeled" and fields.labeled_by and fields.labeled_at
    np.testing.assert_array_equal(
        _stored(project, scene, tmp_path / "store", box), _truth(scene, box)
    )
    # Labeling again from other labels replaces the first ones inside the box.
    clouds = _constant_like(scene.labels, tmp_path / "cloud.tif", 1)
    label_box(project, fid, clouds)
    assert (_stored(project, scene, tmp_path / "store2", box) == 1).all()


@pytest.mark.slow
@pytest.mark.real_data
def test_labels_in_another_crs_are_moved_onto_the_box(s2, tmp_path):
    """A raster and polygons in EPSG:4326 label the box as the UTM truth says."""
    import rasterio
    from rasterio.features import shapes

    scene, _ = s2
    project = _project(s2, tmp_path)
    fid = proposal_rows(project)[0]["fid"]
    box = read_proposals(project, _transform(scene))[0][0]
    degrees = _warped(scene.labels, tmp_path / "labels-4326.tif", "EPSG:4326")
    label_box(project, fid, degrees)
    moved = _stored(project, scene, tmp_path / "store", box)
    truth = _truth(scene, box)
    assert (moved == truth).mean() > 0.95  # nearest neighbour twice moves edge pixels only
    # Polygons in degrees: the truth's areas as GeoJSON in EPSG:4326.
    with rasterio.open(scene.labels) as ds:
        window_transform = ds.transform * rasterio.Affine.translation(box.col, box.row)
    from rasterio.warp import transform_geom

    features = [
        {
            "type": "Feature",
            "properties": {"class": int(value)},
            "geometry": transform_geom("EPSG:32632", "EPSG:4326", geometry),
        }
        for geometry, value in shapes(truth, transform=window_transform)
        if value != 0
    ]
    polygons = tmp_path / "labels.geojson"
    polygons.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    label_box(project, fid, polygons)  # the same box again, now from polygons
    from_polygons = _stored(project, scene, tmp_path / "store2", box)
    assert (from_polygons == truth).mean() > 0.97


@pytest.mark.real_data
def test_bad_label_sources_are_refused_with_one_line_and_add_nothing(s2, tmp_path):
    from osgeo import ogr

    scene, _ = s2
    project = _project(s2, tmp_path)
    fid = proposal_rows(project)[0]["fid"]
    sevens = _constant_like(scene.labels, tmp_path / "sevens.tif", 7)
    with pytest.raises(InputError, match=r"value\(s\) \[7\].*not the model's classes"):
        label_box(project, fid, sevens)
    with pytest.raises(InputError, match="no proposal 999"):
        label_box(project, 999, scene.labels)
    small = tmp_path / "corner.tif"
    _crop(scene.labels, small, 8)
    with pytest.raises(InputError, match="no class at"):
        label_box(project, fid, small)
    dataset = ogr.Open(str(project))
    assert (
        dataset.GetLayerByName("labels") is None
        or dataset.GetLayerByName("labels").GetFeatureCount() == 0
    )
    assert proposal_rows(project)[0]["status"] == "todo"


@pytest.mark.slow
@pytest.mark.real_data
def test_the_label_loop_from_the_command_line(s2, tmp_path, venv_env):
    scene, _ = s2
    project = _project(s2, tmp_path)

    def cloudseg(*args):
        return subprocess.run(
            ["cloudseg", *map(str, args)], capture_output=True, text=True, env=venv_env
        )

    listed = cloudseg("labels", "boxes", project, "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    first, second = rows[0]["fid"], rows[1]["fid"]
    added = cloudseg("labels", "add", project, "--box", first, "--from", scene.labels)
    assert added.returncode == 0, added.stderr
    assert "marked done" in added.stdout
    skipped = cloudseg("labels", "skip", project, "--box", second)
    assert skipped.returncode == 0, skipped.stderr
    statuses = {r["fid"]: r["status"] for r in proposal_rows(project)}
    assert statuses[first] == "labeled" and statuses[second] == "skipped"
    again = cloudseg("labels", "add", project, "--box", second, "--from", scene.labels)
    assert again.returncode == 1 and len(again.stderr.strip().splitlines()) == 1
    assert "skipped" in again.stderr
    back = cloudseg("labels", "todo", project, "--box", second)
    assert back.returncode == 0 and proposal_rows(project)[1]["status"] == "todo"
    text = cloudseg("labels", "boxes", project)
    assert "1 todo" not in text.stdout and "1 labeled" in text.stdout


def _transform(scene):
    import rasterio

    with rasterio.open(scene.image) as ds:
        return ds.transform


def _constant_like(source, target, value):
    import rasterio

    with rasterio.open(source) as src:
        profile = src.profile
        with rasterio.open(target, "w", **profile) as dst:
            dst.write(np.full((1, src.height, src.width), value, np.uint8))
    return target


def _crop(source, target, size):
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(source) as src:
        window = Window(0, 0, size, size)
        profile = src.profile | {
            "width": size,
            "height": size,
            "transform": src.window_transform(window),
        }
        with rasterio.open(target, "w", **profile) as dst:
            dst.write(src.read(window=window))


def test_a_project_of_an_earlier_version_keeps_its_rounds_and_gains_the_new_fields(tmp_path):
    """Rounds written before the judge read as adopted; the next round adds its fields."""
    from osgeo import ogr

    from cloudseg.backend.active.history import Round, current_model

    project = tmp_path / "old.gpkg"
    dataset = ogr.GetDriverByName("GPKG").CreateDataSource(str(project))
    layer = dataset.CreateLayer("rounds", None, ogr.wkbNone)
    old = {"round": 1, "model": "old-r1", "model_path": "/m/old-r1.pt"}
    old |= {"base_model": "base", "init_model": "base", "boxes": 3, "train_boxes": 2}
    old |= {"held_out_boxes": 1, "iou_before": '{"mean": 0.5}', "iou_after": '{"mean": 0.6}'}
    old |= {"held_out": '["s-r0-c0-64"]'}
    for name, value in old.items():
        kind = ogr.OFTInteger if isinstance(value, int) else ogr.OFTString
        layer.CreateField(ogr.FieldDefn(name, kind))
    feature = ogr.Feature(layer.GetLayerDefn())
    for name, value in old.items():
        feature.SetField(name, value)
    layer.CreateFeature(feature)
    dataset = None
    (first,) = LabelProject(project).rounds()
    assert first.adopted and first.trained == [] and first.held_out == ["s-r0-c0-64"]
    assert current_model([first], "base") == "old-r1"
    LabelProject(project).append_round(
        Round(2, "old-r2", "", "base", "old-r1", 5, 3, 2, adopted=False)
    )
    rounds = LabelProject(project).rounds()
    assert [r.adopted for r in rounds] == [True, False]
    assert current_model(rounds, "base") == "old-r1"  # the version kept aside is not current
    assert current_model([], "proposer") == "proposer"

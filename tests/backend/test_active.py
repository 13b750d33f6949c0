"""Active learning, the backend: doubt, proposals, and the label project's layer."""

from __future__ import annotations

import datetime as dt
import json
import subprocess

import numpy as np
import pytest
from osgeo import ogr

from cloudseg.backend.active.propose import Box, propose, rank_boxes
from cloudseg.backend.errors import InputError
from cloudseg.backend.inference.segment import SegmentOptions, segment


def test_boxes_are_ranked_by_doubt_never_overlap_and_avoid_labeled_ones():
    doubt = np.zeros((256, 256), np.float32)
    doubt[10:60, 10:60] = 90  # the most doubtful place
    doubt[150:200, 150:200] = 60
    doubt[0:64, 192:256] = np.nan  # no data: never proposed
    proposals = rank_boxes(doubt, 64, 6)
    assert [p.rank for p in proposals] == list(range(1, len(proposals) + 1))
    scores = [p.score for p in proposals]
    assert scores == sorted(scores, reverse=True)
    first = proposals[0].box
    assert first.overlaps(Box(10, 10, 50)) and first.overlaps(Box(40, 40, 1))
    assert proposals[1].box.overlaps(Box(150, 150, 50))
    for i, a in enumerate(proposals):
        assert not any(a.box.overlaps(b.box) for b in proposals[i + 1 :])
    nodata = np.isnan(doubt)
    for p in proposals:
        b = p.box
        assert nodata[b.row : b.row + 64, b.col : b.col + 64].mean() <= 0.5
    # A box labeled there already is never proposed again.
    again = rank_boxes(doubt, 64, 6, avoid=[first])
    assert not any(p.box.overlaps(first) for p in again)
    with pytest.raises(InputError, match="smaller than one"):
        rank_boxes(doubt[:50, :50], 64, 3)


@pytest.mark.slow
@pytest.mark.real_data
def test_proposals_of_a_real_chip_go_into_the_label_project(multiband, tmp_path, venv_env):
    doubt = tmp_path / "doubt.tif"
    segment(
        multiband, tmp_path / "mask.tif", SegmentOptions(product_level="L2A", uncertainty=doubt)
    )
    project = tmp_path / "labels.gpkg"
    first = propose(doubt, project, box=64, count=5)  # the scene the raster records
    assert len(first) == 5
    rows = [(f["rank"], f["status"], f["scene"], f["model"]) for f in _features(project)]
    assert rows == [(i, "todo", multiband.stem, "ukis-csmask-4b-l2a") for i in range(1, 6)]
    # The analyst labels the first box; the next round keeps it and proposes elsewhere.
    dataset = ogr.Open(str(project), 1)
    layer = dataset.GetLayerByName("proposals")
    feature = next(f for f in layer if f["rank"] == 1)
    feature.SetField("status", "labeled")
    layer.SetFeature(feature)
    dataset = None
    second = propose(doubt, project, box=64, count=5, scene=multiband)
    assert not any(p.box.overlaps(first[0].box) for p in second)
    statuses = sorted(f["status"] for f in _features(project))
    assert statuses == ["labeled"] + ["todo"] * 5  # the old todo ones were replaced
    # The command line, and its one-line refusal of a raster that is not an uncertainty.
    command = ["cloudseg", "propose", str(doubt), str(tmp_path / "b.gpkg")]
    run = subprocess.run(
        [*command, "--box", "64", "--count", "3", "--json"],
        capture_output=True,
        text=True,
        env=venv_env,
    )
    assert run.returncode == 0, run.stderr
    assert [p["rank"] for p in json.loads(run.stdout)] == [1, 2, 3]
    bad = subprocess.run(
        ["cloudseg", "propose", str(tmp_path / "mask.tif"), str(tmp_path / "c.gpkg")],
        capture_output=True,
        text=True,
        env=venv_env,
    )
    assert bad.returncode == 1 and "is a cloudseg output, not a scene" in bad.stderr
    assert not (tmp_path / "c.gpkg").exists() and not (tmp_path / "c-runs").exists()


def _features(project):
    """The proposals layer's features (the dataset kept open while they are read)."""
    dataset = ogr.Open(str(project))
    return [
        {name: f.GetField(name) for name in ("rank", "status", "scene", "model")}
        for f in dataset.GetLayerByName("proposals")
    ]


@pytest.mark.slow
@pytest.mark.real_data
def test_labeled_boxes_become_a_store_that_matches_the_labels(multiband, tmp_path):
    """A simulated analyst: the model's own polygons as labels, then one polygon changed."""
    import rasterio

    from cloudseg.backend.active.labels import labels_to_store
    from cloudseg.backend.store.dataset import open_dataset

    mask, doubt = tmp_path / "mask.tif", tmp_path / "doubt.tif"
    polygons = tmp_path / "polygons.gpkg"
    options = SegmentOptions(product_level="L2A", uncertainty=doubt, polygons=polygons)
    segment(multiband, mask, options)
    project = tmp_path / "labels.gpkg"
    box = propose(doubt, project, box=64, count=3)[0].box
    with pytest.raises(InputError, match="no labeled boxes of chip yet"):
        labels_to_store(project, multiband, tmp_path / "none")
    assert not (tmp_path / "none").exists()
    dataset = ogr.Open(str(project), 1)
    layer = dataset.GetLayerByName("proposals")
    first = next(f for f in layer if f["rank"] == 1)
    first.SetField("status", "labeled")
    layer.SetFeature(first)
    source = ogr.Open(str(polygons))  # "Start from the model": its polygons as labels
    labels_layer = dataset.GetLayerByName("labels")  # proposing made it, empty
    assert labels_layer.GetFeatureCount() == 0
    for polygon in source.GetLayerByName("cloudseg"):
        copy = ogr.Feature(labels_layer.GetLayerDefn())
        copy.SetGeometry(polygon.GetGeometryRef().Clone())
        copy.SetField("class", polygon.GetField("class"))
        labels_layer.CreateFeature(copy)
    dataset = source = None

    store = tmp_path / "store"
    # Boxes are a scene's own: another scene's file finds none of them to store.
    other = tmp_path / "other.tif"
    other.symlink_to(multiband)
    with pytest.raises(InputError, match="no labeled boxes of other yet"):
        labels_to_store(project, other, store)
    result = labels_to_store(project, multiband, store, context=0)
    scene = f"{multiband.stem}-r{box.row}-c{box.col}-64"
    assert result.ingested == [scene]
    stored = open_dataset(store)
    image, labels = stored.read(scene)
    with rasterio.open(mask) as ds:
        model_mask = ds.read(1)[box.row : box.row + 64, box.col : box.col + 64]
    np.testing.assert_array_equal(labels, model_mask)  # the polygons rasterize back
    with rasterio.open(multiband) as ds:
        dn = ds.read()[:, box.row : box.row + 64, box.col : box.col + 64]
    np.testing.assert_array_equal(image, dn)

    # The analyst draws a cloud over the box's top-left corner: the labels follow.
    dataset = ogr.Open(str(project), 1)
    layer = dataset.GetLayerByName("labels")
    with rasterio.open(mask) as ds:
        t = ds.transform
    x0, y0 = t * (box.col, box.row)
    x1, y1 = t * (box.col + 10, box.row + 10)
    ring = f"POLYGON(({x0} {y0},{x1} {y0},{x1} {y1},{x0} {y1},{x0} {y0}))"
    feature = ogr.Feature(layer.GetLayerDefn())
    feature.SetGeometry(ogr.ForceToMultiPolygon(ogr.CreateGeometryFromWkt(ring)))
    feature.SetField("class", 1)
    layer.CreateFeature(feature)
    dataset = None
    labels_to_store(project, multiband, tmp_path / "store2", context=0)
    _, changed = open_dataset(tmp_path / "store2").read(scene)
    assert (changed[:10, :10] == 1).all()
    np.testing.assert_array_equal(changed[10:, 10:], model_mask[10:, 10:])


@pytest.mark.slow
@pytest.mark.real_data
def test_start_from_the_model_then_done_gives_the_models_labels(multiband, tmp_path):
    """The label dock's steps, as functions: start from the model, mark done, store."""
    import rasterio

    from cloudseg.backend.active.labels import labels_to_store, start_from_model
    from cloudseg.backend.active.project import LabelProject
    from cloudseg.backend.store.dataset import open_dataset

    mask, doubt = tmp_path / "mask.tif", tmp_path / "doubt.tif"
    segment(multiband, mask, SegmentOptions(product_level="L2A", uncertainty=doubt))
    project = tmp_path / "labels.gpkg"
    proposals = propose(doubt, project, box=64, count=3)
    dataset = ogr.Open(str(project))
    fid = next(f.GetFID() for f in dataset.GetLayerByName("proposals") if f["rank"] == 2)
    dataset = None
    added = start_from_model(project, mask, fid)
    assert added > 0
    with pytest.raises(InputError, match="has no proposal 99"):
        start_from_model(project, mask, 99)
    with pytest.raises(InputError, match="status must be one of"):
        LabelProject(project).set_status(fid, "finished")
    LabelProject(project).set_status(fid, "labeled", who="ana")
    with pytest.raises(InputError, match="is labeled; mark it todo"):
        start_from_model(project, mask, fid)  # a done box is not filled again
    result = labels_to_store(project, multiband, tmp_path / "store", context=0)
    (scene,) = result.ingested
    stored = open_dataset(tmp_path / "store")
    _, labels = stored.read(scene)
    box = proposals[1].box
    # The store's Item says who labeled which box of which scene, when, in which project.
    properties = stored.item(scene).properties
    assert properties["cloudseg:labeled_by"] == "ana"
    assert properties["cloudseg:labeled_at"].startswith(str(dt.date.today().year))
    assert properties["cloudseg:label_box"] == [box.row, box.col, 64]
    assert properties["cloudseg:label_project"] == "labels.gpkg"
    assert properties["cloudseg:label_scene"] == multiband.stem
    with rasterio.open(mask) as ds:
        expected = ds.read(1)[box.row : box.row + 64, box.col : box.col + 64]
    np.testing.assert_array_equal(labels, expected)
    LabelProject(project).set_status(fid, "todo")  # Back: the box is to label again
    with pytest.raises(InputError, match="no labeled boxes of chip yet"):
        labels_to_store(project, multiband, tmp_path / "store2")


def test_context_windows_keep_one_size_and_stay_inside_the_scene():
    from cloudseg.backend.active.geometry import context_window

    assert context_window(Box(100, 100, 64), 16, 512, 512) == (84, 84, 96)  # centred
    assert context_window(Box(0, 500 - 64, 64), 16, 512, 500) == (0, 500 - 96, 96)  # edges
    assert context_window(Box(0, 0, 64), 100, 128, 200) == (0, 0, 128)  # scene-bounded


@pytest.mark.slow
@pytest.mark.real_data
def test_a_box_stored_with_context_has_its_labels_inside_and_ignored_around(multiband, tmp_path):
    import rasterio

    from cloudseg.backend.active.geometry import context_window
    from cloudseg.backend.active.labels import labels_to_store, start_from_model
    from cloudseg.backend.active.project import LabelProject
    from cloudseg.backend.store.dataset import open_dataset

    mask, doubt = tmp_path / "mask.tif", tmp_path / "doubt.tif"
    segment(multiband, mask, SegmentOptions(product_level="L2A", uncertainty=doubt))
    project = tmp_path / "labels.gpkg"
    box = propose(doubt, project, box=64, count=1)[0].box
    start_from_model(project, mask, 1)
    LabelProject(project).set_status(1, "labeled")
    result = labels_to_store(project, multiband, tmp_path / "store", context=16)
    (scene,) = result.ingested
    stored = open_dataset(tmp_path / "store")
    image, labels = stored.read(scene)
    with rasterio.open(mask) as ds, rasterio.open(multiband) as src:
        row, col, size = context_window(box, 16, ds.height, ds.width)
        model_mask = ds.read(1)
        dn = src.read()[:, row : row + size, col : col + size]
    assert labels.shape == (size, size) and size == 96
    assert stored.item(scene).properties["cloudseg:label_window"] == [row, col, size]
    r, c = box.row - row, box.col - col
    inside = labels[r : r + 64, c : c + 64]
    np.testing.assert_array_equal(
        inside, model_mask[box.row : box.row + 64, box.col : box.col + 64]
    )
    around = labels.copy()
    around[r : r + 64, c : c + 64] = 0
    assert set(np.unique(around)) == {0, 255} and (labels == 255).sum() == size**2 - 64**2
    np.testing.assert_array_equal(image, dn)  # the image around the box is stored too
    # By default a quarter of the box edge around it: the same window here.
    labels_to_store(project, multiband, tmp_path / "default")
    _, default = open_dataset(tmp_path / "default").read(scene)
    np.testing.assert_array_equal(default, labels)


def test_the_held_out_ranks_cover_every_class_the_model_finds():
    """Doubt only over cloud edges: the 2nd and 6th boxes (held out) still show clear and shadow.

    The analyst labels in rank order and the judge holds out the 2nd, 6th, 10th box; a
    class no held-out box holds cannot be judged, so those ranks are chosen for coverage.
    """
    from cloudseg.backend.active.judge import held_out_target

    classes = np.zeros((256, 256), np.uint8)  # clear on the left
    classes[:, 128:] = 1  # cloud on the right
    classes[192:, :64] = 2  # shadow in a corner of the clear ground
    doubt = np.where(classes == 1, 40.0, 1.0).astype(np.float32)
    doubt[:, 120:136] = 80.0  # the cloud edge is where the model doubts most
    plain = rank_boxes(doubt, 32, 8)
    covered = rank_boxes(doubt, 32, 8, classes=classes)
    held = [p for p in covered if held_out_target(p.rank) > held_out_target(p.rank - 1)]
    assert [p.rank for p in held] == [2, 6]

    def shown(boxes: list) -> set[int]:
        """Classes a box set holds a tenth of a box of (what the judge needs of 32 px)."""
        kinds: set[int] = set()
        for p in boxes:
            window = classes[p.box.row : p.box.row + 32, p.box.col : p.box.col + 32]
            kinds |= {k for k, n in enumerate(np.bincount(window.ravel(), minlength=3)) if n >= 102}
        return kinds

    plain_held = [p for p in plain if p.rank in (2, 6)]
    assert shown(plain_held) != {0, 1, 2}  # doubt alone leaves a class unjudged
    assert shown(held) == {0, 1, 2}
    # The other ranks are the most doubtful boxes, as without the class raster.
    assert [p.box for p in covered if p.rank == 1] == [plain[0].box]
    assert all(p.score >= 40 for p in covered if p not in held)
    # Without a class the model finds, nothing is forced: all-cloud gives the plain ranking.
    assert [p.box for p in rank_boxes(doubt, 32, 8, classes=np.ones_like(classes))] == [
        p.box for p in plain
    ]

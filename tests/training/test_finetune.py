"""One active-learning round on a real chip: done boxes -> store -> fine-tune -> version."""

from __future__ import annotations

import pytest
from osgeo import ogr

from cloudseg.backend.active.history import read_rounds
from cloudseg.backend.active.labels import set_status, start_from_model
from cloudseg.backend.active.propose import propose
from cloudseg.backend.errors import CancelledError, InputError
from cloudseg.backend.inference.segment import SegmentOptions, segment
from cloudseg.backend.models.registry import available_models, load_model, registered_models


def _label(project, mask, ranks, who="ana"):
    """A simulated analyst: the model's polygons as labels, then Done, per rank."""
    for rank in ranks:
        start_from_model(project, mask, rank)
        dataset = ogr.Open(str(project))
        fid = next(f.GetFID() for f in dataset.GetLayerByName("proposals") if f["rank"] == rank)
        dataset = None
        set_status(project, fid, "labeled", who=who)


@pytest.fixture(scope="module")
def labeled_project(multiband, tmp_path_factory):
    """A label project on the real chip with three boxes done and one to label."""
    work = tmp_path_factory.mktemp("project")
    mask, doubt = work / "mask.tif", work / "doubt.tif"
    segment(multiband, mask, SegmentOptions(product_level="L2A", uncertainty=doubt))
    project = work / "coast.gpkg"
    propose(doubt, project, box=64, count=4, scene="adwp")
    _label(project, mask, [1, 2, 3])
    return project, mask


@pytest.mark.real_data
def test_a_round_registers_a_version_that_segments(labeled_project, multiband, tmp_path):
    import rasterio

    from cloudseg.training.evaluate import evaluate_store
    from cloudseg.training.finetune import fine_tune

    project, _ = labeled_project
    seen: list[float] = []
    result = fine_tune(project, multiband, epochs=1, progress=lambda p, m: seen.append(p))
    assert seen == sorted(seen) and seen[-1] == 100
    # Registered: listed with the built-ins, by name, under the project's round.
    assert result.model == "coast-r1"
    assert "coast-r1" in [m.card.name for m in available_models()]
    card = load_model("coast-r1").card
    assert card.source["base_model"] == "ukis-csmask-4b-l2a"
    assert card.source["round"] == 1 and card.source["labeled_boxes"] == 3
    assert [m["config"] for m in card.metrics] == ["before (ukis-csmask-4b-l2a)", "after"]
    # The history row, with before/after scores the evaluation reproduces.
    (entry,) = read_rounds(project)
    assert (entry.round, entry.model, entry.boxes) == (1, "coast-r1", 3)
    assert entry.train_boxes + entry.held_out_boxes == 3 and entry.held_out_boxes >= 1
    assert entry.who and entry.init_model == "ukis-csmask-4b-l2a"
    from cloudseg.backend.store.dataset import open_dataset

    ids = entry.held_out
    assert set(ids) < set(open_dataset(result.store).scenes())
    again = evaluate_store("coast-r1", result.store, ids)
    assert round(again.metrics["mean_iou"], 4) == entry.iou_after["mean"]
    before = evaluate_store("ukis-csmask-4b-l2a", result.store, ids)
    assert round(before.metrics["mean_iou"], 4) == entry.iou_before["mean"]
    # The version segments the scene like any model.
    out = tmp_path / "new.tif"
    segment(multiband, out, SegmentOptions(model="coast-r1"))
    with rasterio.open(out) as ds, rasterio.open(multiband) as src:
        assert ds.tags()["CLOUDSEG_MODEL"] == "coast-r1"
        assert (ds.width, ds.height) == (src.width, src.height)


@pytest.mark.real_data
def test_a_cancelled_round_registers_nothing(labeled_project, multiband):
    from cloudseg.training.finetune import fine_tune

    project, _ = labeled_project
    rounds, versions = read_rounds(project), registered_models()
    calls = {"n": 0}

    def cancel_in_training() -> bool:
        calls["n"] += 1
        return calls["n"] > 5  # after the store and the first score, inside training

    with pytest.raises(CancelledError):
        fine_tune(project, multiband, epochs=1, cancelled=cancel_in_training)
    assert read_rounds(project) == rounds
    assert [m.path for m in registered_models()] == [m.path for m in versions]


@pytest.mark.real_data
def test_a_round_needs_two_done_boxes(multiband, tmp_path):
    from cloudseg.training.finetune import fine_tune

    mask, doubt = tmp_path / "mask.tif", tmp_path / "doubt.tif"
    segment(multiband, mask, SegmentOptions(product_level="L2A", uncertainty=doubt))
    project = tmp_path / "one.gpkg"
    propose(doubt, project, box=64, count=2)
    with pytest.raises(InputError, match="no done boxes"):
        fine_tune(project, multiband)
    _label(project, mask, [1])
    with pytest.raises(InputError, match="at least 2 done boxes"):
        fine_tune(project, multiband)
    assert read_rounds(project) == []


@pytest.mark.real_data
def test_the_next_round_from_the_command_line_starts_from_the_last(
    labeled_project, multiband, venv_env
):
    import json
    import subprocess

    project, mask = labeled_project
    if not read_rounds(project):
        pytest.skip("needs the first round (test_a_round_registers_a_version_that_segments)")
    _label(project, mask, [4], who="ben")
    run = subprocess.run(
        ["cloudseg", "fine-tune", str(project), str(multiband), "--epochs", "1", "--json"],
        capture_output=True,
        text=True,
        env=venv_env,
    )
    assert run.returncode == 0, run.stderr
    entry = json.loads(run.stdout)["round"]
    assert (entry["round"], entry["model"], entry["init_model"]) == (2, "coast-r2", "coast-r1")
    assert entry["base_model"] == "ukis-csmask-4b-l2a" and entry["boxes"] == 4
    assert [r.model for r in read_rounds(project)] == ["coast-r1", "coast-r2"]
    # The command's one-line error for a project without proposals.
    bad = subprocess.run(
        ["cloudseg", "fine-tune", str(project.with_name("none.gpkg")), str(multiband)],
        capture_output=True,
        text=True,
        env=venv_env,
    )
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "no done boxes" in bad.stderr

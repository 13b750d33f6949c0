"""Active-learning rounds on the labeled real Sentinel-2 scene: judged, adopted or kept aside."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from cloudseg.backend.active.history import current_model
from cloudseg.backend.active.judge import TOLERANCE, judge
from cloudseg.backend.active.labels import label_box, stored_box_id
from cloudseg.backend.active.loop import propose_on_scene
from cloudseg.backend.active.project import LabelProject
from cloudseg.backend.active.propose import propose
from cloudseg.backend.errors import CancelledError, InputError
from cloudseg.backend.inference.segment import SegmentOptions, segment
from cloudseg.backend.models.registry import load_model, registered_models

BASE = "ukis-csmask-4b-l1c"


@pytest.fixture(scope="module")
def s2(labeled_s2, tmp_path_factory):
    """The labeled Sentinel-2 scene, its doubt, and an all-shadow raster on its grid."""
    import rasterio

    scene, doubt = labeled_s2
    wrong = tmp_path_factory.mktemp("wrong") / "all-shadow.tif"
    with rasterio.open(scene.labels) as src, rasterio.open(wrong, "w", **src.profile) as dst:
        dst.write(np.full((1, src.height, src.width), 2, np.uint8))
    return scene, doubt, wrong


def proposal_rows(project):
    return [p.to_dict() for p in LabelProject(project).read().proposals]


def read_rounds(project):
    return LabelProject(project).rounds()


def _project(s2, folder, name="coast", count=6):
    scene, doubt, _ = s2
    project = folder / f"{name}.gpkg"
    propose(doubt, project, box=64, count=count, scene=scene.image.stem)
    return project


@pytest.mark.real_data
@pytest.mark.slow
def test_a_round_on_true_labels_is_adopted_and_keeps_the_inference_settings(s2, tmp_path):
    import rasterio

    from cloudseg.backend.raster.reader import open_scene
    from cloudseg.training.finetune import held_out_confusion, held_out_windows
    from cloudseg.training.label_round import fine_tune

    scene, _, _ = s2
    project = _project(s2, tmp_path)
    fids = [r["fid"] for r in proposal_rows(project)][:4]
    for fid in fids:
        label_box(project, fid, scene.labels)
    seen: list[tuple[float, str]] = []
    result = fine_tune(project, scene.image, progress=lambda p, m: seen.append((p, m)))
    assert [p for p, _ in seen] == sorted(p for p, _ in seen) and seen[-1][0] == 100
    assert any("left" in m for _, m in seen)  # training says the time left
    # Four boxes: the second labeled is held out, the other three trained on.
    (entry,) = read_rounds(project)
    assert (entry.boxes, entry.train_boxes, entry.held_out_boxes) == (4, 3, 1)
    transform = _transform(scene.image)
    boxes = {p.fid: p.box(transform) for p in LabelProject(project).read().proposals}
    assert entry.held_out == [stored_box_id(scene.image.stem, boxes[fids[1]])]
    # True labels where the model doubts: adopted by the judge's rule.
    verdict = result.verdict
    assert result.adopted and entry.adopted and result.current == "coast-r1"
    assert verdict.mean_after > verdict.mean_before
    for name, score in verdict.classes.items():
        if score.judged:
            assert score.after >= score.before - TOLERANCE, name
    assert current_model(read_rounds(project), BASE) == "coast-r1"
    # The judge's figures are reproduced from the two models' masks of the held-out box.
    from cloudseg.backend.store.dataset import open_dataset

    windows = held_out_windows(open_dataset(result.store), entry.held_out)
    assert [w[2] for w in windows] == [64] and (windows[0][3] != 255).all()
    with open_scene(scene.image) as reader:
        before = held_out_confusion(BASE, reader, windows, 3)
        after = held_out_confusion("coast-r1", reader, windows, 3)
    again = judge(before, after, ["clear", "cloud", "cloud shadow"], BASE, "coast-r1")
    assert again.iou("after") == entry.iou_after and again.iou("before") == entry.iou_before
    assert again.adopted
    # The version keeps the base card's tiling, resolution and normalization.
    card, base = load_model("coast-r1").card, load_model(BASE).card
    assert (card.tile_size, card.overlap, card.resolution_m) == (256, 52, 30)
    assert card.normalization == base.normalization and card.bands == base.bands
    assert card.format == "torch" and card.source["recipe"]["name"] == entry.recipe
    assert card.source["adopted"] is True
    # It segments the scene like any model, with the base's tiling.
    out = tmp_path / "new.tif"
    segment(scene.image, out, SegmentOptions(model="coast-r1"))
    with rasterio.open(out) as ds:
        assert ds.tags()["CLOUDSEG_MODEL"] == "coast-r1"
        assert json.loads(ds.tags()["CLOUDSEG_TILING"])["tile_size"] == 256
    # The next round's proposals, with no model named, come from the adopted version.
    proposed = propose_on_scene(project, scene.image, box=64, count=2)
    with rasterio.open(proposed.run.mask) as ds:
        assert ds.tags()["CLOUDSEG_MODEL"] == "coast-r1"
    assert {p.model for p in LabelProject(project).read().with_status("todo")} == {"coast-r1"}


@pytest.mark.real_data
@pytest.mark.slow
def test_a_worse_version_is_kept_aside_and_the_next_round_starts_from_the_current(
    s2, tmp_path, venv_env
):
    """Training boxes labeled all shadow: the held-out (true) box shows it; nothing adopted."""
    scene, _, wrong = s2
    project = _project(s2, tmp_path, "wrong")
    fids = [r["fid"] for r in proposal_rows(project)]
    for i, fid in enumerate(fids[:4]):  # the 2nd labeled is held out: true labels there
        label_box(project, fid, scene.labels if i == 1 else wrong)
    run = subprocess.run(
        ["cloudseg", "fine-tune", str(project), str(scene.image), "--steps", "20"],
        capture_output=True,
        text=True,
        env=venv_env,
    )
    assert run.returncode == 0, run.stderr
    assert f"kept {BASE}" in run.stdout and "worse on your held-out boxes" in run.stdout
    assert "run it by name with --model wrong-r1" in run.stdout
    (entry,) = read_rounds(project)
    assert not entry.adopted and entry.held_out_boxes == 1
    assert entry.scores["cloud shadow"]["judged"] in (True, False)
    assert current_model(read_rounds(project), BASE) == BASE
    assert "wrong-r1" in [m.card.name for m in registered_models()]  # still choosable
    assert load_model("wrong-r1").card.source["adopted"] is False
    # The next round starts from the current model (the base), not the rejected version.
    for fid in fids[4:6]:
        label_box(project, fid, scene.labels)
    again = subprocess.run(
        ["cloudseg", "fine-tune", str(project), str(scene.image), "--steps", "5", "--json"],
        capture_output=True,
        text=True,
        env=venv_env,
    )
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout)
    assert second["round"]["init_model"] == BASE and second["round"]["round"] == 2
    # Boxes keep their side: the first round's held-out box is still held out.
    assert set(entry.held_out) <= set(second["round"]["held_out"])
    assert set(entry.trained) <= set(second["round"]["trained"])
    assert second["round"]["boxes"] == 6 and second["round"]["held_out_boxes"] == 2


@pytest.mark.real_data
@pytest.mark.slow
def test_a_round_that_labels_only_clear_ground_cannot_unlearn_the_other_classes(s2, tmp_path):
    """Eight 64 px boxes on half of the chip, every one labeled clear.

    The held-out boxes hold no cloud to judge. The rest of the half checks it, though
    the boxes (with their context) leave no tile of it free: the version that learned
    "all is clear" repaints what the current model marks as cloud there, so it is kept
    aside, and the verdict says how each class was checked.
    """
    import rasterio
    from rasterio.windows import Window

    from cloudseg.backend.active.judge import CHANGE_BUDGET, MIN_CONFIDENT_PIXELS
    from cloudseg.training.label_round import fine_tune

    scene, _, _ = s2
    half = tmp_path / "left-half.tif"
    with rasterio.open(scene.image) as src:
        window = Window(0, 0, src.width // 2, src.height)
        profile = src.profile | {"width": window.width, "transform": src.window_transform(window)}
        with rasterio.open(half, "w", **profile) as dst:
            dst.write(src.read(window=window))
            dst.descriptions = src.descriptions
    clear = tmp_path / "all-clear.tif"
    with rasterio.open(scene.labels) as src, rasterio.open(clear, "w", **src.profile) as dst:
        dst.write(np.zeros((1, src.height, src.width), np.uint8))
    project = tmp_path / "clear.gpkg"
    propose_on_scene(project, half, BASE, box=64, count=8)
    for fid in [r["fid"] for r in proposal_rows(project)]:
        label_box(project, fid, clear)
    result = fine_tune(project, half)
    verdict = result.verdict
    assert not result.adopted and result.current == BASE, verdict.reason
    cloud = verdict.classes["cloud"]
    assert not cloud.judged  # the held-out boxes hold no cloud
    assert cloud.checked_by == "the scene" and cloud.confident >= MIN_CONFIDENT_PIXELS
    assert cloud.changed > CHANGE_BUDGET and "repaints the scene" in verdict.reason
    assert "checked - clear: held-out boxes and the scene" in verdict.reason
    (entry,) = read_rounds(project)
    assert not entry.adopted and entry.scores["cloud"]["confident"] == cloud.confident


@pytest.mark.slow
@pytest.mark.real_data
def test_the_scene_check_covers_a_chip_whole_and_leaves_out_the_labeled_boxes(s2):
    from cloudseg.backend.raster.reader import open_scene
    from cloudseg.training.finetune import check_windows, scene_before

    scene, _, _ = s2
    with open_scene(scene.image) as reader:
        # A 512 x 512 px chip is no more than six 256 px tiles: checked whole, in one part.
        assert check_windows(reader, 256, 6, seed=0) == [(0, 0, 512, 512)]
        # A scene of more tiles: six of the tiles that cover it, apart.
        tiles = check_windows(reader, 128, 6, seed=0)
        assert len(set(tiles)) == 6 and all(t[2:] == (128, 128) for t in tiles)
        box = (200, 230, 64)
        ((probabilities, left_out),) = scene_before(BASE, reader, [(0, 0, 512, 512)], labeled=[box])
    assert probabilities.shape == (3, 512, 512)
    assert left_out.sum() == 64 * 64 and left_out[200:264, 230:294].all()


@pytest.mark.slow
@pytest.mark.real_data
def test_a_cancelled_round_registers_nothing(s2, tmp_path):
    from cloudseg.training.label_round import fine_tune

    scene, _, _ = s2
    project = _project(s2, tmp_path, "cancel", count=3)
    for fid in [r["fid"] for r in proposal_rows(project)]:
        label_box(project, fid, scene.labels)
    versions = [m.path for m in registered_models()]
    calls = {"n": 0}

    def cancel_in_training() -> bool:
        calls["n"] += 1
        return calls["n"] > 6  # after the store, inside training

    with pytest.raises(CancelledError):
        fine_tune(project, scene.image, cancelled=cancel_in_training)
    assert read_rounds(project) == []
    assert [m.path for m in registered_models()] == versions


@pytest.mark.real_data
def test_a_round_needs_two_done_boxes_and_a_known_recipe(s2, tmp_path):
    from cloudseg.training.label_round import fine_tune

    scene, _, _ = s2
    project = _project(s2, tmp_path, "one", count=2)
    with pytest.raises(InputError, match="no done boxes"):
        fine_tune(project, scene.image)
    label_box(project, proposal_rows(project)[0]["fid"], scene.labels)
    with pytest.raises(InputError, match="at least 2 done boxes"):
        fine_tune(project, scene.image)
    label_box(project, proposal_rows(project)[1]["fid"], scene.labels)
    with pytest.raises(InputError, match="unknown recipe 'magic'; choose one of"):
        fine_tune(project, scene.image, recipe="magic")
    assert read_rounds(project) == []


def _transform(image):
    import rasterio

    with rasterio.open(image) as ds:
        return ds.transform

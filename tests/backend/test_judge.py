"""The judge of a fine-tuning round: a stable held-out split and a fair per-class verdict."""

from __future__ import annotations

import numpy as np
import pytest

from cloudseg.backend.active.judge import held_out_target, judge, split_boxes

NAMES = ["clear", "cloud", "cloud shadow"]


def test_about_a_quarter_is_held_out_from_two_boxes_on():
    assert [held_out_target(n) for n in range(1, 14)] == [0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]
    for n in range(2, 40):
        trained, held = split_boxes([f"b{i}" for i in range(n)])
        assert len(held) == held_out_target(n) and len(trained) == n - len(held)
        assert 0.2 <= len(held) / n <= 0.5


def test_boxes_never_change_side_as_more_are_labeled():
    boxes = [f"b{i}" for i in range(12)]
    trained, held = split_boxes(boxes[:4])
    assert held == ["b1"]  # the second labeled box
    for n in range(5, 13):
        more_trained, more_held = split_boxes(boxes[:n], held, trained)
        assert set(held) <= set(more_held) and set(trained) <= set(more_trained)
        trained, held = more_trained, more_held
    assert held == ["b1", "b5", "b9"]
    # An earlier round's sides are kept even where the rule would say otherwise.
    trained, held = split_boxes(boxes[:4], held_before=["b0", "b3"], trained_before=["b1"])
    assert held == ["b0", "b3"] and trained == ["b1", "b2"]


def test_projects_whose_rounds_trained_on_every_box_still_hold_one_out():
    trained, held = split_boxes(["a", "b", "c"], trained_before=["a", "b", "c"])
    assert held == ["c"] and trained == ["a", "b"]


def _confusion(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    matrix = np.zeros((3, 3), np.int64)
    np.add.at(matrix, (truth.ravel(), predicted.ravel()), 1)
    return matrix


def test_a_class_absent_from_the_truth_is_not_scored_and_a_rare_one_not_judged():
    truth = np.zeros((64, 64), np.int64)
    truth[:20] = 1  # 1,280 cloud pixels; no shadow at all
    truth[60, :10] = 2  # ...except 10 pixels: too few to judge
    before = truth.copy()
    before[:20, :5] = 0  # misses a strip of cloud
    before[40:50, :] = 2  # paints shadow on clear land
    after = truth.copy()
    after[60, :10] = 0  # loses the 10 shadow pixels
    verdict = judge(_confusion(truth, before), _confusion(truth, after), NAMES, "base", "new")
    assert verdict.classes["cloud shadow"].judged is False
    assert verdict.classes["cloud shadow"].pixels == 10
    assert verdict.unjudged == ["cloud shadow"] and "too few held-out pixels" in verdict.reason
    assert verdict.adopted and "new adopted" in verdict.reason
    # The mean is over the judged classes only, the same ones before and after.
    judged = [verdict.classes[n] for n in ("clear", "cloud")]
    assert verdict.mean_before == pytest.approx(np.mean([s.before for s in judged]), abs=1e-4)
    assert verdict.mean_after > 0.99  # clear took the 10 shadow pixels
    # Without any shadow in the truth, shadow is neither 0 before nor dropped after.
    no_shadow = np.zeros((64, 64), np.int64)
    no_shadow[:32] = 1
    painted = no_shadow.copy()
    painted[40:, :] = 2
    verdict = judge(
        _confusion(no_shadow, painted), _confusion(no_shadow, no_shadow), NAMES, "a", "b"
    )
    assert verdict.classes["cloud shadow"].before is None
    assert verdict.classes["cloud shadow"].after is None
    assert verdict.iou("before")["clear"] < verdict.iou("after")["clear"] == 1.0


def test_a_class_lost_beyond_the_tolerance_keeps_the_current_model_whatever_the_mean():
    truth = np.zeros((64, 64), np.int64)
    truth[:20] = 1
    truth[20:40] = 2
    before = truth.copy()
    before[:20, :10] = 0  # cloud half right
    after = truth.copy()
    after[20:40, :4] = 0  # cloud perfect, shadow a little worse
    verdict = judge(_confusion(truth, before), _confusion(truth, after), NAMES, "coast-r1", "r2")
    assert verdict.mean_after > verdict.mean_before
    assert not verdict.adopted
    assert verdict.reason.startswith("the new version is worse on your held-out boxes for")
    assert "cloud shadow" in verdict.reason and verdict.reason.endswith("kept coast-r1")
    # Equal is not better.
    same = judge(_confusion(truth, before), _confusion(truth, before), NAMES, "m", "n")
    assert not same.adopted and "not better" in same.reason


def test_a_gain_smaller_than_a_few_boxes_vary_by_is_not_adopted():
    truth = np.zeros((100, 100), np.int64)
    truth[:50] = 1
    before = truth.copy()
    before[:50, :2] = 0  # 100 cloud pixels missed
    after = truth.copy()
    after[:50, :1] = 0  # 50 missed: better, by less than 0.01 mean IoU
    verdict = judge(_confusion(truth, before), _confusion(truth, after), NAMES, "base", "new")
    assert 0 < verdict.mean_after - verdict.mean_before < 0.01
    assert not verdict.adopted and "not clearly better" in verdict.reason
    assert "kept base" in verdict.reason


def _probabilities(classes: np.ndarray, sure: float = 0.9) -> np.ndarray:
    """Class probabilities whose best class is ``classes`` with probability ``sure``."""
    out = np.full((3, *classes.shape), (1 - sure) / 2, np.float32)
    for k in range(3):
        out[k][classes == k] = sure
    return out


def test_a_class_the_boxes_cannot_judge_is_checked_on_the_scene():
    from cloudseg.backend.active.judge import CHANGE_BUDGET, SceneChange

    truth = np.zeros((64, 64), np.int64)  # held-out boxes: clear ground only
    before, after = truth.copy(), truth.copy()
    before[:10] = 1  # the current model calls some of it cloud; the version fixes that
    held_before, held_after = _confusion(truth, before), _confusion(truth, after)
    scene = np.zeros((100, 100), np.int64)
    scene[:40] = 1  # cloud the current model is sure of
    scene[40:60] = 2  # and shadow
    # A version that keeps the scene's cloud and shadow: checked there, adopted.
    kept = SceneChange.measure(_probabilities(scene), scene)
    verdict = judge(held_before, held_after, NAMES, "base", "new", change=kept)
    assert verdict.adopted, verdict.reason
    assert verdict.classes["cloud"].checked_by == "the scene"
    assert verdict.classes["clear"].checked_by == "held-out boxes and the scene"
    assert "cloud: the scene" in verdict.reason
    # A version that repaints a tenth of the scene's cloud as clear: kept aside.
    repainted = scene.copy()
    repainted[:4] = 0
    change = SceneChange.measure(_probabilities(scene), repainted)
    assert change.changed[1] / change.confident[1] == pytest.approx(0.1)
    assert CHANGE_BUDGET < 0.1
    verdict = judge(held_before, held_after, NAMES, "base", "new", change=change)
    assert not verdict.adopted and "repaints the scene" in verdict.reason
    assert "cloud 10%" in verdict.reason and "kept base" in verdict.reason
    # Unsure pixels and nodata are not counted; a class nobody can check stops adoption.
    unsure = SceneChange.measure(_probabilities(scene, sure=0.5), repainted)
    assert unsure.confident == [0, 0, 0]
    nodata = np.zeros(scene.shape, bool)
    nodata[40:60] = True  # the shadow lies where there is no data
    no_shadow = SceneChange.measure(_probabilities(scene), scene, nodata)
    verdict = judge(held_before, held_after, NAMES, "base", "new", change=no_shadow)
    assert not verdict.adopted and verdict.unchecked == ["cloud shadow"]
    assert "label a box with cloud shadow next" in verdict.reason


def test_a_class_the_boxes_judge_may_change_more_of_the_scene_than_one_they_cannot():
    """The held-out boxes show whether a change is right: their classes get a larger budget."""
    from cloudseg.backend.active.judge import (
        CHANGE_BUDGET,
        JUDGED_CHANGE_BUDGET,
        ClassScore,
        decide,
    )

    assert CHANGE_BUDGET < 0.07 < JUDGED_CHANGE_BUDGET

    def scores(shadow_judged: bool) -> dict[str, ClassScore]:
        return {
            "clear": ClassScore(5000, 0.75, 0.82, True, 70000, 0.0),
            "cloud": ClassScore(1300, 0.62, 0.67, True, 12000, 0.01),
            # The version repaints 7 % of the shadow the current model is sure of.
            "cloud shadow": ClassScore(
                1200 if shadow_judged else 300, 0.58, 0.69, shadow_judged, 9000, 0.07
            ),
        }

    judged = decide(scores(True), "base", "new")
    assert judged.adopted, judged.reason
    assert "cloud shadow: held-out boxes and the scene" in judged.reason
    unjudged = decide(scores(False), "base", "new")
    assert not unjudged.adopted and "cloud shadow 7%" in unjudged.reason
    assert "5% of a class your held-out boxes cannot judge, 10% of one they do" in unjudged.reason

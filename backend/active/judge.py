"""The fair judge of a fine-tuning round: which boxes are held out, and whether to adopt.

One owner for the two decisions every front end (CLI, Processing, the label dock, the
benchmark) shows and none may decide differently:

- **Held-out boxes** (:func:`split_boxes`): boxes are taken in the order they were
  labeled; a box keeps the side it was given in an earlier round, and each new box is
  held out while fewer than ``(n + 2) // 4`` of the first ``n`` boxes are (the 2nd,
  6th, 10th... box): every round from two boxes on has one, about a quarter are held
  out at any N (1 of 2-5, 2 of 6-9, 3 of 10-13), and no box ever changes side.
- **The verdict** (:func:`judge`): per-class IoU of the current model and of the new
  version on the same held-out pixels, from their confusion matrices. A class is
  judged only with at least :data:`MIN_CLASS_PIXELS` held-out labeled pixels; a class
  absent from the truth is not scored (its false positives already lower the classes
  whose pixels they took). The new version is adopted only if no judged class loses
  more than :data:`TOLERANCE` IoU and the mean over the judged classes rises by at
  least :data:`MIN_GAIN`: a smaller gain on a few boxes is within what they vary by,
  and a version adopted for it risks more elsewhere than it gains (measured:
  docs/active-learning.md).
- **The rest of the scene** (:class:`SceneChange`): a few held-out boxes cannot show
  what a version does to a class they do not hold (an analyst who labels only clear
  ground can teach the model to forget cloud). So every class is also checked where
  nobody labeled: of the pixels the current model gives that class with probability
  :data:`CONFIDENT` or more, outside every labeled box (the whole of a chip, or six
  tiles of a large scene: ``training.finetune.check_windows``), the new version may
  repaint at most :data:`CHANGE_BUDGET` - it may change what the labels taught it, not
  the scene.
  A class that neither the held-out boxes nor the scene can check is not protected, so
  the version is not adopted, and the verdict names the class to label next.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

#: Held-out labeled pixels a class needs before its IoU is judged (a 64 px box holds
#: 4,096; fewer than this are a sliver whose IoU swings with a few pixels).
MIN_CLASS_PIXELS = 400
#: IoU a judged class may lose while the mean rises, and still be adopted.
TOLERANCE = 0.01
#: How much the mean IoU over the judged classes must rise for a version to be adopted.
MIN_GAIN = 0.01
#: A pixel is the current model's confident prediction of its class from this probability.
CONFIDENT = 0.8
#: Share of a class's confident pixels outside the labeled boxes a version may repaint,
#: for a class the held-out boxes cannot judge (the scene is all that checks it).
CHANGE_BUDGET = 0.05
#: The same for a class the held-out boxes judge: they show whether the change is right,
#: and a version that corrects what the current model was sure of and wrong about repaints
#: more. Chosen on the 10 m benchmark's left and right halves (docs/active-learning.md):
#: the smallest budget that refused no version raising every class of the unseen half
#: (5 % refused two that raised its mean by 0.067, every class up; their shadow changed 7 %).
JUDGED_CHANGE_BUDGET = 0.1
#: Confident pixels outside the boxes a class needs before its change is checked.
MIN_CONFIDENT_PIXELS = MIN_CLASS_PIXELS


@dataclass
class SceneChange:
    """How much a new version changes the current model's confident classes, per class.

    Attributes:
        confident: Pixels (outside the labeled boxes) the current model gives each
            class with probability :data:`CONFIDENT` or more.
        changed: Of those, how many the new version gives another class.
    """

    confident: list[int]
    changed: list[int]

    @classmethod
    def measure(
        cls, before: np.ndarray, after: np.ndarray, nodata: np.ndarray | None = None
    ) -> SceneChange:
        """The change between two models' outputs on the same pixels.

        Args:
            before: The current model's class probabilities ``(classes, rows, cols)``.
            after: The new version's class raster ``(rows, cols)`` (values = class index).
            nodata: Pixels to leave out.
        """
        classes = before.shape[0]
        best = np.nan_to_num(before, nan=0.0).argmax(axis=0)
        sure = np.nan_to_num(before, nan=0.0).max(axis=0) >= CONFIDENT
        if nodata is not None:
            sure &= ~nodata
        confident = np.bincount(best[sure].ravel(), minlength=classes)[:classes]
        moved = sure & (after != best)
        changed = np.bincount(best[moved].ravel(), minlength=classes)[:classes]
        return cls([int(v) for v in confident], [int(v) for v in changed])

    def __add__(self, other: SceneChange) -> SceneChange:
        """Both changes together (windows of one scene)."""
        return SceneChange(
            [a + b for a, b in zip(self.confident, other.confident, strict=True)],
            [a + b for a, b in zip(self.changed, other.changed, strict=True)],
        )


def held_out_target(n: int) -> int:
    """How many of the first ``n`` labeled boxes are held out: ``(n + 2) // 4``, 1 from 2."""
    return 0 if n < 2 else max(1, (n + 2) // 4)


def split_boxes(
    ordered: list[str], held_before: Iterable[str] = (), trained_before: Iterable[str] = ()
) -> tuple[list[str], list[str]]:
    """Split box ids (in labeling order) into (trained, held out), stable across rounds.

    Args:
        ordered: Every labeled box's id, first labeled first.
        held_before: Ids held out in earlier rounds (they stay held out).
        trained_before: Ids trained on in earlier rounds (they stay trained on).

    Returns:
        ``(trained, held_out)``, each in labeling order.
    """
    held_set, trained_set = set(held_before), set(trained_before)
    held: list[str] = []
    trained: list[str] = []
    for n, box in enumerate(ordered, start=1):
        if box in held_set:
            held.append(box)
        elif box in trained_set:
            trained.append(box)
        elif len(held) < held_out_target(n):
            held.append(box)
        else:
            trained.append(box)
    if not held and len(trained) >= 2:  # earlier rounds trained on every box (old projects)
        held.append(trained.pop())
    return trained, held


@dataclass
class ClassScore:
    """One class on the held-out boxes.

    Attributes:
        pixels: Held-out labeled pixels of the class.
        before: IoU of the current model (None: not scored, the class is absent).
        after: IoU of the new version.
        judged: Whether the class has enough pixels to be judged.
    """

    pixels: int
    before: float | None
    after: float | None
    judged: bool
    #: Confident pixels of the class outside the boxes (see :class:`SceneChange`).
    confident: int = 0
    #: Share of them the new version repaints; None: too few to check.
    changed: float | None = None

    @property
    def checked_by(self) -> str:
        """How the class was checked: held-out boxes, the scene, both, or nothing."""
        ways = ["held-out boxes"] * self.judged + ["the scene"] * (self.changed is not None)
        return " and ".join(ways) or "nothing"


@dataclass
class Verdict:
    """Whether the new version is adopted, and the figures behind it.

    Attributes:
        adopted: True when the new version becomes the project's current model.
        reason: One line that says why, with the figures.
        mean_before: Mean IoU over the judged classes, current model.
        mean_after: The same for the new version.
        classes: Per class name, a :class:`ClassScore`.
        unjudged: Classes with too few held-out pixels to judge (said in the reason).
        unchecked: Classes nothing could check: neither held-out boxes nor the scene
            (the verdict is then never an adoption; label these next).
    """

    adopted: bool
    reason: str
    mean_before: float | None
    mean_after: float | None
    classes: dict[str, ClassScore] = field(default_factory=dict)
    unjudged: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The verdict as JSON-serialisable data (each class says how it was checked)."""
        data = asdict(self)
        for name, score in self.classes.items():
            data["classes"][name]["checked_by"] = score.checked_by
        return data

    def checks(self) -> str:
        """One phrase saying how each class was checked, e.g. ``clear: held-out boxes``."""
        return "; ".join(f"{n}: {s.checked_by}" for n, s in self.classes.items())

    def iou(self, which: str) -> dict[str, float | None]:
        """Per-class IoU (``before`` or ``after``) and ``mean`` over the judged classes."""
        mean = self.mean_before if which == "before" else self.mean_after
        return {name: getattr(s, which) for name, s in self.classes.items()} | {"mean": mean}


def _iou(matrix: np.ndarray, k: int) -> float:
    tp = float(matrix[k, k])
    union = float(matrix[k, :].sum() + matrix[:, k].sum() - tp)
    return tp / union if union else 0.0


def _budgets(unjudged: float, judged: float) -> str:
    """The change budgets as the verdict says them."""
    if unjudged == judged:
        return f"{unjudged:.0%}"
    return (
        f"{unjudged:.0%} of a class your held-out boxes cannot judge, {judged:.0%} of one they do"
    )


def judge(
    before: np.ndarray,
    after: np.ndarray,
    names: list[str],
    current: str,
    new: str,
    min_pixels: int = MIN_CLASS_PIXELS,
    tolerance: float = TOLERANCE,
    min_gain: float = MIN_GAIN,
    change: SceneChange | None = None,
    change_budget: float = CHANGE_BUDGET,
    judged_change_budget: float = JUDGED_CHANGE_BUDGET,
) -> Verdict:
    """Judge a new version against the current model on the same held-out pixels.

    Args:
        before: Confusion matrix (truth rows, prediction columns) of the current model.
        after: The same for the new version (same pixels, same truth).
        names: Class names in value order.
        current: The current model's name (for the reason).
        new: The new version's name.
        min_pixels: Held-out pixels a class needs to be judged.
        tolerance: IoU a judged class may lose.
        min_gain: How much the mean over the judged classes must rise.
        change: What the new version does to the current model's confident classes
            outside the labeled boxes; None: not measured (only the boxes judge, and no
            class counts as unchecked).
        change_budget: The share of a class's confident pixels it may repaint, for a
            class the held-out boxes cannot judge.
        judged_change_budget: The same for a class they judge.

    Returns:
        The :class:`Verdict`.
    """
    truth = before.sum(axis=1)
    classes: dict[str, ClassScore] = {}
    for k, name in enumerate(names):
        present = truth[k] > 0
        classes[name] = ClassScore(
            int(truth[k]),
            round(_iou(before, k), 4) if present else None,
            round(_iou(after, k), 4) if present else None,
            bool(truth[k] >= min_pixels),
        )
    if change is not None:
        for k, name in enumerate(names):
            score = classes[name]
            score.confident = change.confident[k]
            if score.confident >= MIN_CONFIDENT_PIXELS:
                score.changed = round(change.changed[k] / score.confident, 4)
    return decide(
        classes,
        current,
        new,
        min_pixels,
        tolerance,
        min_gain,
        change is not None,
        change_budget,
        judged_change_budget,
    )


def decide(
    classes: dict[str, ClassScore],
    current: str,
    new: str,
    min_pixels: int = MIN_CLASS_PIXELS,
    tolerance: float = TOLERANCE,
    min_gain: float = MIN_GAIN,
    scene_checked: bool = True,
    change_budget: float = CHANGE_BUDGET,
    judged_change_budget: float = JUDGED_CHANGE_BUDGET,
) -> Verdict:
    """The verdict from each class's figures (what :func:`judge` measured).

    Kept apart so that a round's recorded figures (``Round.scores``) can be judged again
    under other settings, as the benchmark does when it chooses them.

    Args:
        classes: Per class name, its :class:`ClassScore` (``judged`` already set).
        current: The current model's name (for the reason).
        new: The new version's name.
        min_pixels: Held-out pixels a class needs to be judged (for the reason).
        tolerance: IoU a judged class may lose.
        min_gain: How much the mean over the judged classes must rise.
        scene_checked: Whether the scene change was measured (else no class counts as
            unchecked).
        change_budget: The share of a class's confident pixels a version may repaint,
            for a class the held-out boxes cannot judge.
        judged_change_budget: The same for a class they judge.
    """
    judged = [n for n, s in classes.items() if s.judged]
    unjudged = [n for n, s in classes.items() if not s.judged]
    unchecked = (
        [n for n, s in classes.items() if not s.judged and s.changed is None]
        if scene_checked
        else []
    )
    budget = {n: judged_change_budget if s.judged else change_budget for n, s in classes.items()}
    repainted = [
        f"{n} {s.changed:.0%}"
        for n, s in classes.items()
        if s.changed is not None and s.changed > budget[n]
    ]
    scene_only = [n for n in unjudged if classes[n].changed is not None]
    few = (
        f"; too few held-out pixels to judge {', '.join(unjudged)} "
        f"(fewer than {min_pixels}: label boxes with them)"
        if unjudged and not scene_only
        else f"; {', '.join(scene_only)} checked on the scene outside your boxes only "
        f"(too few held-out pixels)"
        if scene_only
        else ""
    )
    if not judged:
        return Verdict(
            False,
            f"no class has {min_pixels} held-out pixels to judge {new} by; kept {current}" + few,
            None,
            None,
            classes,
            unjudged,
            unchecked,
        )
    mean_before = round(float(np.mean([classes[n].before for n in judged])), 4)
    mean_after = round(float(np.mean([classes[n].after for n in judged])), 4)
    lost = [
        f"{n} {classes[n].before:.3f} -> {classes[n].after:.3f}"
        for n in judged
        if classes[n].after < classes[n].before - tolerance
    ]
    figures = f"{mean_before:.3f} -> {mean_after:.3f}"
    if repainted:
        reason = (
            f"the new version repaints the scene outside your boxes: {', '.join(repainted)} "
            f"of what {current} marks there with confidence is changed (at most "
            f"{_budgets(change_budget, judged_change_budget)}; mean on your held-out boxes "
            f"{figures}); kept {current}"
        )
        adopted = False
    elif unchecked:
        label = ", ".join(unchecked)
        reason = (
            f"nothing can check what the new version does to {label}: your held-out boxes "
            f"hold fewer than {min_pixels} pixels of it and {current} marks fewer than "
            f"{MIN_CONFIDENT_PIXELS} elsewhere (mean on your held-out boxes {figures}); "
            f"kept {current}; label a box with {label} next"
        )
        verdict = Verdict(False, reason, mean_before, mean_after, classes, unjudged, unchecked)
        verdict.reason += f" (checked - {verdict.checks()})"
        return verdict
    elif lost:
        reason = (
            f"the new version is worse on your held-out boxes for {', '.join(lost)} "
            f"(mean {figures}); kept {current}"
        )
        adopted = False
    elif mean_after <= mean_before:
        reason = f"the new version is not better on your held-out boxes: {figures}; kept {current}"
        adopted = False
    elif mean_after - mean_before < min_gain:
        reason = (
            f"the new version is not clearly better on your held-out boxes: {figures} (a "
            f"gain under {min_gain:g} is within what a few boxes vary by); kept {current}"
        )
        adopted = False
    else:
        reason = f"the new version is better on your held-out boxes: {figures}; {new} adopted"
        adopted = True
    verdict = Verdict(adopted, reason + few, mean_before, mean_after, classes, unjudged, unchecked)
    if scene_checked:
        verdict.reason += f" (checked - {verdict.checks()})"
    return verdict


__all__ = [
    "CHANGE_BUDGET",
    "CONFIDENT",
    "JUDGED_CHANGE_BUDGET",
    "MIN_CLASS_PIXELS",
    "MIN_CONFIDENT_PIXELS",
    "MIN_GAIN",
    "TOLERANCE",
    "ClassScore",
    "SceneChange",
    "Verdict",
    "decide",
    "judge",
    "split_boxes",
]

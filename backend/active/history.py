"""The label project's round history: one row per fine-tuning round.

The ``rounds`` table (no geometry) records what each round produced: the new model
version, the model it started from, how many boxes it trained on and held out, IoU per
class on the held-out boxes before and after, and the minutes spent labeling and
training. The label project (:class:`.project.LabelProject`) keeps it in its ``rounds``
table; the label dock shows it, and closing QGIS and coming back finds it where it was.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Round:
    """One fine-tuning round of a label project.

    Attributes:
        round: 1 for the first round.
        model: The new model version's registered name.
        model_path: Its weights file.
        base_model: The model the project started from (a built-in one).
        init_model: The model this round started from (the base, or an earlier round).
        boxes: Labeled boxes in all (training plus held out).
        train_boxes: Boxes trained on.
        held_out_boxes: Boxes held out: validation, and the before/after scores.
        iou_before: IoU per class (and ``mean``) of ``init_model`` on the held-out boxes.
        iou_after: The same for the new version.
        label_minutes: Minutes from this round's first proposal to its last Done.
        train_minutes: Minutes the fine-tuning took.
        created: When the round finished (UTC, ISO 8601).
        who: Who ran it.
        held_out: The held-out boxes' ids in the label store.
        trained: The boxes trained on (ids in the label store): a box keeps its side.
        adopted: Whether the new version became the project's current model (see
            :mod:`.judge`); a version not adopted is registered but not current.
        verdict: The judge's one line (figures, and classes too rare to judge).
        scores: Per class: held-out pixels, IoU before and after, whether judged.
        recipe: The fine-tuning recipe used.
        seconds: Wall-clock seconds the round took.
    """

    round: int
    model: str
    model_path: str
    base_model: str
    init_model: str
    boxes: int
    train_boxes: int
    held_out_boxes: int
    iou_before: dict[str, float | None] = field(default_factory=dict)
    iou_after: dict[str, float | None] = field(default_factory=dict)
    label_minutes: float = 0.0
    train_minutes: float = 0.0
    created: str = ""
    who: str = ""
    held_out: list[str] = field(default_factory=list)
    trained: list[str] = field(default_factory=list)
    adopted: bool = True
    verdict: str = ""
    scores: dict[str, Any] = field(default_factory=dict)
    recipe: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The round as JSON-serialisable data."""
        return asdict(self)


def current_model(rounds: list[Round], proposing_model: str | None) -> str | None:
    """The project's current model: the last adopted version, else the proposing model.

    A version the judge did not adopt is never current by itself; the analyst may still
    pick it by name.
    """
    adopted = [r for r in rounds if r.adopted]
    if adopted:
        return adopted[-1].model
    return rounds[0].base_model if rounds else proposing_model

"""The label project's round history: one row per fine-tuning round, in the GeoPackage.

The ``rounds`` table (no geometry) records what each round produced: the new model
version, the model it started from, how many boxes it trained on and held out, IoU per
class on the held-out boxes before and after, and the minutes spent labeling and
training. The label dock shows it; closing QGIS and coming back finds it where it was.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..raster.vectorize import ogr_transaction

#: The label project's table of fine-tuning rounds.
ROUNDS_LAYER = "rounds"


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


_JSON_FIELDS = ("iou_before", "iou_after", "held_out", "trained", "scores")


def read_rounds(project: str | Path) -> list[Round]:
    """The project's rounds, first round first (empty before the first fine-tuning)."""
    from osgeo import ogr

    project = Path(project).expanduser()
    dataset = ogr.Open(str(project)) if project.is_file() else None
    layer = dataset.GetLayerByName(ROUNDS_LAYER) if dataset else None
    if layer is None:
        return []
    rounds = []
    for feature in layer:
        values = feature.items()
        for name in _JSON_FIELDS:
            values[name] = (
                json.loads(values.get(name) or "null")
                or Round.__dataclass_fields__[name].default_factory()
            )
        if values.get("adopted") is None:  # rounds of before the judge were all adopted
            values["adopted"] = True
        values["adopted"] = bool(values["adopted"])
        values = {k: v for k, v in values.items() if v is not None}
        rounds.append(Round(**{k: v for k, v in values.items() if k in Round.__annotations__}))
    return sorted(rounds, key=lambda r: r.round)


def append_round(project: str | Path, entry: Round) -> None:
    """Add a round to the project's history (one transaction).

    Raises:
        InputError: If the project cannot be opened for writing.
    """
    from osgeo import ogr

    project = Path(project).expanduser()
    dataset = ogr.Open(str(project), 1) if project.is_file() else None
    if dataset is None:
        raise InputError(f"cannot open the label project {project} for writing")
    layer = dataset.GetLayerByName(ROUNDS_LAYER)
    values = entry.to_dict()
    if layer is None:
        layer = dataset.CreateLayer(ROUNDS_LAYER, None, ogr.wkbNone)
    kinds = {bool: ogr.OFTInteger, int: ogr.OFTInteger, float: ogr.OFTReal}
    definition = layer.GetLayerDefn()
    for name, value in values.items():  # a project of an earlier version gains new fields
        if definition.GetFieldIndex(name) < 0:
            layer.CreateField(ogr.FieldDefn(name, kinds.get(type(value), ogr.OFTString)))
    try:
        with ogr_transaction(dataset):
            feature = ogr.Feature(layer.GetLayerDefn())
            for name, value in values.items():
                if name in _JSON_FIELDS:
                    value = json.dumps(value)
                feature.SetField(name, int(value) if isinstance(value, bool) else value)
            layer.CreateFeature(feature)
    finally:
        dataset = None


def current_model(rounds: list[Round], proposing_model: str | None) -> str | None:
    """The project's current model: the last adopted version, else the proposing model.

    A version the judge did not adopt is never current by itself; the analyst may still
    pick it by name.
    """
    adopted = [r for r in rounds if r.adopted]
    if adopted:
        return adopted[-1].model
    return rounds[0].base_model if rounds else proposing_model

"""Fine-tune a model on a label project's done boxes: one round of the active-learning loop.

A round (:func:`fine_tune`):

1. adds the project's done boxes to its label store (``labels_to_store``: the same Zarr
   + STAC store as ingestion; each Item records the scene, the box, the project, who
   labeled it and when);
2. holds about a quarter of the boxes out (chosen by a hash of the box's place, so a box
   stays on its side as more are labeled) for validation and the before/after scores;
3. scores the current model on the held-out boxes, fine-tunes it from its weights with
   cloudseg's training (the built-in ukis ONNX models through the smp import, an
   earlier round's ``.pt`` directly), and scores the new version on the same boxes;
4. registers the new version (see :func:`cloudseg.backend.models.registry.register_model`)
   with its card (base model, round, boxes, metrics before and after) and appends the
   round to the project's history (``rounds`` table).

A failure or cancel before the end registers nothing and leaves the history as it was;
boxes already added to the store stay there, complete (the next round reuses them).
"""

from __future__ import annotations

import datetime as dt
import tempfile
import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..backend.active.history import Round, append_round, read_rounds
from ..backend.active.labels import labeled_boxes, labels_to_store, login_name
from ..backend.callbacks import CancelCallback, ProgressCallback
from ..backend.errors import CancelledError, InputError
from ..backend.models.cards import ModelCard, metric_entry
from ..backend.models.registry import free_model_name, load_model, register_model

#: Share of the labeled boxes held out.
HELD_OUT_SHARE = 0.25


@dataclass
class FineTuneResult:
    """What a round produced: the registered version and the round's history entry."""

    model: str
    model_path: Path
    round: Round
    store: str

    def to_dict(self) -> dict[str, Any]:
        """Return the result as JSON-serialisable data."""
        return {"model": self.model, "model_path": str(self.model_path), "store": self.store} | {
            "round": self.round.to_dict()
        }


def default_store(project: Path) -> Path:
    """The label store beside a project: ``<project stem>-store``."""
    return project.with_name(f"{project.stem}-store")


def held_out(scenes: list[str], share: float = HELD_OUT_SHARE) -> list[str]:
    """The stored boxes held out: a stable share by a hash of each id; at least one.

    With one box nothing can be held out (an error); with two or more, at least one box
    is held out and at least one is trained on.

    Raises:
        InputError: With fewer than two boxes.
    """
    if len(scenes) < 2:
        raise InputError(
            f"fine-tuning needs at least 2 done boxes (one is held out to score the model); "
            f"the project has {len(scenes)}"
        )
    key = {s: zlib.crc32(s.encode()) / 2**32 for s in scenes}
    chosen = [s for s in scenes if key[s] < share]
    ordered = sorted(scenes, key=key.get)
    if not chosen:
        chosen = ordered[:1]
    if len(chosen) == len(scenes):
        chosen = chosen[:-1]
    return sorted(chosen)


def _iou(metrics: dict[str, Any]) -> dict[str, float | None]:
    """IoU per class and their mean, rounded, from an evaluation's metrics."""
    per_class = {
        name: (round(m["iou"], 4) if m.get("iou") is not None else None)
        for name, m in metrics["per_class"].items()
    }
    mean = metrics.get("mean_iou")
    return per_class | {"mean": round(mean, 4) if mean is not None else None}


def _minutes(start: str | None, end: str | None) -> float:
    """Minutes between two ISO times (0 when either is missing)."""
    if not start or not end:
        return 0.0
    delta = dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start)
    return round(max(delta.total_seconds(), 0.0) / 60, 1)


def fine_tune(
    project: str | Path,
    scene: str | Path,
    model: str | None = None,
    store: str | Path | None = None,
    epochs: int = 5,
    batch_size: int = 4,
    endpoint_url: str | None = None,
    context: int | None = None,
    progress: ProgressCallback | None = None,
    cancelled: CancelCallback | None = None,
) -> FineTuneResult:
    """Run one round: store the done boxes, fine-tune, score, register the new version.

    Args:
        project: The label project's GeoPackage.
        scene: The scene its boxes were proposed on.
        model: The model to start from; default the last round's version, else the
            model that made the proposals.
        store: The label store; default ``<project stem>-store`` beside the project.
        epochs: Training epochs (a few are enough for a few dozen boxes).
        batch_size: Windows per step.
        endpoint_url: S3 endpoint for an ``s3://`` store.
        context: Pixels of unlabeled image stored around each box (default a quarter
            of the box edge); a box already in the store keeps its stored window.
        progress: Called with (percent, message).
        cancelled: Polled between steps and training batches.

    Returns:
        A :class:`FineTuneResult`.

    Raises:
        CloudsegError: Without enough done boxes, for an unknown model, or when cancelled.
    """
    from ..backend.raster.reader import open_scene
    from ..backend.store.dataset import open_dataset
    from .config import Config
    from .evaluate import evaluate_store
    from .train import train

    started = time.perf_counter()
    project = Path(project).expanduser()
    report = progress or (lambda percent, message: None)
    stop = cancelled or (lambda: False)
    history = read_rounds(project)
    with open_scene(scene) as reader:
        boxes = labeled_boxes(project, reader.transform) if project.is_file() else []
    if not boxes:
        raise InputError(f"{project.name} has no done boxes; label proposals and mark them done")
    init = model or (history[-1].model if history else boxes[0][1]["model"])
    start = load_model(init)
    init_card = start.card
    base = history[0].base_model if history else init_card.name
    store = str(store or default_store(project))

    report(2, f"adding {len(boxes)} done box(es) to the label store")
    stored = labels_to_store(
        project, scene, store, init, endpoint_url, cancelled=stop, context=context
    )
    ids = sorted(stored.ingested + stored.skipped)
    validation = held_out(ids)
    training = [s for s in ids if s not in validation]
    if stop():
        raise CancelledError("fine-tuning cancelled; no model version was made")

    report(8, f"scoring {init_card.name} on {len(validation)} held-out box(es)")
    before = evaluate_store(init, store, validation, endpoint_url=endpoint_url, cancelled=stop)
    dataset = open_dataset(store, endpoint_url)
    window = min(min(dataset.shape(s)) for s in ids)
    config = Config.from_dict(
        {
            "name": "fine-tune",
            "data": {
                "store": store,
                "endpoint_url": endpoint_url,
                "bands": list(init_card.bands),
                "classes": init_card.class_names(),
                "window": window,
                "stride": window,
                "samples_per_epoch": max(8 * len(training), batch_size),
                "normalization": "card",
                "product_level": init_card.product_level,
                "split": {"val_scenes": validation},
            },
            # A built-in ONNX model by name (imported into smp), a version by its .pt.
            "model": {"init": init_card.name if start.builtin else str(start.path)},
            "train": {"epochs": epochs, "batch_size": batch_size, "lr": 1e-4, "patience": epochs},
        }
    )

    def training_progress(percent: float, message: str) -> None:
        report(12 + 0.76 * percent, f"fine-tuning: {message}")

    with tempfile.TemporaryDirectory(prefix="cloudseg-finetune-") as work:
        config = replace(config, output=str(Path(work) / "run"))
        trained = train(config, progress=training_progress, cancelled=stop)
        report(90, "scoring the new version on the held-out boxes")
        after = evaluate_store(
            str(trained.model_path), store, validation, endpoint_url=endpoint_url, cancelled=stop
        )
        number = len(history) + 1
        name = free_model_name(f"{project.stem}-r{number}")
        iou_before, iou_after = _iou(before.metrics), _iou(after.metrics)
        labeled_at = [f.get("labeled_at") for _, f in boxes if f.get("labeled_at")]
        proposed = [f.get("proposed") for _, f in boxes if f.get("proposed")]
        since = history[-1].created if history else ""
        new_proposed = [p for p in proposed if p >= since] or proposed
        who = login_name()
        entry = Round(
            round=number,
            model=name,
            model_path="",
            base_model=base,
            init_model=init_card.name,
            boxes=len(ids),
            train_boxes=len(training),
            held_out_boxes=len(validation),
            iou_before=iou_before,
            iou_after=iou_after,
            label_minutes=_minutes(min(new_proposed, default=None), max(labeled_at, default=None)),
            train_minutes=round((time.perf_counter() - started) / 60, 1),
            created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            who=who,
            held_out=validation,
        )
        trained_card = load_model(str(trained.model_path)).card
        card = _version_card(trained_card, name, entry, project, before, after)
        if stop():
            raise CancelledError("fine-tuning cancelled; no model version was made")
        report(97, f"registering {name}")
        registered = _register(trained.model_path, card, Path(work))
    entry.model_path = str(registered.path)
    append_round(project, entry)
    report(100, f"{name}: held-out mean IoU {iou_before['mean']} -> {iou_after['mean']}")
    return FineTuneResult(name, registered.path, entry, store)


def _version_card(
    trained: ModelCard, name: str, entry: Round, project: Path, before: Any, after: Any
) -> ModelCard:
    """The new version's card: its name, what it came from, and its held-out scores."""
    data = f"{project.name}: {entry.held_out_boxes} held-out box(es)"
    return replace(
        trained,
        name=name,
        description=(
            f"{entry.base_model} fine-tuned on {entry.train_boxes} box(es) labeled in "
            f"{project.name} (round {entry.round}, from {entry.init_model})."
        ),
        source=dict(trained.source)
        | {
            "base_model": entry.base_model,
            "init": entry.init_model,
            "project": str(project),
            "round": entry.round,
            "labeled_boxes": entry.boxes,
            "train_boxes": entry.train_boxes,
            "held_out_boxes": entry.held_out_boxes,
        },
        metrics=[
            metric_entry(project.stem, data, f"before ({entry.init_model})", before.metrics),
            metric_entry(project.stem, data, "after", after.metrics),
        ],
    )


def _register(model_path: Path, card: ModelCard, work: Path) -> Any:
    """Register the trained checkpoint under the version's card (also inside the file)."""
    import torch

    checkpoint = torch.load(model_path, map_location="cpu", weights_only=True)
    checkpoint["card"] = card.to_dict()
    final = work / f"{card.name}.pt"
    torch.save(checkpoint, final)
    return register_model(final, card)

"""One round of the active-learning loop: a label project's done boxes -> a judged version.

A round (:func:`fine_tune`):

1. adds the project's done boxes to its label store (``labels_to_store``: the same Zarr
   + STAC store as ingestion; each Item records the scene, the box, the project, who
   labeled it and when);
2. splits them into trained and held-out boxes by the stable rule of
   :func:`cloudseg.backend.active.judge.split_boxes` (about a quarter held out from two
   boxes on; a box never changes side);
3. fine-tunes the current model (the last adopted version, else the model that proposed
   the boxes) with a recipe of :mod:`.adapt` (default :data:`.adapt.DEFAULT_RECIPE`:
   the network's features computed once, only the segmentation head trained, with the
   base model's own predictions kept on the unlabeled pixels around the boxes and in
   unlabeled windows of the scene);
4. segments the held-out boxes, with the scene around them, with the current model and
   with the new version (the same engine and tiling as ``cloudseg segment``), and lets
   the judge (:func:`cloudseg.backend.active.judge.judge`) decide: the new version is
   adopted only if no class with enough held-out pixels loses more than 0.01 IoU and the
   mean rises by at least 0.01;
5. registers the new version either way (see
   :func:`cloudseg.backend.models.registry.register_model`), with the base card's
   inference settings (tiling, resolution, normalization), the verdict and the whole
   round in its card, and appends the round (adopted or not) to the project's history.

A failure or cancel before the end registers nothing and leaves the history as it was;
boxes already added to the store stay there, complete (the next round reuses them).
One round runs at a time per project (a lock beside it). A run killed (SIGKILL, a power
cut) after registering its version and before recording its round is completed by the
next round, which first records that round from the version's card, so the history and
the model folder always agree; it also removes what killed runs left (temporaries of
a registration, the working folder ``.cloudseg-finetune.<pid>-*.part`` in the system's
temporary folder) where their process is gone.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..backend.active.history import Round, current_model
from ..backend.active.judge import SceneChange, Verdict, judge, split_boxes
from ..backend.active.labels import labels_to_store, stored_box_id
from ..backend.active.project import LabelProject, StoredProposal, login_name
from ..backend.atomic import claim, temporary_folder
from ..backend.callbacks import CancelCallback, ProgressCallback
from ..backend.errors import CancelledError, InputError
from ..backend.models.cards import ModelCard, metric_entry
from ..backend.models.registry import (
    clean_models_dir,
    free_model_name,
    load_checkpoint,
    load_model,
    models_dir,
    register_model,
    registered_models,
)
from ..backend.store.keys import IGNORE
from .adapt import DEFAULT_RECIPE, AdaptResult, Recipe, adapt, recipe_named, set_threads

#: Unlabeled windows of the scene used for distillation, per trained box (at most).
UNLABELED_PER_BOX = 1
#: Tiles of the scene (at most) where a round checks what a new version changes outside
#: the labeled boxes (see :class:`cloudseg.backend.active.judge.SceneChange`).
CHECK_WINDOWS = 6


def _around(box: Any, context: int | None) -> tuple[int, int, int]:
    """A labeled box with the context stored around it, ``(row, col, size)``."""
    extra = box.size // 4 if context is None else context
    return (box.row - extra, box.col - extra, box.size + 2 * extra)


@dataclass
class FineTuneResult:
    """What a round produced: the registered version, the verdict and the history entry."""

    model: str
    model_path: Path
    round: Round
    store: str
    verdict: Verdict
    current: str

    @property
    def adopted(self) -> bool:
        """Whether the new version became the project's current model."""
        return self.verdict.adopted

    def to_dict(self) -> dict[str, Any]:
        """Return the result as JSON-serialisable data."""
        return {
            "model": self.model,
            "model_path": str(self.model_path),
            "store": self.store,
            "adopted": self.adopted,
            "current_model": self.current,
            "verdict": self.verdict.to_dict(),
            "round": self.round.to_dict(),
        }


def _minutes(start: str | None, end: str | None) -> float:
    """Minutes between two ISO times (0 when either is missing)."""
    if not start or not end:
        return 0.0
    delta = dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start)
    return round(max(delta.total_seconds(), 0.0) / 60, 1)


def normalized(reflectance: np.ndarray, card: ModelCard) -> np.ndarray:
    """Reflectance ``(..., bands, rows, cols)`` as the card's model input; NaN -> 0."""
    return np.nan_to_num(card.normalize(reflectance.astype(np.float32)), nan=0.0)


def _overlap(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    """Whether two squares ``(row, col, size)`` share a pixel."""
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[2] and b[1] < a[1] + a[2]


def _unlabeled_windows(
    reader: Any,
    card: ModelCard,
    size: int,
    avoid: list[tuple[int, int, int]],
    count: int,
    seed: int,
) -> np.ndarray:
    """``count`` windows of the scene that overlap no held-out box, normalized."""
    rng = np.random.default_rng(seed)
    rows, cols = reader.height, reader.width
    if count <= 0 or rows < size or cols < size:
        return np.zeros((0, len(card.bands), size, size), np.float32)
    found = []
    for _ in range(50 * count):
        if len(found) == count:
            break
        r, c = int(rng.integers(0, rows - size + 1)), int(rng.integers(0, cols - size + 1))
        if any(_overlap((r, c, size), other) for other in avoid):
            continue
        window = reader.read(list(card.bands), r, c, size, size)
        if np.isnan(window).mean() > 0.5:
            continue
        found.append(normalized(window, card))
    return np.stack(found) if found else np.zeros((0, len(card.bands), size, size), np.float32)


def _window_runner(model: str, network: Any = None) -> tuple[Any, Any, Any]:
    """The model loaded as a round runs it: its card, run options and a float32 torch runner."""
    from ..backend.inference.options import RunOptions
    from ..backend.inference.runners import TorchRunner

    loaded = load_model(model)
    options = RunOptions(model=model, device="cpu", precision="fp32", runtime="torch")
    return loaded.card, options, TorchRunner(loaded, "cpu", "fp32", network=network)


def _predict_window(
    card: ModelCard,
    options: Any,
    runner: Any,
    reader: Any,
    row: int,
    col: int,
    size: int,
    width: int | None = None,
) -> Any:
    """A model's prediction of a part of the scene, with half a tile around it.

    The part (``size`` rows by ``width`` columns; a square where ``width`` is None) is
    segmented in a window of the scene that reaches half a tile beyond it, by the same
    engine and tiling as ``cloudseg segment``.

    Returns:
        The :class:`~cloudseg.backend.inference.engine.Prediction` cropped to the part.
    """
    from ..backend.inference.engine import ArrayScene, predict

    height, width = size, size if width is None else width
    tile, _ = options.tiling(card)
    margin = tile // 2
    bands = list(card.bands)
    r0, c0 = max(row - margin, 0), max(col - margin, 0)
    r1, c1 = min(row + height + margin, reader.height), min(col + width + margin, reader.width)
    image = reader.read(bands, r0, c0, r1 - r0, c1 - c0)
    prediction = predict(ArrayScene(image, bands, reader.resolution_m), options, runner)
    rows = slice(row - r0, row - r0 + height)
    cols = slice(col - c0, col - c0 + width)
    return replace(
        prediction,
        probabilities=prediction.probabilities[:, rows, cols],
        nodata=prediction.nodata[rows, cols],
    )


def held_out_confusion(
    model: str,
    reader: Any,
    windows: list[tuple[int, int, int, np.ndarray]],
    classes: int,
    network: Any = None,
) -> np.ndarray:
    """Confusion matrix of a model on the held-out boxes, segmented with the scene around them.

    Each box is segmented in a window of the scene that reaches half a tile beyond it, by
    the same engine and tiling as ``cloudseg segment``, in float32 torch: both models of
    a round run the same way, so only their weights differ.

    Args:
        model: The model's name or file (its card: bands, tiling, normalization).
        reader: The scene, open.
        windows: ``(row, col, size, labels)`` of each held-out window.
        classes: Number of classes.
        network: The model's network already in memory (None: loaded from ``model``).
    """
    from .metrics import confusion_matrix

    card, options, runner = _window_runner(model, network)
    matrix = np.zeros((classes, classes), np.int64)
    for row, col, size, labels in windows:
        inside = _predict_window(card, options, runner, reader, row, col, size).classes()
        matrix += confusion_matrix(labels, inside, classes)
    return matrix


def _starts(length: int, size: int) -> list[int]:
    """Starts of ``size`` windows that cover ``length`` pixels (the last one flush with the end)."""
    starts = list(range(0, length - size + 1, size))
    return starts if starts[-1] == length - size else [*starts, length - size]


#: ``(row, col, height, width)`` of a part of the scene.
Area = tuple[int, int, int, int]


def check_windows(reader: Any, size: int, count: int, seed: int) -> list[Area]:
    """Parts ``(row, col, height, width)`` where a round checks what a new version does.

    A scene no larger than ``count`` tiles (a chip, or half of one) is checked whole, in
    one part segmented as ``cloudseg segment`` would; a larger one in ``count`` of the
    tiles that cover it, at random. Labeled boxes may lie inside; :func:`scene_before`
    leaves their pixels out (see :class:`cloudseg.backend.active.judge.SceneChange`).
    """
    if reader.height * reader.width <= count * size * size:
        return [(0, 0, reader.height, reader.width)]
    size = min(size, reader.height, reader.width)
    grid = [
        (r, c, size, size)
        for r in _starts(reader.height, size)
        for c in _starts(reader.width, size)
    ]
    picked = np.random.default_rng(seed).choice(len(grid), min(count, len(grid)), replace=False)
    return [grid[i] for i in sorted(picked)]


def _labeled_pixels(window: Area, labeled: list[tuple[int, int, int]]) -> np.ndarray:
    """The pixels of ``window`` that lie in any of the ``labeled`` boxes ``(row, col, size)``."""
    row, col, height, width = window
    inside = np.zeros((height, width), bool)
    for r, c, s in labeled:
        r0, c0 = max(r - row, 0), max(c - col, 0)
        r1, c1 = min(r + s - row, height), min(c + s - col, width)
        if r0 < r1 and c0 < c1:
            inside[r0:r1, c0:c1] = True
    return inside


def scene_before(
    model: str,
    reader: Any,
    windows: list[Area],
    network: Any = None,
    labeled: list[tuple[int, int, int]] | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The current model's probabilities on each check window, and the pixels left out.

    Left out: nodata, and every labeled box ``(row, col, size)`` in ``labeled`` (there a
    version may change what the labels taught it). The context stored around a box is
    checked: it is unlabeled, and the recipe holds the version to the model there.
    """
    card, options, runner = _window_runner(model, network)
    kept = []
    for row, col, height, width in windows:
        prediction = _predict_window(card, options, runner, reader, row, col, height, width)
        left_out = prediction.nodata | _labeled_pixels((row, col, height, width), labeled or [])
        kept.append((prediction.probabilities, left_out))
    return kept


def scene_change(
    model: str,
    reader: Any,
    windows: list[Area],
    before: list[tuple[np.ndarray, np.ndarray]],
    network: Any = None,
) -> SceneChange:
    """What the new version ``model`` changes of ``before`` (see :func:`scene_before`).

    No windows: nothing confident, so the scene checks no class.
    """
    card, options, runner = _window_runner(model, network)
    nothing = [0] * len(card.classes)
    change = SceneChange(nothing, nothing)
    for (row, col, height, width), (probabilities, nodata) in zip(windows, before, strict=True):
        after = _predict_window(card, options, runner, reader, row, col, height, width).classes()
        change = change + SceneChange.measure(probabilities, after, nodata)
    return change


def _padded(images: list[np.ndarray], labels: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Windows cut to one size and padded to a multiple of the encoder's stride (32).

    The image is mirrored into the padding; its labels there are ignored.
    """
    from .adapt import STRIDE

    size = min(min(m.shape) for m in labels)
    padded = -(-size // STRIDE) * STRIDE
    extra = padded - size
    image = np.stack([i[:, :size, :size] for i in images])
    label = np.stack([m[:size, :size] for m in labels])
    if extra:
        image = np.pad(image, ((0, 0), (0, 0), (0, extra), (0, extra)), mode="reflect")
        label = np.pad(label, ((0, 0), (0, extra), (0, extra)), constant_values=IGNORE)
    return image, label


def fine_tune(
    project: str | Path | LabelProject,
    scene: str | Path,
    model: str | None = None,
    store: str | Path | None = None,
    recipe: str | Recipe = DEFAULT_RECIPE,
    steps: int | None = None,
    endpoint_url: str | None = None,
    context: int | None = None,
    seed: int = 0,
    progress: ProgressCallback | None = None,
    cancelled: CancelCallback | None = None,
) -> FineTuneResult:
    """Run one round: store the done boxes, fine-tune, judge, register the new version.

    Args:
        project: The label project.
        scene: The scene its boxes were proposed on (only its boxes are used).
        model: The model to start from; default the project's current model (the last
            adopted version, else the model that made the proposals).
        store: The label store; default the project's (``<project stem>-store``).
        recipe: A recipe of :data:`cloudseg.training.adapt.RECIPES` (or its name).
        steps: Optimizer steps (default the recipe's).
        endpoint_url: S3 endpoint for an ``s3://`` store.
        context: Pixels of unlabeled image stored around each box (default a quarter
            of the box edge); a box already in the store keeps its stored window.
        seed: Seeds the window order and the unlabeled windows.
        progress: Called with (percent, message); training's messages say the time left.
        cancelled: Polled between steps.

    Returns:
        A :class:`FineTuneResult`; ``adopted`` says whether the version became current.

    Raises:
        CloudsegError: Without enough done boxes, for an unknown model, or when cancelled.
    """
    from ..backend.models.networks import torch_network
    from ..backend.raster.reader import open_scene, scene_key
    from ..backend.store.dataset import open_dataset

    started = time.perf_counter()
    project = project if isinstance(project, LabelProject) else LabelProject(project)
    report = progress or (lambda percent, message: None)
    stop = cancelled or (lambda: False)
    chosen = recipe_named(recipe) if isinstance(recipe, str) else recipe
    if steps is not None:
        if steps < 1:
            raise InputError("steps must be at least 1")
        chosen = replace(chosen, steps=steps)
    key = scene_key(scene)
    clean_models_dir()  # what registrations killed midway left
    with claim([project.path]), open_scene(scene) as reader:  # one round at a time
        _record_unrecorded(project, report)
        contents = project.read(labels=True, crs=reader.crs)
        history = contents.rounds
        boxes = [p for p in contents.with_status("labeled") if p.scene == key]
        if not boxes:
            raise InputError(
                f"{project.path.name} has no done boxes of {key}; label proposals and mark "
                "them done"
            )
        if len(boxes) < 2:
            raise InputError(
                "fine-tuning needs at least 2 done boxes (one is held out to judge the new "
                f"version); the project has {len(boxes)} of {key}"
            )
        init = model or current_model(history, boxes[0].model)
        start = load_model(init)
        init_card = start.card
        base = history[0].base_model if history else init_card.name
        store = str(store or project.store_folder)

        report(2, f"adding {len(boxes)} done box(es) to the label store")
        stored = labels_to_store(
            project,
            scene,
            store,
            init,
            endpoint_url,
            cancelled=stop,
            context=context,
            contents=contents,
            reader=reader,
        )
        training, validation = _split(boxes, key, reader.transform, stored, history)
        if not training:
            raise InputError("every done box is held out; label more boxes to train on")
        if stop():
            raise CancelledError("fine-tuning cancelled; no model version was made")
        report(5, f"reading {len(training)} training and {len(validation)} held-out box(es)")
        dataset = open_dataset(store, endpoint_url)
        images, labels = _training_windows(dataset, training, init_card)
        judged_windows = held_out_windows(dataset, validation)
        set_threads()
        avoid = [(r, c, s) for r, c, s, _ in judged_windows]
        unlabeled = _unlabeled_windows(
            reader, init_card, labels.shape[-1], avoid, UNLABELED_PER_BOX * len(training), seed
        )
        if stop():
            raise CancelledError("fine-tuning cancelled; no model version was made")
        report(8, f"loading {init_card.name}")
        network = torch_network(start)
        classes = len(init_card.classes)
        report(10, f"judging {init_card.name} on {len(validation)} held-out box(es)")
        before = held_out_confusion(init, reader, judged_windows, classes, network)
        from ..backend.inference.options import RunOptions

        tile, _ = RunOptions(model=init).tiling(init_card)
        labeled = [_around(p.box(reader.transform), 0) for p in boxes]
        checks = check_windows(reader, tile, CHECK_WINDOWS, seed)
        report(12, f"reading {init_card.name}'s classes outside the boxes ({len(checks)} tiles)")
        scene_probabilities = scene_before(init, reader, checks, network, labeled)

        def training_progress(percent: float, message: str) -> None:
            report(15 + 0.75 * percent, f"fine-tuning ({chosen.name}): {message}")

        trained = adapt(network, images, labels, chosen, unlabeled, seed, training_progress, stop)
        number = len(history) + 1
        new_name = free_model_name(f"{project.name}-r{number}")
        with temporary_folder("cloudseg-finetune") as work:
            candidate = _save_version(network, _draft_card(init_card, new_name), work)
            report(91, f"judging {new_name} on {len(validation)} held-out box(es)")
            after = held_out_confusion(str(candidate), reader, judged_windows, classes, network)
            report(94, f"checking what {new_name} changes outside the boxes")
            change = scene_change(str(candidate), reader, checks, scene_probabilities, network)
            verdict = judge(
                before,
                after,
                init_card.class_names(),
                init_card.name,
                new_name,
                change=change,
            )
            entry = replace(
                _round_entry(number, new_name, base, init_card.name, history, boxes),
                model_path=str(models_dir() / f"{new_name}.pt"),
                boxes=len(training) + len(validation),
                train_boxes=len(training),
                held_out_boxes=len(validation),
                iou_before=verdict.iou("before"),
                iou_after=verdict.iou("after"),
                train_minutes=round((time.perf_counter() - started) / 60, 1),
                held_out=validation,
                trained=training,
                adopted=verdict.adopted,
                verdict=verdict.reason,
                scores={k: v.__dict__ for k, v in verdict.classes.items()},
                recipe=chosen.name,
                seconds=round(time.perf_counter() - started, 1),
            )
            card = _version_card(init_card, new_name, entry, project, verdict, chosen, trained)
            if stop():
                raise CancelledError("fine-tuning cancelled; no model version was made")
            report(97, f"registering {new_name}")
            # The version, then its round: a run killed between the two leaves a version
            # whose card holds the round, recorded by the next run (_record_unrecorded).
            registered = _register(candidate, card, work)
        entry.model_path = str(registered.path)
        project.append_round(entry)
    current = current_model([*history, entry], init_card.name)
    report(100, f"{new_name}: {verdict.reason}")
    return FineTuneResult(new_name, registered.path, entry, store, verdict, current)


def _record_unrecorded(project: LabelProject, report: ProgressCallback) -> list[Round]:
    """Record the rounds of this project's versions that were registered, not recorded.

    A round registers its version, then appends the round to the project's history; a
    run killed between the two (SIGKILL, a power cut) leaves a registered version that
    no round names. Its card holds the whole round (``source.round_entry``), so the next
    round records it as it was (renumbered after the rounds recorded meanwhile) before
    starting: the history and the model folder agree again, and the new round's number
    and name follow it.

    Returns:
        The rounds recorded.
    """
    rounds = project.rounds()
    named = {r.model for r in rounds}
    here = str(project.path.resolve())
    found = [
        m
        for m in registered_models()
        if m.card.source.get("project_path") == here
        and isinstance(m.card.source.get("round_entry"), dict)
        and m.card.name not in named
    ]
    recorded = []
    for version in sorted(found, key=lambda m: m.card.source["round_entry"].get("round", 0)):
        values = version.card.source["round_entry"]
        entry = Round(**{k: v for k, v in values.items() if k in Round.__annotations__})
        entry.round, entry.model_path = len(rounds) + 1, str(version.path)
        project.append_round(entry)
        rounds.append(entry)
        recorded.append(entry)
        report(1, f"recorded round {entry.round} ({entry.model}) of a run stopped before it")
    return recorded


def _split(
    boxes: list[StoredProposal], scene: str, transform: Any, stored: Any, history: list[Round]
) -> tuple[list[str], list[str]]:
    """The stored boxes as (trained, held out), in the order they were marked done.

    Earlier rounds' sides are kept; for rounds of before the stable split (no ``trained``
    recorded) every box done by the last round and not held out counts as trained.
    """
    ids = set(stored.ingested + stored.skipped)
    by_time = sorted(boxes, key=lambda p: (p.labeled_at or "", p.fid))
    ordered = [stored_box_id(scene, p.box(transform)) for p in by_time]
    ordered = [i for i in ordered if i in ids]
    held_before = {s for r in history for s in r.held_out}
    trained_before = {s for r in history for s in r.trained}
    if history and not trained_before:
        last = history[-1].created
        trained_before = {
            stored_box_id(scene, p.box(transform))
            for p in boxes
            if (p.labeled_at or "") <= last
            and stored_box_id(scene, p.box(transform)) not in held_before
        }
    return split_boxes(ordered, held_before, trained_before)


def _training_windows(
    dataset: Any, scenes: list[str], card: ModelCard
) -> tuple[np.ndarray, np.ndarray]:
    """The stored training windows as normalized model input and labels (no data ignored)."""
    from .evaluate import store_scene

    images, labels = [], []
    for scene_id in scenes:
        array, mask = store_scene(dataset, scene_id)
        images.append(normalized(array.reflectance, card))
        labels.append(np.where(np.isnan(array.reflectance).any(0), IGNORE, mask).astype(np.uint8))
    return _padded(images, labels)


def held_out_windows(dataset: Any, scenes: list[str]) -> list[tuple[int, int, int, np.ndarray]]:
    """Each held-out box's place on the scene's grid and its labels (the box, no context)."""
    from .evaluate import store_scene

    windows = []
    for scene_id in scenes:
        _, mask = store_scene(dataset, scene_id)
        properties = dataset.item(scene_id).properties
        row, col, _ = properties["cloudseg:label_window"]
        box_row, box_col, size = properties["cloudseg:label_box"]
        r, c = box_row - row, box_col - col
        windows.append((box_row, box_col, size, mask[r : r + size, c : c + size]))
    return windows


def _round_entry(
    number: int,
    name: str,
    base: str,
    init: str,
    history: list[Round],
    boxes: list[StoredProposal],
) -> Round:
    """The round's history row: who, when, and the minutes spent labeling its boxes."""
    labeled_at = [p.labeled_at for p in boxes if p.labeled_at]
    proposed = [p.proposed for p in boxes if p.proposed]
    since = history[-1].created if history else ""
    new_proposed = [p for p in proposed if p >= since] or proposed
    return Round(
        round=number,
        model=name,
        model_path="",
        base_model=base,
        init_model=init,
        boxes=len(boxes),
        train_boxes=0,
        held_out_boxes=0,
        label_minutes=_minutes(min(new_proposed, default=None), max(labeled_at, default=None)),
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        who=login_name(),
    )


def _draft_card(init: ModelCard, name: str) -> ModelCard:
    """The version's card before it is judged: the init card's settings, torch weights."""
    return replace(init, name=name, format="torch", output="logits", metrics=[])


def _save_version(network: Any, card: ModelCard, folder: Path) -> Path:
    """Write ``{"card", "state_dict"}`` of a version to ``folder`` (a model file)."""
    import torch

    path = folder / f"{card.name}.pt"
    state = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    torch.save({"card": card.to_dict(), "state_dict": state}, path)
    return path


def _version_card(
    init: ModelCard,
    name: str,
    entry: Round,
    project: LabelProject,
    verdict: Verdict,
    recipe: Recipe,
    trained: AdaptResult,
) -> ModelCard:
    """The new version's card: the init card's inference settings, its origin and verdict.

    Tiling, resolution, bands and normalization stay the base card's: the training window
    is not an inference setting.
    """
    data = f"{project.path.name}: {entry.held_out_boxes} held-out box(es)"

    def metrics(which: str) -> dict[str, Any]:
        per_class = {n: {"iou": getattr(s, which)} for n, s in verdict.classes.items() if s.judged}
        mean = verdict.mean_before if which == "before" else verdict.mean_after
        return {"per_class": per_class, "mean_iou": mean}

    return replace(
        _draft_card(init, name),
        description=(
            f"{entry.base_model} fine-tuned on {entry.train_boxes} box(es) labeled in "
            f"{project.path.name} (round {entry.round}, from {entry.init_model}, recipe "
            f"{recipe.name})."
        ),
        source=dict(init.source)
        | {
            "base_model": entry.base_model,
            "init": entry.init_model,
            "project": str(project.path),
            "round": entry.round,
            "labeled_boxes": entry.boxes,
            "train_boxes": entry.train_boxes,
            "held_out_boxes": entry.held_out_boxes,
            "recipe": recipe.to_dict(),
            "training": trained.to_dict(),
            "adopted": verdict.adopted,
            "verdict": verdict.reason,
            "project_path": str(project.path.resolve()),
            "round_entry": entry.to_dict(),
        },
        metrics=[
            metric_entry(project.name, data, f"before ({entry.init_model})", metrics("before")),
            metric_entry(project.name, data, "after", metrics("after")),
        ],
    )


def _register(model_path: Path, card: ModelCard, work: Path) -> Any:
    """Register the trained checkpoint under the version's card (also inside the file)."""
    import torch

    checkpoint = load_checkpoint(model_path)
    checkpoint["card"] = card.to_dict()
    final = work / "registered" / f"{card.name}.pt"
    final.parent.mkdir()
    torch.save(checkpoint, final)
    return register_model(final, card)

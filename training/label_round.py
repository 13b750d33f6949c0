"""The label round: one active-learning round of a label project, start to end.

:class:`LabelRound` is the round; the command line (:mod:`.label_cli`), the QGIS label
dock (``LabelDock``) and the Processing algorithms call it, and it calls each step's
owner, which keeps its own rules:

========  ============================================  ===================================
Step      :class:`LabelRound`                           Owner of the work
========  ============================================  ===================================
propose   :meth:`~LabelRound.propose`,                  ``backend/active/loop.py``
          :meth:`~LabelRound.rank`                      (segment, reuse a run);
                                                        ``backend/active/propose.py`` (rank)
label     (the analyst; the dock, ``labels add``)       ``backend/active/labels.py``,
                                                        ``backend/active/project.py``
store     :meth:`~LabelRound.store`, first step of      ``backend/active/labels.py``
          :meth:`~LabelRound.fine_tune`                 (``labels_to_store``)
split     :meth:`~LabelRound.fine_tune`                 ``backend/active/judge.py``
                                                        (``split_boxes``)
train     :meth:`~LabelRound.fine_tune`                 :mod:`.adapt` (the recipe) on the
                                                        windows of :mod:`.finetune`
judge     :meth:`~LabelRound.fine_tune`                 :mod:`.finetune` (held-out and scene
                                                        predictions), ``judge``
record    :meth:`~LabelRound.fine_tune`                 ``backend/models/registry.py``,
                                                        ``LabelProject.append_round``
re-run    :meth:`~LabelRound.rerun`                     ``backend/active/loop.py``
========  ============================================  ===================================

:meth:`LabelRound.fine_tune` (``cloudseg fine-tune``, the dock's "Fine-tune"):

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

:meth:`LabelRound.run` is the whole round after labeling: :meth:`~LabelRound.fine_tune`,
then :meth:`~LabelRound.rerun` with the project's current model.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..backend.active.history import Round, current_model
from ..backend.active.judge import Verdict, judge, split_boxes
from ..backend.active.labels import labels_to_store, stored_box_id
from ..backend.active.loop import Proposed, SceneRun, propose_on_scene, rerun
from ..backend.active.project import LabelProject, StoredProposal, login_name
from ..backend.active.propose import Proposal, propose
from ..backend.atomic import claim, temporary_folder
from ..backend.callbacks import CancelCallback, ProgressCallback
from ..backend.errors import CancelledError, InputError
from ..backend.inference.options import RunOptions
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
from ..backend.store.ingest import IngestResult
from .adapt import DEFAULT_RECIPE, AdaptResult, Recipe, adapt, recipe_named, set_threads
from .finetune import (
    CHECK_WINDOWS,
    UNLABELED_PER_BOX,
    check_windows,
    held_out_confusion,
    held_out_windows,
    scene_before,
    scene_change,
    training_windows,
    unlabeled_windows,
)


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


class LabelRound:
    """A label project's round on one scene: each step, in order, through its owner.

    Args:
        project: The label project (a path, or one already open).
        scene: The scene its boxes are proposed on (any input ``cloudseg segment``
            reads); None only to rank an uncertainty raster that records its scene.
    """

    def __init__(self, project: str | Path | LabelProject, scene: str | Path | None) -> None:
        self.project = project if isinstance(project, LabelProject) else LabelProject(project)
        self.scene = scene

    def __repr__(self) -> str:
        return f"LabelRound({self.project.path}, {self.scene})"

    def _scene(self) -> str | Path:
        if self.scene is None:
            raise InputError("give the scene the label project's boxes are on")
        return self.scene

    # -- 1. propose -----------------------------------------------------------------------
    def propose(
        self,
        model: str | None = None,
        box: int = 128,
        count: int = 20,
        progress: ProgressCallback | None = None,
        cancelled: CancelCallback | None = None,
        options: RunOptions | None = None,
    ) -> Proposed:
        """Propose the scene's most doubtful boxes (segmenting it first when needed).

        See :func:`cloudseg.backend.active.loop.propose_on_scene`.
        """
        return propose_on_scene(
            self.project, self._scene(), model, box, count, progress, cancelled, options
        )

    def rank(self, uncertainty: str | Path, box: int = 128, count: int = 20) -> list[Proposal]:
        """Propose the most doubtful boxes of an uncertainty raster made earlier.

        See :func:`cloudseg.backend.active.propose.propose`; the scene is the round's,
        else the one the raster records.
        """
        return propose(uncertainty, self.project, box, count, self.scene)

    # -- 3. store -------------------------------------------------------------------------
    def store(
        self,
        store: str | Path | None = None,
        model: str | None = None,
        endpoint_url: str | None = None,
        context: int | None = None,
        cancelled: CancelCallback | None = None,
    ) -> IngestResult:
        """Add the project's done boxes of the scene to a label store (the project's).

        See :func:`cloudseg.backend.active.labels.labels_to_store`.
        """
        return labels_to_store(
            self.project,
            self._scene(),
            store if store is not None else self.project.store_folder,
            model=model,
            endpoint_url=endpoint_url,
            cancelled=cancelled,
            context=context,
        )

    # -- 3 to 7. store, split, train, judge, record -----------------------------------------
    def fine_tune(
        self,
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

        Only the boxes of the round's scene are used.

        Args:
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
        project, scene = self.project, self._scene()
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
            images, labels = training_windows(dataset, training, init_card)
            judged_windows = held_out_windows(dataset, validation)
            set_threads()
            avoid = [(r, c, s) for r, c, s, _ in judged_windows]
            unlabeled = unlabeled_windows(
                reader, init_card, labels.shape[-1], avoid, UNLABELED_PER_BOX * len(training), seed
            )
            if stop():
                raise CancelledError("fine-tuning cancelled; no model version was made")
            report(8, f"loading {init_card.name}")
            network = torch_network(start)
            classes = len(init_card.classes)
            report(10, f"judging {init_card.name} on {len(validation)} held-out box(es)")
            before = held_out_confusion(init, reader, judged_windows, classes, network)
            tile, _ = RunOptions(model=init).tiling(init_card)
            labeled = [_square(p.box(reader.transform)) for p in boxes]
            checks = check_windows(reader, tile, CHECK_WINDOWS, seed)
            report(
                12, f"reading {init_card.name}'s classes outside the boxes ({len(checks)} tiles)"
            )
            scene_probabilities = scene_before(init, reader, checks, network, labeled)

            def training_progress(percent: float, message: str) -> None:
                report(15 + 0.75 * percent, f"fine-tuning ({chosen.name}): {message}")

            trained = adapt(
                network, images, labels, chosen, unlabeled, seed, training_progress, stop
            )
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

    # -- 8. re-run ------------------------------------------------------------------------
    def rerun(
        self,
        model: str | None = None,
        progress: ProgressCallback | None = None,
        cancelled: CancelCallback | None = None,
        options: RunOptions | None = None,
    ) -> SceneRun:
        """Segment the scene again, beside the project's earlier runs.

        Args:
            model: The model (a new version); None: the one ``options`` names, else the
                best built-in one for the scene.
            progress: Called with (percent, message).
            cancelled: Polled while segmenting.
            options: How the model runs.

        See :func:`cloudseg.backend.active.loop.rerun`.
        """
        return rerun(self.project, self._scene(), model, progress, cancelled, options)

    # -- the round after labeling ------------------------------------------------------------
    def run(
        self,
        progress: ProgressCallback | None = None,
        cancelled: CancelCallback | None = None,
        options: RunOptions | None = None,
        **arguments: Any,
    ) -> tuple[FineTuneResult, SceneRun]:
        """Store, fine-tune, judge, record, then re-run the scene with the current model.

        Args:
            progress: Called with (percent, message): fine-tuning to 80 %, the re-run after.
            cancelled: Polled between steps.
            options: How the re-run segments (its model is the project's current one).
            **arguments: The arguments of :meth:`fine_tune`.

        Returns:
            The round's result and the re-run (of ``result.current``, adopted or kept).
        """
        report = progress or (lambda percent, message: None)
        result = self.fine_tune(
            progress=lambda p, m: report(0.8 * p, m), cancelled=cancelled, **arguments
        )
        if cancelled is not None and cancelled():
            raise CancelledError(f"cancelled after round {result.round.round}; it is recorded")
        again = self.rerun(result.current, lambda p, m: report(80 + 0.2 * p, m), cancelled, options)
        return result, again


def fine_tune(
    project: str | Path | LabelProject, scene: str | Path, **arguments: Any
) -> FineTuneResult:
    """One round on a project's done boxes of ``scene``: :meth:`LabelRound.fine_tune`."""
    return LabelRound(project, scene).fine_tune(**arguments)


def _square(box: Any) -> tuple[int, int, int]:
    """A labeled box as ``(row, col, size)``."""
    return (box.row, box.col, box.size)


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


def _minutes(start: str | None, end: str | None) -> float:
    """Minutes between two ISO times (0 when either is missing)."""
    if not start or not end:
        return 0.0
    delta = dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start)
    return round(max(delta.total_seconds(), 0.0) / 60, 1)


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


__all__ = ["FineTuneResult", "LabelRound", "fine_tune"]

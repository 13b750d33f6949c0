"""Find likely label errors in an ingested store: ``cloudseg labels check``.

Out-of-sample class probabilities for every scene come from a model that did not train
on the store's scenes (a built-in model, or one trained elsewhere), or from
cross-validated folds: the scenes are split into K folds by place (the training config's
``group_pattern``) and each fold is predicted by a model trained on the other folds.
cleanlab's segmentation module (confident learning, Northcutt et al.) compares them with the stored
labels:

- **pixels**: ``cleanlab.segmentation.filter.find_label_issues`` flags the pixels whose
  label the model contradicts with confidence (thresholds learned per class over all
  scenes checked together);
- **chips**: ``cleanlab.segmentation.rank.get_label_quality_scores`` (softmin of the
  per-pixel label quality) scores each scene, 0 (likely wrong) to 1; the share of its
  labeled pixels flagged is reported beside it, and a scene with more than 10 % flagged,
  or twice the median share of the scenes checked if that is higher, is marked
  ``flagged`` (the limit is recorded);
- **windows**: the share of flagged pixels in each window of a grid (128 px), so that a
  bad patch in a big scene is found, reviewed (label dock) or left out (training);
- **class confusions**: flagged pixels counted by (given label -> the model's class),
  e.g. ``cloud shadow -> clear``.

cleanlab rather than hand-written confident learning: it is the reference
implementation, kept and tested by its authors. Pixels without a label (255) are
neither scored nor flagged.

Outputs: a ranked report (``label_issues.json`` and the table ``label_issues.csv``), one
issue raster per scene (``issues/<scene>.tif``: 1 flagged, 0 not, 255 unlabeled;
georeferenced like the scene), the model's classes (``predicted/<scene>.tif``: what the
label dock shows as the model's view), and the scene's STAC Item annotated with
``cloudseg:label_quality`` (score, flagged share, flagged windows, model, date). The
report and rasters are written aside and published together once every scene is done; a
failure or cancel leaves an earlier report as it was. The stored labels are never changed.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import json
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..backend.atomic import claim, publish, temporary_sibling
from ..backend.callbacks import CancelCallback, ProgressCallback
from ..backend.errors import CancelledError, InputError
from ..backend.inference.engine import predict
from ..backend.inference.options import RunOptions
from ..backend.inference.runners import create_runner
from ..backend.models.registry import load_model
from .config import Config, LabelQualityConfig, SplitConfig
from .data import lookup_table, map_classes, scene_group
from .evaluate import store_scene

IGNORE = 255
#: Edge of the grid of windows scored inside each scene, in pixels.
WINDOW = 128
#: A scene or window is flagged when more than this share of its labeled pixels is
#: flagged, or more than :data:`RELATIVE` times the median share of the scenes checked,
#: whichever is higher: a weak out-of-sample model contradicts many labels everywhere,
#: and only what stands out from that is worth a review.
FLAGGED_SHARE = 0.1
RELATIVE = 2.0
#: Windows with at least this share flagged are listed (report and STAC Item).
LISTED_SHARE = 0.02
#: At most this many windows per scene are listed, worst first.
LISTED_WINDOWS = 50


@dataclass
class LabelCheck:
    """The finder's result: scenes ranked worst first, and where things were written."""

    model: str
    store: str
    scenes: list[dict[str, Any]]
    confusions: dict[str, int] = field(default_factory=dict)
    report: Path | None = None
    seconds: float = 0.0
    folds: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    #: Flagged share above which a scene or window is flagged (see :func:`flag_limit`).
    limit: float = FLAGGED_SHARE

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable data."""
        return self.__dict__ | {"report": str(self.report) if self.report else None}

    def flagged(self) -> list[dict[str, Any]]:
        """The flagged scenes, worst first."""
        return [e for e in self.scenes if e["flagged"]]


def _write_issue_raster(
    path: Path, issues: np.ndarray, props: dict[str, Any], card: Any = None
) -> None:
    """One scene's flagged pixels (1, 0 not, 255 unlabeled) or model classes, on its grid.

    With the model's ``card`` the raster holds its classes (tagged as a class raster).

    ``props`` are the scene's STAC Item properties (its ``proj:`` grid).
    """
    import rasterio
    from affine import Affine

    transform = props.get("proj:transform")
    crs = props.get("proj:wkt2") or props.get("proj:code")
    profile = {
        "driver": "GTiff",
        "width": issues.shape[1],
        "height": issues.shape[0],
        "count": 1,
        "dtype": "uint8",
        "nodata": IGNORE,
        "compress": "deflate",
    }
    if transform:
        profile |= {"transform": Affine(*transform[:6]), "crs": crs}
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(issues, 1)
        if card is not None:
            described = [{"value": c.value, "name": c.name, "color": c.color} for c in card.classes]
            dst.update_tags(CLOUDSEG_CLASSES=json.dumps(described), CLOUDSEG_MODEL=card.name)


def flag_limit(shares: list[float]) -> float:
    """The flagged share above which a scene or window is flagged (see FLAGGED_SHARE)."""
    median = float(np.median(shares)) if shares else 0.0
    return round(max(FLAGGED_SHARE, RELATIVE * median), 4)


def window_shares(issues: np.ndarray, window: int = WINDOW) -> list[dict[str, Any]]:
    """Flagged share of each grid window of an issue raster, worst first.

    Windows tile the scene from its top-left corner (the last row and column of windows
    end at the edge); windows without labeled pixels are left out.
    """
    rows, cols = issues.shape
    found = []
    for row in range(0, rows, window):
        for col in range(0, cols, window):
            part = issues[row : row + window, col : col + window]
            labeled = int((part != IGNORE).sum())
            if labeled:
                share = float((part == 1).sum()) / labeled
                box = [row, col, part.shape[0], part.shape[1]]
                found.append({"window": box, "flagged_share": round(share, 4)})
    found.sort(key=lambda w: -w["flagged_share"])
    return found


def assign_folds(
    scenes: list[str], folds: int, group_pattern: str | None, seed: int
) -> list[list[str]]:
    """Split scenes into ``folds`` folds, keeping each group (place) in one fold.

    Raises:
        InputError: If there are fewer groups than folds, or fewer than 2 folds.
    """
    if folds < 2:
        raise InputError(f"--folds {folds}: cross-validation needs at least 2 folds")

    def group(scene: str) -> str:
        return scene_group(scene, group_pattern)

    groups = sorted({group(s) for s in scenes})
    if len(groups) < folds:
        raise InputError(
            f"{len(groups)} group(s) of scenes ({', '.join(groups)}) cannot fill {folds} "
            "folds; use fewer folds or a finer group_pattern"
        )
    random.Random(seed).shuffle(groups)
    fold_of = {g: i % folds for i, g in enumerate(groups)}
    return [[s for s in scenes if fold_of[group(s)] == f] for f in range(folds)]


def cross_validated_models(
    config: Config,
    scenes: list[str],
    folds: int,
    work: Path,
    progress: ProgressCallback,
    cancelled: CancelCallback,
) -> tuple[dict[str, str], dict[str, dict[str, list[str]]]]:
    """Train one model per fold on the other folds' scenes.

    Each fold's training uses ``config`` (its store, bands, classes, model and
    optimisation) with the scenes of the other folds only; their validation split is
    drawn among those scenes (``val_fraction`` of their groups), so no held-out scene
    helps choose a checkpoint. Label-quality settings are off: every label counts.

    Returns:
        The model file that predicts each scene, and per fold the scenes it predicts and
        those its model trained and validated on.
    """
    from .train import train

    split = config.data.split
    parts = assign_folds(scenes, folds, split.group_pattern, config.train.seed)
    models, listing = {}, {}
    for f, held in enumerate(parts):
        others = [s for s in scenes if s not in held]
        fold_config = replace(
            config,
            name=f"{config.name}-fold{f + 1}",
            output=str(work / f"fold-{f + 1}"),
            data=replace(
                config.data,
                scenes=others,
                split=SplitConfig(
                    group_pattern=split.group_pattern, val_fraction=split.val_fraction
                ),
                label_quality=LabelQualityConfig(),
            ),
        )
        share = 60.0 / folds

        def step(percent: float, message: str, f: int = f, share: float = share) -> None:
            progress(f * share + share * percent / 100, f"fold {f + 1}/{folds}: {message}")

        result = train(fold_config, progress=step, cancelled=cancelled)
        for scene in held:
            models[scene] = str(result.model_path)
        listing[f"fold-{f + 1}"] = {
            "predicted": held,
            "trained_on": result.train_scenes,
            "validated_on": result.val_scenes,
        }
    return models, listing


def check_labels(
    store: str | Path,
    model: str | None,
    out: str | Path,
    scenes: list[str] | None = None,
    endpoint_url: str | None = None,
    annotate: bool = True,
    folds: int | None = None,
    config: Config | str | Path | None = None,
    window: int = WINDOW,
    progress: ProgressCallback | None = None,
    cancelled: CancelCallback | None = None,
) -> LabelCheck:
    """Score the store's labels against out-of-sample predictions (see module doc).

    Args:
        store: An ingested store (folder or ``s3://``).
        model: A model that did not train on these scenes (its predictions are taken as
            out-of-sample); None with ``folds``.
        out: Folder for ``label_issues.json``, ``label_issues.csv`` and ``issues/``.
        scenes: Scene ids; all when None.
        endpoint_url: S3 endpoint.
        annotate: Add ``cloudseg:label_quality`` to each scene's STAC Item.
        folds: Cross-validate with this many folds instead of ``model``.
        config: The training config (or its YAML file) for the folds' models; its
            ``data.store`` is replaced by ``store``.
        window: Edge of the windows scored inside each scene.
        progress: Called with (percent, message).
        cancelled: Polled per scene (per batch while folds train); True stops before
            anything is published.

    Raises:
        CloudsegError: For an unknown store, scene or model, missing bands, or a bad
            choice of model and folds.
    """
    from cleanlab.segmentation.filter import find_label_issues
    from cleanlab.segmentation.rank import get_label_quality_scores

    from ..backend.store.dataset import open_dataset
    from ..backend.store.keys import item_key

    started = time.perf_counter()
    report = progress or (lambda percent, message: None)
    stop = cancelled or (lambda: False)
    if (model is None) == (folds is None):
        raise InputError("give a model that did not train on the store, or --folds K")
    if folds is not None and config is None:
        raise InputError("--folds needs --config: the training config of the folds' models")
    dataset = open_dataset(store, endpoint_url)
    out = Path(out).expanduser().absolute()  # the report names its rasters from anywhere
    if not str(store).startswith("s3://") and out.resolve().is_relative_to(
        Path(store).expanduser().resolve()
    ):
        raise InputError(f"{out} is inside the store; write the report to another folder")
    chosen = scenes or dataset.scenes()
    if not chosen:
        raise InputError(f"{dataset.storage.url} holds no scenes")
    unknown = sorted(set(chosen) - set(dataset.scenes()))
    if unknown:
        raise InputError(f"no scene(s) {', '.join(unknown)} in {dataset.storage.url}")
    with claim([out / "label_issues.json"]), tempfile.TemporaryDirectory(
        prefix="cloudseg-check-"
    ) as work:  # fmt: skip
        listing: dict[str, dict[str, list[str]]] = {}
        if folds is not None:
            if not isinstance(config, Config):
                config = Config.load(config)
            config = replace(
                config, data=replace(config.data, store=str(store), endpoint_url=endpoint_url)
            )
            by_scene, listing = cross_validated_models(
                config, chosen, folds, Path(work), report, stop
            )
            described = f"cross-validated, {folds} folds ({config.model.architecture})"
        else:
            by_scene = dict.fromkeys(chosen, str(model))
            described = ""
        labels, probabilities, card = _predict(
            dataset, chosen, by_scene, report, stop, 60.0 if folds else 0.0
        )
        described = described or card.name
        names = card.class_names()
        report(80.0, "confident learning (cleanlab)")
        results, confusions = _score(labels, probabilities, names, find_label_issues,
                                     get_label_quality_scores)  # fmt: skip
        if stop():
            raise CancelledError("label check cancelled; nothing was written")
        when = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        missing = [d for d in (out, *out.parents) if not d.exists()]  # removed on failure
        out.mkdir(parents=True, exist_ok=True)
        stage = temporary_sibling(out / "label-check", "part")
        try:
            ranked = []
            limit = flag_limit([r[1] for r in results])
            for scene, (score, flagged, issues, classes) in zip(chosen, results, strict=True):
                item = json.loads(dataset.storage.read_bytes(item_key(scene)))
                props = item["properties"]
                _write_issue_raster(stage / "issues" / f"{scene}.tif", issues, props)
                _write_issue_raster(stage / "predicted" / f"{scene}.tif", classes, props, card)
                listed = [
                    w for w in window_shares(issues, window) if w["flagged_share"] >= LISTED_SHARE
                ]
                entry = {
                    "scene": scene,
                    "score": round(float(score), 4),
                    "flagged_share": round(float(flagged), 4),
                    "flagged": bool(flagged > limit),
                    "windows": listed[:LISTED_WINDOWS],
                    "issue_raster": str(out / "issues" / f"{scene}.tif"),
                    "predicted_raster": str(out / "predicted" / f"{scene}.tif"),
                    "model": Path(by_scene[scene]).parent.name if folds else described,
                }
                ranked.append((entry, item))
            ranked.sort(key=lambda pair: pair[0]["score"])
            for rank, (entry, _) in enumerate(ranked, start=1):
                entry["rank"] = rank
            result = LabelCheck(
                described,
                dataset.storage.url,
                [e for e, _ in ranked],
                confusions,
                out / "label_issues.json",
                round(time.perf_counter() - started, 2),
                listing,
                limit,
            )
            text = json.dumps(result.to_dict(), indent=2) + "\n"
            (stage / "label_issues.json").write_text(text, encoding="utf-8")
            (stage / "label_issues.csv").write_text(_table(result.scenes), encoding="utf-8")
            if stop():
                raise CancelledError("label check cancelled; nothing was written")
            if annotate:  # after every pixel is scored: a failure before leaves Items as they were
                for entry, item in ranked:
                    item["properties"]["cloudseg:label_quality"] = {
                        k: entry[k]
                        for k in ("score", "flagged_share", "flagged", "windows", "rank")
                    } | {"model": described, "checked": when, "window": window, "limit": limit}
                    data = json.dumps(item, indent=2, sort_keys=True) + "\n"
                    dataset.storage.write_bytes(item_key(entry["scene"]), data.encode())
            rasters = [f"{kind}/{e['scene']}.tif" for kind in ("issues", "predicted")
                       for e in result.scenes]  # fmt: skip
            for kind in ("issues", "predicted"):
                (out / kind).mkdir(parents=True, exist_ok=True)
            publish(
                [(stage / name, out / name) for name in rasters]
                + [(stage / n, out / n) for n in ("label_issues.csv", "label_issues.json")]
            )
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            for folder in [out / "issues", out / "predicted", *missing]:  # deepest first
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only if empty: nothing earlier is touched
            raise
        shutil.rmtree(stage, ignore_errors=True)
    report(100.0, "done")
    return result


def _predict(
    dataset: Any,
    scenes: list[str],
    by_scene: dict[str, str],
    report: ProgressCallback,
    stop: CancelCallback,
    start: float,
) -> tuple[list[np.ndarray], list[np.ndarray], Any]:
    """Each scene's labels (model classes), out-of-sample probabilities, and a model card."""
    labels, probabilities, names, runners, card = [], [], None, {}, None
    for i, scene in enumerate(scenes):
        if stop():
            raise CancelledError("label check cancelled; nothing was written")
        report(start + (80.0 - start) * i / len(scenes), f"predicting {scene}")
        model = by_scene[scene]
        if model not in runners:
            loaded = load_model(model)
            options = RunOptions(model=model, precision="fp32")
            runner = create_runner(loaded, options.device, options.precision, options.runtime)
            runners = {model: (loaded, options, runner)}  # one model held at a time
        loaded, options, runner = runners[model]
        if names is None:
            card, names = loaded.card, loaded.card.class_names()
            table = lookup_table(map_classes(dataset.classes, names, None))
        elif loaded.card.class_names() != names:
            raise InputError(f"{model} has classes {loaded.card.class_names()}, not {names}")
        source, mask = store_scene(dataset, scene)
        probabilities.append(predict(source, options, runner).probabilities)
        labels.append(table[mask])
    return labels, probabilities, card


def _table(scenes: list[dict[str, Any]]) -> str:
    """The ranked report as CSV: one row per scene, worst first."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["rank", "scene", "score", "flagged_share", "flagged", "worst_window",
                     "worst_window_share", "model"])  # fmt: skip
    for e in scenes:
        worst = e["windows"][0] if e["windows"] else {"window": "", "flagged_share": ""}
        window = " ".join(map(str, worst["window"])) if worst["window"] else ""
        writer.writerow([e["rank"], e["scene"], e["score"], e["flagged_share"], e["flagged"],
                         window, worst["flagged_share"], e["model"]])  # fmt: skip
    return buffer.getvalue()


def _score(
    labels: list[np.ndarray],
    probabilities: list[np.ndarray],
    names: list[str],
    find_label_issues: Any,
    get_label_quality_scores: Any,
) -> tuple[list[tuple[float, float, np.ndarray, np.ndarray]], dict[str, int]]:
    """Per scene (score, flagged share, issue raster, model's classes); the confusions.

    Scenes of one shape are scored together (confident-learning thresholds over all of
    them); scenes of other shapes on their own.
    """
    results: list[Any] = [None] * len(labels)
    confusions: dict[str, int] = {}
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, given in enumerate(labels):
        by_shape.setdefault(given.shape, []).append(i)
    for indices in by_shape.values():
        probs = np.stack([probabilities[i] for i in indices]).astype(np.float32)
        given = np.stack([labels[i] for i in indices])
        unlabeled = given == IGNORE
        predicted = probs.argmax(axis=1)
        filled = np.where(unlabeled, predicted, given).astype(np.int64)  # not scored
        # In this process (n_jobs=1): cleanlab's default forks a worker pool, and forking a
        # process whose inference runtime already holds threads can deadlock (seen: a
        # pool worker waiting forever on a lock it inherited).
        issues = find_label_issues(filled, probs, n_jobs=1, verbose=False) & ~unlabeled
        scores, _ = get_label_quality_scores(filled, probs, n_jobs=1, verbose=False)
        for j, i in enumerate(indices):
            labeled = max(int((~unlabeled[j]).sum()), 1)
            raster = np.where(unlabeled[j], IGNORE, issues[j].astype(np.uint8)).astype(np.uint8)
            results[i] = (
                scores[j],
                issues[j].sum() / labeled,
                raster,
                predicted[j].astype(np.uint8),
            )
        pairs = np.stack([filled[issues], predicted[issues]], axis=1)
        for (a, b), n in zip(*np.unique(pairs, axis=0, return_counts=True), strict=True):
            key = f"{names[a]} -> {names[b]}"
            confusions[key] = confusions.get(key, 0) + int(n)
    return results, dict(sorted(confusions.items(), key=lambda kv: -kv[1]))

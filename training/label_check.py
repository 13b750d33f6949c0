"""Find likely label errors in an ingested store: ``cloudseg labels check``.

A model that did not train on the store's scenes (a built-in model, or one trained on
other scenes or folds) predicts class probabilities for every scene; cleanlab's
segmentation module (confident learning, Northcutt et al.) compares them with the stored
labels:

- **pixels**: ``cleanlab.segmentation.filter.find_label_issues`` flags the pixels whose
  label the model contradicts with confidence (thresholds learned per class over all
  scenes checked together);
- **chips**: ``cleanlab.segmentation.rank.get_label_quality_scores`` (softmin of the
  per-pixel label quality) scores each scene, 0 (likely wrong) to 1; the share of its
  labeled pixels flagged is reported beside it;
- **class confusions**: flagged pixels counted by (given label -> the model's class),
  e.g. ``cloud shadow -> clear``.

cleanlab rather than hand-written confident learning: it is the reference
implementation, kept and tested by its authors. Pixels without a label (255) are
neither scored nor flagged.

Outputs: a ranked report (``label_issues.json``), one issue raster per scene
(``issues/<scene>.tif``: 1 flagged, 0 not, 255 unlabeled; georeferenced like the scene),
and the scene's STAC Item annotated with ``cloudseg:label_quality`` (score, flagged share,
model, date). The stored labels are never changed.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..backend.callbacks import CancelCallback, ProgressCallback
from ..backend.errors import CancelledError, InputError
from ..backend.inference.engine import predict
from ..backend.inference.options import RunOptions
from ..backend.inference.runners import create_runner
from ..backend.models.registry import load_model
from .data import lookup_table, map_classes
from .evaluate import store_scene

IGNORE = 255


@dataclass
class LabelCheck:
    """The finder's result: scenes ranked worst first, and where things were written."""

    model: str
    store: str
    scenes: list[dict[str, Any]]
    confusions: dict[str, int] = field(default_factory=dict)
    report: Path | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable data."""
        return self.__dict__ | {"report": str(self.report) if self.report else None}


def _write_issue_raster(path: Path, issues: np.ndarray, props: dict[str, Any]) -> None:
    """The flagged pixels of one scene on its grid (1 flagged, 0 not, 255 unlabeled).

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


def check_labels(
    store: str | Path,
    model: str,
    out: str | Path,
    scenes: list[str] | None = None,
    endpoint_url: str | None = None,
    annotate: bool = True,
    progress: ProgressCallback | None = None,
    cancelled: CancelCallback | None = None,
) -> LabelCheck:
    """Score the store's labels against ``model`` and write the report (see module doc).

    Args:
        store: An ingested store (folder or ``s3://``).
        model: A model that did not train on these scenes (its predictions are taken as
            out-of-sample).
        out: Folder for ``label_issues.json`` and ``issues/``.
        scenes: Scene ids; all when None.
        endpoint_url: S3 endpoint.
        annotate: Add ``cloudseg:label_quality`` to each scene's STAC Item.
        progress: Called with (percent, message).
        cancelled: Polled per scene; True stops before anything is written.

    Raises:
        CloudsegError: For an unknown store, scene or model, or missing bands.
    """
    from cleanlab.segmentation.filter import find_label_issues
    from cleanlab.segmentation.rank import get_label_quality_scores

    from ..backend.store.dataset import open_dataset
    from ..backend.store.keys import item_key

    started = time.perf_counter()
    report = progress or (lambda percent, message: None)
    stop = cancelled or (lambda: False)
    dataset = open_dataset(store, endpoint_url)
    chosen = scenes or dataset.scenes()
    if not chosen:
        raise InputError(f"{dataset.storage.url} holds no scenes")
    loaded = load_model(model)
    card = loaded.card
    names = card.class_names()
    table = lookup_table(map_classes(dataset.classes, names, None))
    options = RunOptions(model=model, precision="fp32")
    runner = create_runner(loaded, options.device, options.precision, options.runtime)
    labels, probabilities = [], []
    for i, scene in enumerate(chosen):
        if stop():
            raise CancelledError("label check cancelled; nothing was written")
        report(80.0 * i / len(chosen), f"predicting {scene}")
        source, mask = store_scene(dataset, scene)
        probs = predict(source, options, runner).probabilities
        given = table[mask]
        labels.append(given)
        probabilities.append(probs)
    report(80.0, "confident learning (cleanlab)")
    results, confusions = _score(labels, probabilities, names, find_label_issues,
                                 get_label_quality_scores)  # fmt: skip
    out = Path(out).expanduser()
    when = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    ranked = []
    for scene, (score, flagged, issues) in zip(chosen, results, strict=True):
        path = out / "issues" / f"{scene}.tif"
        item = json.loads(dataset.storage.read_bytes(item_key(scene)))
        _write_issue_raster(path, issues, item["properties"])
        entry = {
            "scene": scene,
            "score": round(float(score), 4),
            "flagged_share": round(float(flagged), 4),
            "issue_raster": str(path),
        }
        ranked.append(entry)
        if annotate:
            item["properties"]["cloudseg:label_quality"] = {
                k: entry[k] for k in ("score", "flagged_share")
            } | {"model": card.name, "checked": when}
            text = json.dumps(item, indent=2, sort_keys=True) + "\n"
            dataset.storage.write_bytes(item_key(scene), text.encode())
    ranked.sort(key=lambda e: e["score"])
    for rank, entry in enumerate(ranked, start=1):
        entry["rank"] = rank
    result = LabelCheck(
        card.name,
        dataset.storage.url,
        ranked,
        confusions,
        out / "label_issues.json",
        round(time.perf_counter() - started, 2),
    )
    result.report.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    report(100.0, "done")
    return result


def _score(
    labels: list[np.ndarray],
    probabilities: list[np.ndarray],
    names: list[str],
    find_label_issues: Any,
    get_label_quality_scores: Any,
) -> tuple[list[tuple[float, float, np.ndarray]], dict[str, int]]:
    """Per scene (quality score, flagged share, issue raster), and the class confusions.

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
        issues = find_label_issues(filled, probs, verbose=False) & ~unlabeled
        scores, _ = get_label_quality_scores(filled, probs, verbose=False)
        for j, i in enumerate(indices):
            labeled = max(int((~unlabeled[j]).sum()), 1)
            raster = np.where(unlabeled[j], IGNORE, issues[j].astype(np.uint8)).astype(np.uint8)
            results[i] = (scores[j], issues[j].sum() / labeled, raster)
        pairs = np.stack([filled[issues], predicted[issues]], axis=1)
        for (a, b), n in zip(*np.unique(pairs, axis=0, return_counts=True), strict=True):
            key = f"{names[a]} -> {names[b]}"
            confusions[key] = confusions.get(key, 0) + int(n)
    return results, dict(sorted(confusions.items(), key=lambda kv: -kv[1]))

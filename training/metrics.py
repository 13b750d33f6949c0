"""Segmentation metrics from a confusion matrix: IoU, F1, precision, recall, accuracies.

Everything is derived from one integer confusion matrix (rows: reference, columns:
prediction), which accumulates over scenes without holding them in memory. A class
that never occurs in the reference nor the prediction gets ``None`` (not 0, not 1),
and means are taken over the classes that have a value.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def confusion_matrix(
    reference: np.ndarray, prediction: np.ndarray, classes: int, ignore_index: int = 255
) -> np.ndarray:
    """Count (reference, prediction) pixel pairs.

    Reference pixels equal to ``ignore_index`` and predictions outside
    ``0..classes-1`` (nodata) are left out.

    Returns:
        ``int64`` array (classes, classes).
    """
    reference = np.asarray(reference).ravel().astype(np.int64)
    prediction = np.asarray(prediction).ravel().astype(np.int64)
    keep = (reference != ignore_index) & (reference < classes) & (prediction >= 0)
    keep &= prediction < classes
    index = reference[keep] * classes + prediction[keep]
    return np.bincount(index, minlength=classes * classes).reshape(classes, classes)


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den > 0 else None


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def metrics_from_confusion(matrix: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Per-class IoU, F1, precision, recall; pixel and balanced accuracy; means.

    Returns:
        ``{"per_class": {name: {...}}, "pixel_accuracy", "balanced_accuracy",
        "mean_iou", "mean_f1", "pixels", "confusion_matrix", "classes"}``.
    """
    matrix = np.asarray(matrix, dtype=np.int64)
    tp = np.diag(matrix).astype(np.float64)
    reference = matrix.sum(axis=1).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    per_class = {}
    for i, name in enumerate(names):
        fp, fn = predicted[i] - tp[i], reference[i] - tp[i]
        per_class[name] = {
            "iou": _ratio(tp[i], tp[i] + fp + fn),
            "f1": _ratio(2 * tp[i], 2 * tp[i] + fp + fn),
            "precision": _ratio(tp[i], predicted[i]),
            "recall": _ratio(tp[i], reference[i]),
            "support": int(reference[i]),
        }
    total = float(matrix.sum())
    return {
        "classes": list(names),
        "per_class": per_class,
        "pixel_accuracy": _ratio(tp.sum(), total),
        "balanced_accuracy": _mean([c["recall"] for c in per_class.values()]),
        "mean_iou": _mean([c["iou"] for c in per_class.values()]),
        "mean_f1": _mean([c["f1"] for c in per_class.values()]),
        "pixels": int(total),
        "confusion_matrix": matrix.tolist(),
    }


def plot_confusion(matrix: np.ndarray, names: list[str], path: Path, title: str = "") -> Path:
    """Draw the confusion matrix (row-normalised colours, counts and % in cells) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix, dtype=np.float64)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    size = 1.6 + 1.1 * len(names)
    fig, ax = plt.subplots(figsize=(size, size * 0.9), dpi=110)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(
                j,
                i,
                f"{int(matrix[i, j]):,}\n{share[i, j]:.1%}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if share[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    ax.set_title(title or "confusion matrix (row %)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def write_report(metrics: dict[str, Any], folder: Path, title: str = "") -> tuple[Path, Path]:
    """Write ``metrics.json`` and ``confusion.png`` into ``folder``, as one step.

    Both are written under temporary names and published together
    (:func:`cloudseg.backend.atomic.publish`): a failure (a full disk) leaves the
    folder's earlier report as it was, never a new ``metrics.json`` beside an old plot.
    """
    from ..backend.atomic import claim, cleanup_on_failure, publish, temporary_sibling

    folder.mkdir(parents=True, exist_ok=True)
    json_path, png = folder / "metrics.json", folder / "confusion.png"
    json_tmp, png_tmp = temporary_sibling(json_path), temporary_sibling(png)
    with claim([json_path, png]), cleanup_on_failure(json_tmp, png_tmp):
        json_tmp.write_text(json.dumps(metrics, indent=2), encoding="utf-8")
        plot_confusion(np.array(metrics["confusion_matrix"]), metrics["classes"], png_tmp, title)
        publish([(json_tmp, json_path), (png_tmp, png)])
    return json_path, png

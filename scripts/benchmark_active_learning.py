#!/usr/bin/env python3
"""A simulated analyst closes the active-learning loop on the labeled real scenes.

For each labeled 6-band scene of the shared data (the ukis-csmask Sentinel-2 L1C scene
and the Landsat-5 and -7 chips, 512 x 512 px at 30 m), the left half is where the
analyst labels and the right half is held out: it is never proposed, never trained on,
and is where every model is scored (IoU per class against the true labels). Nothing is
tuned on it.

Each round, ``--boxes`` boxes of ``--box`` px are chosen in the labeling half,
never overlapping a box labeled before, either

- by uncertainty: the current model's normalized entropy, ranked by
  ``cloudseg.backend.active.propose.rank_boxes`` (the same code as ``cloudseg
  propose``), or
- at random (the baseline),

and "labeled" with the true labels (the analyst draws perfectly; ``--context`` px of
unlabeled image around each box, inside the labeling half). The built-in model
``ukis-csmask-6b-l1c`` is then fine-tuned with cloudseg's training (Lightning, its
ONNX weights imported into smp) on all boxes labeled so far, a quarter of them held
for validation, and the new model is scored on the held-out half.

Writes ``--out`` (JSON: base and per-round held-out IoU per class for both
strategies, seconds, the machine and versions) and a plot (``--plot``).

Usage: benchmark_active_learning.py --data ../shared/data/real \
           --out benchmarks/active_learning.json --plot docs/active_learning.png
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from benchmark_common import write_results

from cloudseg.backend.active.propose import Box, rank_boxes
from cloudseg.backend.inference.engine import ArrayScene, predict
from cloudseg.backend.inference.options import RunOptions
from cloudseg.backend.inference.resample import normalized_entropy
from cloudseg.backend.models.registry import load_model

BASE = "ukis-csmask-6b-l1c"
SCENES = ("ukis-s2-l1c", "ukis-landsat5", "ukis-landsat7")
CLASSES = ["clear", "cloud", "cloud shadow"]


def held_out_iou(model: str, image: np.ndarray, truth: np.ndarray, half: int) -> dict:
    """IoU per class of ``model`` on the held-out right half (predicted on that half only)."""
    from cloudseg.training.metrics import confusion_matrix, metrics_from_confusion

    bands = list(load_model(model).card.bands)
    scene = ArrayScene(np.ascontiguousarray(image[:, :, half:]), bands, 30.0)
    classes = predict(scene, RunOptions(model=model, precision="fp32")).classes()
    matrix = confusion_matrix(truth[:, half:], classes, len(CLASSES))
    metrics = metrics_from_confusion(matrix, CLASSES)
    return {name: round(m["iou"], 4) for name, m in metrics["per_class"].items()} | {
        "mean": round(metrics["mean_iou"], 4)
    }


def doubt_of(model: str, image: np.ndarray, half: int) -> np.ndarray:
    """The model's doubt (percent) on the labeling half."""
    bands = list(load_model(model).card.bands)
    scene = ArrayScene(np.ascontiguousarray(image[:, :, :half]), bands, 30.0)
    return normalized_entropy(predict(scene, RunOptions(model=model)).probabilities) * 100


def random_boxes(
    rng: np.random.Generator, shape: tuple[int, int], box: int, count: int, avoid: list[Box]
) -> list[Box]:
    """``count`` random non-overlapping boxes, none over ``avoid``."""
    chosen: list[Box] = []
    for _ in range(10000):
        if len(chosen) == count:
            break
        candidate = Box(
            int(rng.integers(0, shape[0] - box + 1)), int(rng.integers(0, shape[1] - box + 1)), box
        )
        if not any(candidate.overlaps(b) for b in [*avoid, *chosen]):
            chosen.append(candidate)
    return chosen


def labeled_window(
    image: np.ndarray, truth: np.ndarray, box: Box, context: int, half: int, stem: str
) -> Any:
    """The box's labels in a window with ``context`` px of unlabeled image around it.

    The window stays inside the labeling half (columns ``< half``): the held-out half is
    never trained on, not even as context.
    """
    from cloudseg.backend.active.labels import LabeledWindow, context_window, window_labels

    row, col, size = context_window(box, context, image.shape[1], half)
    truth_box = truth[box.row : box.row + box.size, box.col : box.col + box.size]
    labels = window_labels(box, (row, col, size), truth_box)  # the analyst labeled the box
    return LabeledWindow(stem, image[:, row : row + size, col : col + size], labels)


def fine_tune(
    image: np.ndarray,
    truth: np.ndarray,
    boxes: list[Box],
    work: Path,
    args: argparse.Namespace,
) -> Path:
    """Fine-tune the base model on the labeled boxes; return the new model file."""
    from cloudseg.backend.active.labels import windows_to_store
    from cloudseg.training.config import Config
    from cloudseg.training.train import train

    card = load_model(BASE).card
    half = image.shape[2] // 2
    windows = [
        labeled_window(image, truth, b, args.context, half, f"box{i:03d}")
        for i, b in enumerate(boxes)
    ]
    store = work / "store"
    windows_to_store(windows, list(card.bands), CLASSES, store, env_file=None)
    box = windows[0].labels.shape[0]
    epochs = args.epochs
    config = Config.from_dict(
        {
            "name": "active-learning",
            "output": str(work / "run"),
            "data": {
                "store": str(store),
                "bands": list(card.bands),
                "classes": CLASSES,
                "window": box,
                "stride": box,
                "samples_per_epoch": 8 * len(boxes),
                "normalization": "card",
                "product_level": "L1C",
                "resolution_m": 30.0,
                "split": {"val_fraction": 0.25},
            },
            "model": {"init": BASE},
            "train": {"epochs": epochs, "batch_size": 4, "lr": 1e-4, "patience": epochs},
        }
    )
    return train(config).model_path


def run_scene(scene: Any, args: argparse.Namespace, work: Path) -> dict:
    """Base and per-round held-out IoU for both strategies on one scene."""
    image = np.moveaxis(scene.reflectance, -1, 0).astype(np.float32)  # (bands, rows, cols)
    truth = scene.reference()
    half = image.shape[2] // 2
    base = held_out_iou(BASE, image, truth, half)
    print(f"{scene.name}: base {base}", file=sys.stderr, flush=True)
    result: dict = {"base": base, "strategies": {}}
    for strategy in args.strategies.split(","):
        rng = np.random.default_rng(args.seed)
        model, labeled, rounds = BASE, [], []
        for r in range(1, args.rounds + 1):
            start = time.perf_counter()
            if strategy == "uncertainty":
                doubt = doubt_of(model, image, half)
                new = [p.box for p in rank_boxes(doubt, args.box, args.boxes, labeled)]
            else:
                new = random_boxes(rng, (image.shape[1], half), args.box, args.boxes, labeled)
            labeled += new
            folder = work / f"{scene.name}-{strategy}-{r}"
            model = str(fine_tune(image, truth, labeled, folder, args))
            iou = held_out_iou(model, image, truth, half)
            rounds.append(
                {
                    "round": r,
                    "boxes": len(labeled),
                    "labeled_km2": round(len(labeled) * (args.box * 30 / 1000) ** 2, 2),
                    "held_out_iou": iou,
                    "seconds": round(time.perf_counter() - start, 1),
                }
            )
            print(f"{scene.name} {strategy} round {r}: {iou}", file=sys.stderr, flush=True)
        result["strategies"][strategy] = rounds
    return result


def plot(report: dict, path: Path) -> None:
    """Held-out mean IoU per round, per scene: uncertainty against random, base dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenes = report["scenes"]
    fig, axes = plt.subplots(1, len(scenes), figsize=(4 * len(scenes), 3.2), sharey=True)
    for ax, (name, data) in zip(np.atleast_1d(axes), scenes.items(), strict=True):
        ax.axhline(data["base"]["mean"], color="grey", linestyle="--", label="base model")
        colours = {"uncertainty": "tab:red", "random": "tab:blue"}
        for strategy, rounds in data["strategies"].items():  # those run (--strategies)
            colour = colours[strategy]
            ax.plot(
                [0] + [r["boxes"] for r in rounds],
                [data["base"]["mean"]] + [r["held_out_iou"]["mean"] for r in rounds],
                marker="o",
                color=colour,
                label=f"{strategy} boxes",
            )
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("labeled boxes")
    np.atleast_1d(axes)[0].set_ylabel("held-out mean IoU")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    """Run the simulation and write the JSON and the plot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/active_learning.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/active_learning.png"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--boxes", type=int, default=4, help="boxes labeled per round")
    parser.add_argument("--box", type=int, default=64, help="box edge in pixels")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--context",
        type=int,
        default=16,
        help="unlabeled image px stored around each box (16: the product's default for "
        "64 px boxes; 0: boxes only)",
    )
    parser.add_argument("--scenes", default=",".join(SCENES), help="comma-separated")
    parser.add_argument("--strategies", default="uncertainty,random", help="comma-separated")
    args = parser.parse_args()
    from cloudseg.training.reference import labeled_scenes

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        scenes = {
            s.name: run_scene(s, args, work)
            for s in labeled_scenes(args.data, work / "scenes")
            if s.name in args.scenes.split(",")
        }
    report = {
        "benchmark": "simulated analyst: uncertainty-ranked against random boxes, "
        "fine-tuning the built-in model each round, scored on the held-out half",
        "base_model": BASE,
        "settings": {k: v for k, v in vars(args).items() if k not in ("data", "out", "plot")},
        "split": "each 512 x 512 scene: boxes from the left half; IoU on the right half",
        "scenes": scenes,
        "minutes": round((time.perf_counter() - started) / 60, 1),
    }
    plot(report, args.plot)
    write_results(report, ("cloudseg", "torch", "lightning", "numpy"), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""A simulated analyst runs the active-learning loop through the product, scored three ways.

For each labeled scene with clouds and shadows (the ukis-csmask Sentinel-2 L1C scene and
the Landsat-5 and -7 chips, 512 x 512 px) and each direction (the left, right, top or
bottom half is where the analyst labels), the labeling half is written as a scene of its
own; the other half is never seen by the loop. Each round goes through the public API
exactly as ``cloudseg propose`` / ``cloudseg labels add`` / ``cloudseg fine-tune`` do:

1. the current model segments the labeling half with an uncertainty raster and its
   doubt ranks boxes (``propose_on_scene``: what ``cloudseg propose`` runs, held-out
   ranks chosen for class coverage); or, as the control, the same number of boxes of
   the same size is placed at random (``--pickers random``);
2. each new box is labeled from the true labels (``label_box``: a careful analyst) and
   marked done;
3. ``fine_tune`` runs one round with the recipe under test (held-out boxes, judge,
   registration); the next round starts from the model the judge adopted.

After each round the project's current model (what the analyst would run) is scored:

- **same scene**: IoU per class on the half the loop never saw;
- **other scenes** (forgetting): IoU per class on every other labeled scene, the
  38-Cloud Landsat-8 patch for the cloud class only;
- and the raw new version too, adopted or not, to show what the judge prevented.

Every figure is compared with the base model's on the same pixels. Writes ``--out``
(every run, per-round figures, seconds, a summary per recipe, box size and box count
with the spread over directions and seeds, the machine and versions).

Usage: benchmark_active_learning.py --data ../shared/data/real [--recipes head,full]
       benchmark_active_learning.py --tables REPORT.json [...]   (the docs' tables)
       benchmark_active_learning.py --plot OUT.png REPORT.json [...]   (the docs' plot)
       benchmark_active_learning.py --decisions left,right REPORT.json [...]
           (every round of those directions re-judged under each change budget)
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from benchmark_common import write_results
from reference_scenes import CLASSES, on_grid

from cloudseg.backend.active.geometry import Box
from cloudseg.backend.active.labels import label_box
from cloudseg.backend.active.loop import propose_on_scene
from cloudseg.backend.active.project import LabelProject
from cloudseg.backend.errors import InputError
from cloudseg.backend.inference.engine import predict
from cloudseg.backend.inference.options import RunOptions
from cloudseg.backend.raster.reader import open_scene, scene_key
from cloudseg.training.adapt import DEFAULT_RECIPE
from cloudseg.training.label_round import fine_tune
from cloudseg.training.metrics import confusion_matrix, metrics_from_confusion

BASE = "ukis-csmask-4b-l1c"
#: The 10 m, 4-band case: the labeled Sentinel-2 scene's B02, B03, B04 and B08 written
#: with a 10 m pixel size, the product's main input (its truth is the same labels).
TEN_M = "ukis-s2-10m-4b"
SOURCES = ("ukis-s2-l1c", "ukis-landsat5", "ukis-landsat7")
DIRECTIONS = ("left", "right", "top", "bottom")
#: Scenes that are the same pixels as another (not an independent scene).
SAME_PIXELS = {"ukis-s2-l1c-as-10m": "ukis-s2-l1c", TEN_M: "ukis-s2-l1c"}


def write_part(image: Path, labels: Path, rows: slice, cols: slice, out: Path) -> tuple[Path, Path]:
    """Write a window of a scene and its labels as files of their own (same grid)."""
    import rasterio
    from rasterio.windows import Window

    window = Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
    written = []
    for path, suffix in ((image, ".tif"), (labels, ".labels.tif")):
        with rasterio.open(path) as src:
            profile = src.profile | {
                "width": window.width,
                "height": window.height,
                "transform": src.window_transform(window),
            }
            target = out.with_name(out.name + suffix)
            with rasterio.open(target, "w", **profile) as dst:
                dst.write(src.read(window=window))
                dst.descriptions = src.descriptions
        written.append(target)
    return written[0], written[1]


Part = tuple[slice, slice]


def halves(size: tuple[int, int], direction: str) -> tuple[Part, Part]:
    """(labeling, scored) windows as (rows, cols) slices: the named half is labeled."""
    rows, cols = size
    full_r, full_c = slice(0, rows), slice(0, cols)
    left, right = slice(0, cols // 2), slice(cols // 2, cols)
    top, bottom = slice(0, rows // 2), slice(rows // 2, rows)
    return {
        "left": ((full_r, left), (full_r, right)),
        "right": ((full_r, right), (full_r, left)),
        "top": ((top, full_c), (bottom, full_c)),
        "bottom": ((bottom, full_c), (top, full_c)),
    }[direction]


class Scorer:
    """IoU per class of a model on a labeled file, cached by (model, file)."""

    def __init__(self) -> None:
        self.cache: dict[tuple[str, str], dict[str, float]] = {}

    def __call__(self, model: str, image: Path, labels: Path, scored: tuple[str, ...]) -> dict:
        """IoU per class (those in ``scored``) and their mean; float32 for every model."""
        key = (model, str(image))
        if key not in self.cache:
            import rasterio

            options = RunOptions(model=model, precision="fp32", runtime="auto")
            with open_scene(image) as reader:
                classes = predict(reader, options).classes()
            with rasterio.open(labels) as ds:
                truth = ds.read(1)
            metrics = metrics_from_confusion(
                confusion_matrix(truth, classes, len(CLASSES)), list(CLASSES)
            )
            per_class = {
                n: round(m["iou"], 4)
                for n, m in metrics["per_class"].items()
                if n in scored and m["iou"] is not None
            }
            self.cache[key] = per_class | {
                "mean": round(float(np.mean(list(per_class.values()))), 4)
            }
        return self.cache[key]


def random_boxes(
    shape: tuple[int, int],
    box: int,
    count: int,
    avoid: list[Box],
    seed: int,
    only: np.ndarray | None = None,
) -> list[Box]:
    """``count`` boxes placed at random on the half-box grid the ranking uses, apart.

    The control for doubt: the same number of boxes of the same size, none over a box
    labeled before. With ``only`` (a boolean raster), only boxes it covers for 95 % or
    more: the analyst who labels nothing but clear ground.
    """
    rng = np.random.default_rng(seed)
    step = max(box // 2, 1)
    starts = [
        (r, c)
        for r in range(0, shape[0] - box + 1, step)
        for c in range(0, shape[1] - box + 1, step)
    ]
    chosen: list[Box] = []
    for i in rng.permutation(len(starts)):
        candidate = Box(*starts[i], box)
        r, c = starts[i]
        if only is not None and only[r : r + box, c : c + box].mean() < 0.95:
            continue
        if not any(candidate.overlaps(b) for b in [*avoid, *chosen]):
            chosen.append(candidate)
        if len(chosen) == count:
            break
    return chosen


def simulate(
    source: Any,
    direction: str,
    box: int,
    counts: list[int],
    recipe: str,
    seed: int,
    targets: dict[str, Any],
    scorer: Scorer,
    work: Path,
    picker: str = "doubt",
    base: str = BASE,
) -> dict:
    """One simulated analyst: a round per entry of ``counts`` (new boxes each) on one half.

    ``picker`` ``doubt`` proposes as ``cloudseg propose`` does (the current model
    segments the half with an uncertainty raster, :func:`propose_on_scene` ranks it);
    ``random`` places the same number of boxes at random (seeded by ``seed``); ``clear``
    at random where the truth is 95 % clear or more (an analyst who labels only clear
    ground). A round that cannot run (too few boxes fit) ends the run, recorded.
    """
    import rasterio

    with rasterio.open(source.image) as ds:
        shape = (ds.height, ds.width)
    (lab_r, lab_c), (sc_r, sc_c) = halves(shape, direction)
    folder = work / f"{source.name}-{direction}-{box}-{recipe}-{picker}-{seed}"
    folder.mkdir(parents=True)
    scene, scene_labels = write_part(source.image, source.labels, lab_r, lab_c, folder / "label")
    scored, scored_labels = write_part(source.image, source.labels, sc_r, sc_c, folder / "score")
    project = folder / "project.gpkg"
    classes = {i: n for i, n in enumerate(CLASSES)}
    current = base

    def score(model: str) -> dict:
        return {
            "same_scene": scorer(model, scored, scored_labels, CLASSES),
            "other_scenes": {
                name: scorer(model, t.image, t.labels, t.scored) for name, t in targets.items()
            },
        }

    run: dict[str, Any] = {
        "source": source.name,
        "direction": direction,
        "box": box,
        "recipe": recipe,
        "picker": picker,
        "seed": seed,
        "base_model": base,
        "base": score(base),
        "rounds": [],
    }
    for number, per_round in enumerate(counts, start=1):
        started = time.perf_counter()
        labels = LabelProject(project)
        if picker == "doubt":
            propose_on_scene(labels, scene, current, box, per_round)
        else:
            with open_scene(scene) as reader:
                transform, crs, shape = reader.transform, reader.crs, (reader.height, reader.width)
            held = labels.read(scene=scene).proposals
            done = [p.box(transform) for p in held if p.status != "todo"]
            only = None
            if picker == "clear":
                with rasterio.open(scene_labels) as ds:
                    only = ds.read(1) == 0
            new = random_boxes(shape, box, per_round, done, seed * 1000 + number, only)
            labels.replace_proposals(
                [(b, rank, 0.0) for rank, b in enumerate(new, 1)],
                transform,
                crs,
                scene_key(scene),
                current,
            )
        todo = [p.fid for p in labels.read(scene=scene).with_status("todo")]
        for fid in todo:
            label_box(project, fid, scene_labels, classes)
        propose_seconds = time.perf_counter() - started
        before = current
        try:
            result = fine_tune(project, scene, recipe=recipe, seed=seed, store=folder / "store")
        except InputError as error:
            run["stopped"] = f"round {number}: {error}"
            break
        round_seconds = result.round.seconds
        current = result.current
        entry = {
            "round": number,
            "boxes": result.round.boxes,
            "train_boxes": result.round.train_boxes,
            "held_out_boxes": result.round.held_out_boxes,
            "adopted": result.adopted,
            "verdict": result.verdict.reason,
            "held_out_iou_before": result.round.iou_before,
            "held_out_iou_after": result.round.iou_after,
            "fine_tune_seconds": round_seconds,
            "propose_and_label_seconds": round(propose_seconds, 1),
            "judged_against": before,
            "scores": result.round.scores,
            "current": current,
            "adopted_model": score(current),
            "new_version": score(result.model),
        }
        run["rounds"].append(entry)
        print(
            f"{source.name} {direction} {box}px {recipe} {picker} seed {seed} round {number}: "
            f"{result.round.boxes} boxes, {'adopted' if result.adopted else 'kept'}, "
            f"same {entry['adopted_model']['same_scene']}, {round_seconds} s",
            file=sys.stderr,
            flush=True,
        )
    return run


def _label(run: dict) -> str:
    """A run's recipe, with the box picker when it is not the model's doubt."""
    picker = run.get("picker", "doubt")
    return run["recipe"] + ("" if picker == "doubt" else f" ({picker} boxes)")


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "mean": round(float(np.mean(values)), 4),
        "min": round(float(np.min(values)), 4),
        "max": round(float(np.max(values)), 4),
        "std": round(float(np.std(values)), 4),
        "n": len(values),
    }


def summarize(runs: list[dict]) -> list[dict]:
    """Per recipe, box size and round: gains on the same scene, losses on others.

    Rounds add the same number of boxes each, but fewer fit where large boxes run out
    of room: ``boxes`` gives the range.
    """
    groups: dict[tuple, list[tuple[dict, dict]]] = {}
    for run in runs:
        for entry in run["rounds"]:
            key = (_label(run), run["box"], entry["round"])
            groups.setdefault(key, []).append((run, entry))
    summary = []
    for (recipe, box, number), members in sorted(groups.items()):
        counts = sorted({entry["boxes"] for _, entry in members})
        boxes = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        same_mean, same_class, other_class, seconds, adopted = [], {}, {}, [], 0
        for run, entry in members:
            base, now = run["base"], entry["adopted_model"]
            same_mean.append(now["same_scene"]["mean"] - base["same_scene"]["mean"])
            for name in CLASSES:
                if name in now["same_scene"]:
                    delta = now["same_scene"][name] - base["same_scene"][name]
                    same_class.setdefault(name, []).append(delta)
            for scene, figures in now["other_scenes"].items():
                for name, value in figures.items():
                    if name != "mean":
                        delta = value - base["other_scenes"][scene][name]
                        other_class.setdefault(name, []).append(delta)
            seconds.append(entry["fine_tune_seconds"])
            adopted += bool(entry["adopted"])
        summary.append(
            {
                "recipe": recipe,
                "box": box,
                "round": number,
                "boxes": boxes,
                "runs": len(members),
                "adopted": adopted,
                "same_scene_mean_iou_gain": _spread(same_mean),
                "same_scene_class_change": {k: _spread(v) for k, v in same_class.items()},
                "other_scenes_class_change": {k: _spread(v) for k, v in other_class.items()},
                "fine_tune_seconds": _spread(seconds),
            }
        )
    return summary


#: The issue's bar: same-scene mean IoU gain averaged over directions, and the most any
#: class may lose (same scene, and scenes never labeled).
BAR_GAIN, BAR_LOSS = 0.03, 0.01


def bar_check(runs: list[dict]) -> list[dict]:
    """Per labeled scene, box size and round: the bar's three figures and whether they hold.

    The gain is averaged over the runs (directions and seeds) of one labeled scene; the
    losses are the worst of any run.
    """
    groups: dict[tuple, list[tuple[dict, dict]]] = {}
    for run in runs:
        for entry in run["rounds"]:
            key = (_label(run), run["box"], entry["round"], run["source"])
            groups.setdefault(key, []).append((run, entry))
    rows = []
    for (recipe, box, number, source), members in sorted(groups.items()):
        gains, same_worst, other_worst = [], [], []
        for run, entry in members:
            base, now = run["base"], entry["adopted_model"]
            gains.append(now["same_scene"]["mean"] - base["same_scene"]["mean"])
            same_worst += [
                v - base["same_scene"][k] for k, v in now["same_scene"].items() if k != "mean"
            ]
            other_worst += [
                v - base["other_scenes"][scene][k]
                for scene, figures in now["other_scenes"].items()
                for k, v in figures.items()
                if k != "mean"
            ]
        gain, same, other = float(np.mean(gains)), min(same_worst), min(other_worst)
        rows.append(
            {
                "recipe": recipe,
                "box": box,
                "round": number,
                "boxes": sorted({e["boxes"] for _, e in members}),
                "source": source,
                "runs": len(members),
                "same_scene_mean_gain": round(gain, 4),
                "same_scene_worst_class": round(same, 4),
                "other_scenes_worst_class": round(other, 4),
                "gain_bar_met": gain >= BAR_GAIN,
                "loss_bar_met": same >= -BAR_LOSS and other >= -BAR_LOSS,
            }
        )
    return rows


def _markdown(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def _boxes(counts: list[int]) -> str:
    """A range of box counts as ``8`` or ``3-8``."""
    return "-".join(map(str, sorted({counts[0], counts[-1]})))


def bar_table(rows: list[dict]) -> str:
    """The bar check as a Markdown table."""
    header = ["labeled scene", "box", "boxes", "runs", "same scene: mean gain"]
    header += ["same scene: worst class", "other scenes: worst class", "gain >= 0.03"]
    header += ["no class down > 0.01"]
    return _markdown(
        header,
        [
            [
                r["source"],
                r["box"],
                _boxes(r["boxes"]),
                r["runs"],
                f"{r['same_scene_mean_gain']:+.3f}",
                f"{r['same_scene_worst_class']:+.3f}",
                f"{r['other_scenes_worst_class']:+.3f}",
                "yes" if r["gain_bar_met"] else "no",
                "yes" if r["loss_bar_met"] else "no",
            ]
            for r in rows
        ],
    )


def tables(summary: list[dict]) -> str:
    """The summary as a Markdown table (docs/active-learning.md)."""
    short = {"clear": "clear", "cloud": "cloud", "cloud shadow": "shadow"}
    header = ["recipe", "box", "boxes", "runs", "adopted", "same scene: mean IoU gain (min, max)"]
    header += ["same scene: worst class change", "other scenes: worst class change (mean)"]
    header += ["round s (max)"]
    rows = []
    for row in summary:
        gain = row["same_scene_mean_iou_gain"]
        same = ", ".join(
            f"{short[k]} {v['min']:+.3f}" for k, v in row["same_scene_class_change"].items()
        )
        other = ", ".join(
            f"{short[k]} {v['min']:+.3f} ({v['mean']:+.3f})"
            for k, v in row["other_scenes_class_change"].items()
        )
        rows.append(
            [
                row["recipe"],
                row["box"],
                row["boxes"],
                row["runs"],
                row["adopted"],
                f"{gain['mean']:+.3f} ({gain['min']:+.3f}, {gain['max']:+.3f})",
                same,
                other,
                f"{row['fine_tune_seconds']['max']:.0f}",
            ]
        )
    return _markdown(header, rows)


def plot(summary: list[dict], path: Path) -> None:
    """Same-scene gain and the worst class change on other scenes, per recipe and box count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (gain, loss) = plt.subplots(1, 2, figsize=(9, 3.4), sharex=True)
    for recipe in sorted({row["recipe"] for row in summary}):
        rows = [r for r in summary if r["recipe"] == recipe and r["box"] == 64]
        boxes = [int(r["boxes"].split("-")[0]) for r in rows]
        spread = [r["same_scene_mean_iou_gain"] for r in rows]
        gain.errorbar(
            boxes,
            [s["mean"] for s in spread],
            yerr=[[s["mean"] - s["min"] for s in spread], [s["max"] - s["mean"] for s in spread]],
            marker="o",
            capsize=3,
            label=recipe,
        )
        worst = [min(v["min"] for v in r["other_scenes_class_change"].values()) for r in rows]
        loss.plot(boxes, worst, marker="o", label=recipe)
    gain.axhline(0, color="grey", lw=0.8)
    gain.set_title("same scene, unseen half: mean IoU gain", fontsize=9)
    loss.axhline(-0.01, color="tab:red", ls="--", lw=0.8, label="-0.01 bar")
    loss.set_title("other scenes: worst class IoU change", fontsize=9)
    for ax in (gain, loss):
        ax.set_xlabel("labeled boxes (64 px)")
    loss.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


#: Change budgets the decision study re-judges every round with: for the classes the
#: held-out boxes cannot judge, and for those they judge (1.0: no scene check).
BUDGETS = (0.02, 0.05, 0.1, 0.2, 1.0)
JUDGED_BUDGETS = (0.05, 0.1, 0.2, 1.0)


def decisions(runs: list[dict]) -> list[dict]:
    """Every round re-judged under each pair of change budgets, against what it really did.

    Each round's recorded figures (held-out IoU and scene change per class) are judged
    again by the judge's own rule (:func:`decide`) with other budgets; the round's new
    version is then compared with the model it started from on the scored half and the
    other scenes. A harmful adoption is one where any class loses more than
    :data:`BAR_LOSS` (counted apart for the scored half and the other scenes); a missed
    gain is a refused version that loses no class of the scored half by more and raises
    its mean by :data:`BAR_GAIN` or more.
    """
    from cloudseg.backend.active.judge import ClassScore, decide

    rows = []
    for budget, judged_budget in itertools.product(BUDGETS, JUDGED_BUDGETS):
        adopted = harmful = harmful_elsewhere = missed = 0
        gains: list[float] = []
        for run in runs:
            earlier = run["base"]
            for entry in run["rounds"]:
                classes = {n: ClassScore(**v) for n, v in entry["scores"].items()}
                verdict = decide(
                    classes,
                    "current",
                    "new",
                    change_budget=budget,
                    judged_change_budget=judged_budget,
                )
                new = entry["new_version"]
                same = {
                    k: v - earlier["same_scene"][k]
                    for k, v in new["same_scene"].items()
                    if k != "mean"
                }
                other = [
                    v - earlier["other_scenes"][scene][k]
                    for scene, figures in new["other_scenes"].items()
                    for k, v in figures.items()
                    if k != "mean"
                ]
                worst = min(same.values())
                gain = new["same_scene"]["mean"] - earlier["same_scene"]["mean"]
                if verdict.adopted:
                    adopted += 1
                    harmful += worst < -BAR_LOSS
                    harmful_elsewhere += min(other) < -BAR_LOSS
                    gains.append(gain)
                else:
                    missed += worst >= -BAR_LOSS and gain >= BAR_GAIN
                earlier = entry["adopted_model"]
        rounds = sum(len(r["rounds"]) for r in runs)
        rows.append(
            {
                "change_budget": budget,
                "judged_change_budget": judged_budget,
                "rounds": rounds,
                "adopted": adopted,
                "harmful_adoptions": harmful,
                "harmful_elsewhere": harmful_elsewhere,
                "missed_gains": missed,
                "mean_gain_when_adopted": round(float(np.mean(gains)), 4) if gains else None,
            }
        )
    return rows


def decisions_table(rows: list[dict]) -> str:
    """The decision study as a Markdown table."""
    header = ["change budget: unjudged / judged classes", "rounds", "adopted"]
    header += ["harmful on the scored half", "harmful on other scenes", "missed gains"]
    header += ["mean gain when adopted"]
    return _markdown(
        header,
        [
            [
                f"{r['change_budget']:.0%} / {r['judged_change_budget']:.0%}",
                r["rounds"],
                r["adopted"],
                r["harmful_adoptions"],
                r["harmful_elsewhere"],
                r["missed_gains"],
                "-"
                if r["mean_gain_when_adopted"] is None
                else f"{r['mean_gain_when_adopted']:+.3f}",
            ]
            for r in rows
        ],
    )


def pickers(runs: list[dict]) -> list[dict]:
    """Per box picker and round: what the labeled boxes taught, per class, with the spread.

    Two figures against the base model on the scored half: the new version the round
    trained (what the boxes taught, whatever the judge said) and the model the analyst
    has after the round (the adopted one). Mean and standard deviation over the runs
    (directions and seeds).
    """
    groups: dict[tuple, list[tuple[dict, dict]]] = {}
    for run in runs:
        for entry in run["rounds"]:
            key = (run.get("picker", "doubt"), run["box"], entry["round"])
            groups.setdefault(key, []).append((run, entry))
    rows = []
    for (picker, box, number), members in sorted(groups.items()):
        row: dict[str, Any] = {"picker": picker, "box": box, "round": number}
        row["boxes"] = sorted({e["boxes"] for _, e in members})
        row["runs"], row["adopted"] = len(members), sum(bool(e["adopted"]) for _, e in members)
        for which in ("new_version", "adopted_model"):
            row[which] = {
                name: _spread(
                    [
                        e[which]["same_scene"][name] - r["base"]["same_scene"][name]
                        for r, e in members
                    ]
                )
                for name in (*CLASSES, "mean")
            }
        rows.append(row)
    return rows


def pickers_table(rows: list[dict]) -> str:
    """The picker comparison as a Markdown table: mean (std) IoU change per class."""
    short = {"clear": "clear", "cloud": "cloud", "cloud shadow": "shadow", "mean": "mean"}
    names = " / ".join(short.values())
    header = ["boxes picked by", "round", "boxes", "runs", "adopted"]
    header += [f"new version: {names}", f"the analyst's model: {names}"]
    return _markdown(
        header,
        [
            [r["picker"], r["round"], _boxes(r["boxes"]), r["runs"], r["adopted"]]
            + [
                " / ".join(f"{r[w][n]['mean']:+.3f} ({r[w][n]['std']:.3f})" for n in short)
                for w in ("new_version", "adopted_model")
            ]
            for r in rows
        ],
    )


def main() -> int:
    """Run the simulations and write the JSON."""
    if sys.argv[1:2] == ["--decisions"]:  # --decisions DIRECTIONS REPORT.json [...]
        wanted = set(sys.argv[2].split(","))
        runs = [
            r
            for path in sys.argv[3:]
            for r in json.loads(Path(path).read_text())["runs"]
            if r["direction"] in wanted and "scores" in r["rounds"][0]
        ]
        print(decisions_table(decisions(runs)))
        return 0
    if sys.argv[1:2] == ["--tables"]:  # print the Markdown tables of written reports
        runs = [r for path in sys.argv[2:] for r in json.loads(Path(path).read_text())["runs"]]
        print(tables(summarize(runs)))
        print()
        print(bar_table(bar_check(runs)))
        if len({r.get("picker", "doubt") for r in runs}) > 1:
            print()
            print(pickers_table(pickers(runs)))
        return 0
    if sys.argv[1:2] == ["--plot"]:  # --plot OUT.png REPORT.json [...]
        runs = [r for path in sys.argv[3:] for r in json.loads(Path(path).read_text())["runs"]]
        plot(summarize(runs), Path(sys.argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("dev/results/active_learning.json"))
    parser.add_argument("--recipes", default=DEFAULT_RECIPE, help="comma-separated")
    parser.add_argument("--sources", default=",".join(SOURCES), help="comma-separated")
    parser.add_argument("--directions", default="top,bottom", help="comma-separated")
    parser.add_argument("--boxes", default="64,128", help="box edges, comma-separated")
    parser.add_argument("--seeds", default="0", help="comma-separated")
    parser.add_argument("--per-round", type=int, default=4, help="boxes labeled per round")
    parser.add_argument(
        "--rounds", default="64:3,128:2", help="rounds per box edge (box:rounds, ...)"
    )
    parser.add_argument(
        "--counts", default="", help="new boxes per round, e.g. 8,4 (overrides --rounds)"
    )
    parser.add_argument("--pickers", default="doubt", help="doubt, random, clear (comma-separated)")
    parser.add_argument("--base", default=BASE, help="the model the analyst starts from")
    parser.add_argument("--label", default="", help="what this run is for (kept in the JSON)")
    args = parser.parse_args()
    from reference_scenes import labeled_scenes

    rounds_for = {int(k): int(v) for k, v in (p.split(":") for p in args.rounds.split(","))}
    started = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["CLOUDSEG_MODELS_DIR"] = str(work / "models")
        scenes = {}
        for s in labeled_scenes(args.data, work / "scenes"):
            if s.name == "ukis-s2-l1c-as-10m":
                s.image, s.name = four_bands(s.image, work / "scenes" / f"{TEN_M}.tif"), TEN_M
            if s.name in SAME_PIXELS and s.name != TEN_M:
                continue
            if s.resolution_m is None:  # not georeferenced: give it the ~30 m grid it has
                s.image = on_grid(s, work / "scenes", 30.0)
                label_copy = work / "scenes" / f"{s.name}-30m.labels.tif"
                _regrid_labels(s.labels, s.image, label_copy)
                s.labels = label_copy
            scenes[s.name] = s
        scorer = Scorer()
        for recipe in args.recipes.split(","):
            for name in args.sources.split(","):
                same = {name, SAME_PIXELS.get(name)}
                targets = {
                    k: v for k, v in scenes.items() if k not in same and k not in SAME_PIXELS
                }
                for direction, box, seed, picker in itertools.product(
                    args.directions.split(","),
                    map(int, args.boxes.split(",")),
                    map(int, args.seeds.split(",")),
                    args.pickers.split(","),
                ):
                    counts = (
                        [int(n) for n in args.counts.split(",")]
                        if args.counts
                        else [args.per_round] * rounds_for[box]
                    )
                    runs.append(
                        simulate(
                            scenes[name],
                            direction,
                            box,
                            counts,
                            recipe,
                            seed,
                            targets,
                            scorer,
                            work,
                            picker,
                            args.base,
                        )
                    )
                    _write(args, runs, started)
    _write(args, runs, started)
    return 0


def four_bands(image: Path, out: Path) -> Path:
    """A copy of a B02, B03, B04, B08, B11, B12 image with its first four bands only."""
    import rasterio

    with rasterio.open(image) as src:
        profile = src.profile | {"count": 4}
        with rasterio.open(out, "w", **profile) as dst:
            dst.write(src.read([1, 2, 3, 4]))
            dst.descriptions = src.descriptions[:4]
    return out


def _regrid_labels(labels: Path, image: Path, out: Path) -> None:
    """Copy a label raster onto an image's grid (same size, the image's CRS and transform)."""
    import rasterio

    with rasterio.open(image) as ref, rasterio.open(labels) as src:
        profile = src.profile | {"crs": ref.crs, "transform": ref.transform}
        with rasterio.open(out, "w", **profile) as dst:
            dst.write(src.read())


def _write(args: argparse.Namespace, runs: list[dict], started: float) -> None:
    report = {
        "benchmark": "simulated analyst through the product's loop (propose, labels add, "
        "fine-tune with the judge), scored on the same scene's unseen half and on every "
        "other labeled scene, per class, against the base model",
        "label": args.label,
        "base_model": args.base,
        "settings": {k: v for k, v in vars(args).items() if k not in ("data", "out")},
        "summary": summarize(runs),
        "bar": bar_check(runs),
        "pickers": pickers(runs),
        "decisions": decisions(runs) if runs and "scores" in runs[0]["rounds"][0] else [],
        "runs": runs,
        "minutes": round((time.perf_counter() - started) / 60, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_results(report, ("cloudseg", "torch", "numpy"), args.out)


if __name__ == "__main__":
    sys.exit(main())

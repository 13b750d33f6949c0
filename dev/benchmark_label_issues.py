#!/usr/bin/env python3
"""Planted label errors in a copy of the real CloudSEN12 store: what does the finder catch?

1. The CloudSEN12 figure patches of the shared data (Sentinel-2 L1C, B02 B03 B04, 10 m,
   expert labels: dense or scribbles) are ingested and cut into chips of 254 px (4 per
   patch); the chips form a store.
2. In a copy, errors are planted in chips that hold both cloud and shadow:
   ``all clear`` (the whole chip labeled clear: a chip-level error), ``shadow erased``
   (its shadow labeled clear) and ``shifted`` (its mask shifted by 20 px).
3. ``check_labels`` with cross-validated folds (no built-in model reads these three
   bands, so out-of-sample probabilities come from K models, each fine-tuned from
   ukis-csmask-4b-l1c on the other folds; a patch's 4 chips stay in one fold) ranks the
   chips by label quality; for each kind of error: recall in the top k (k = number
   planted), precision of the top k and of the finder's "flagged" set.
4. Training that uses it: the same fine-tuning on all chips of the planted copy with the
   flags kept, excluded and down-weighted, and on the clean store (the bound), each
   evaluated on an independent labeled scene (the ukis-csmask Sentinel-2 test scene,
   same three bands), two seeds each.

Usage: benchmark_label_issues.py --data ../shared/data/real --out dev/results/label_issues.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from benchmark_common import write_results

CHIP = 254
KINDS = ("all clear", "shadow erased", "shifted")
CLOUD, SHADOW, CLEAR = (1, 2), 3, 0  # CloudSEN12 values: thick and thin cloud, shadow
INIT = "ukis-csmask-4b-l1c"


def plant(mask: np.ndarray, kind: str) -> np.ndarray:
    """The chip's labels with one planted error (unlabeled pixels stay unlabeled)."""
    labeled = mask != 255
    if kind == "all clear":
        return np.where(labeled, CLEAR, mask).astype(mask.dtype)
    if kind == "shadow erased":
        return np.where(mask == SHADOW, CLEAR, mask).astype(mask.dtype)
    shifted = np.roll(mask, 20, axis=1)
    shifted[:, :20] = mask[:, :1]
    return shifted


#: Epochs and windows per epoch of every fine-tuning here (set from the command line).
SCHEDULE = {"epochs": 8, "samples_per_epoch": 128}


def config(store: Path, out: Path, seed: int, **data: Any) -> dict[str, Any]:
    """The fine-tuning of every run here: ukis-csmask-4b-l1c on three bands, 128-px windows."""
    return {
        "name": out.name,
        "output": str(out),
        "data": {
            "store": str(store),
            "bands": ["B02", "B03", "B04"],
            "classes": ["clear", "cloud", "cloud shadow"],
            "window": 128,
            "samples_per_epoch": SCHEDULE["samples_per_epoch"],
            "normalization": "card",
            "product_level": "L1C",
            "split": {"group_pattern": r"^.+(?=-r\d)", "val_fraction": 0.2},
        }
        | data,
        "model": {"init": INIT},
        "train": {
            "epochs": SCHEDULE["epochs"],
            "batch_size": 8,
            "lr": 3e-4,
            "patience": 4,
            "seed": seed,
        },
    }


def chip_store(source: Any, root: Path, store: Path, planted: dict[str, str]) -> None:
    """Cut every scene of ``source`` into chips and ingest them (errors planted as named)."""
    import rasterio
    from affine import Affine

    from cloudseg.backend.store.ingest import ingest

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    scheme = {"bands": source.bands, "classes": [c["name"] for c in source.classes]}
    (root / "data.json").write_text(json.dumps(scheme))
    for scene in source.scenes():
        image, mask = source.read(scene)
        props = source.item(scene).properties
        transform = Affine(*props["proj:transform"][:6])
        for r in (0, CHIP):
            for c in (0, CHIP):
                name = f"{scene}-r{r:03d}-c{c:03d}"
                chip = mask[r : r + CHIP, c : c + CHIP]
                if name in planted:
                    chip = plant(chip, planted[name])
                profile = {
                    "driver": "GTiff", "width": CHIP, "height": CHIP,
                    "crs": props["proj:code"],
                    "transform": transform * Affine.translation(c, r),
                }  # fmt: skip
                with rasterio.open(
                    root / "images" / f"{name}.tif", "w", count=3, dtype=image.dtype, **profile
                ) as ds:
                    ds.write(image[:, r : r + CHIP, c : c + CHIP])
                    ds.descriptions = tuple(source.bands)
                with rasterio.open(
                    root / "masks" / f"{name}.tif", "w", count=1, dtype="uint8", **profile
                ) as ds:
                    ds.write(chip[None])
    ingest(root, store, layout="pairs", env_file=None, report=False)


def test_scene(data: Path, folder: Path) -> tuple[Path, Path]:
    """The ukis-csmask Sentinel-2 scene's B02 B03 B04 (as 10 m) and labels, as GeoTIFFs."""
    import rasterio
    from rasterio.transform import from_origin
    from reference_scenes import labeled_scenes

    scene = next(s for s in labeled_scenes(data, folder) if s.name == "ukis-s2-l1c-as-10m")
    with rasterio.open(scene.image) as ds:
        rgb = ds.read([1, 2, 3])
    image = folder / "ukis-s2-rgb.tif"
    profile = {
        "driver": "GTiff", "width": 512, "height": 512, "count": 3, "dtype": "uint16",
        "crs": "EPSG:32632", "transform": from_origin(500000, 5300000, 10, 10),
    }  # fmt: skip
    with rasterio.open(image, "w", **profile) as ds:
        ds.write(rgb)
        ds.descriptions = ("B02", "B03", "B04")
    return image, scene.labels


def main() -> int:
    """Build the stores, plant the errors, check with folds, train with and without flags."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("dev/results/label_issues.json"))
    parser.add_argument("--per-kind", type=int, default=2, help="chips planted per kind")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=0, help="seed of the choice of chips")
    parser.add_argument("--epochs", type=int, default=SCHEDULE["epochs"])
    parser.add_argument("--samples", type=int, default=SCHEDULE["samples_per_epoch"])
    args = parser.parse_args()
    SCHEDULE.update(epochs=args.epochs, samples_per_epoch=args.samples)
    from cloudseg.backend.store.dataset import open_dataset
    from cloudseg.backend.store.ingest import ingest
    from cloudseg.training.config import Config
    from cloudseg.training.evaluate import evaluate_rasters
    from cloudseg.training.label_check import check_labels
    from cloudseg.training.train import train

    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ingest(args.data / "cloudsen12_figures", work / "cs12", env_file=None, report=False)
        source = open_dataset(work / "cs12")
        eligible = []
        for scene in source.scenes():
            mask = source.read(scene)[1]
            for r in (0, CHIP):
                for c in (0, CHIP):
                    chip = mask[r : r + CHIP, c : c + CHIP]
                    labeled = max(int((chip != 255).sum()), 1)
                    if (
                        np.isin(chip, CLOUD).sum() / labeled > 0.05
                        and (chip == SHADOW).sum() / labeled > 0.02
                        and labeled > 0.5 * chip.size
                    ):
                        eligible.append(f"{scene}-r{r:03d}-c{c:03d}")
        if len(eligible) < args.per_kind * len(KINDS):
            raise SystemExit(f"only {len(eligible)} chips hold cloud and shadow; use --per-kind 1")
        print(f"{len(eligible)} chips hold cloud and shadow", flush=True)
        picked = list(rng.permutation(sorted(eligible))[: args.per_kind * len(KINDS)])
        planted = {name: KINDS[i // args.per_kind] for i, name in enumerate(picked)}
        stores = {}
        for variant in ("clean", "planted"):
            stores[variant] = work / f"{variant}-store"
            chip_store(
                source, work / variant, stores[variant], planted if variant == "planted" else {}
            )
        chips = open_dataset(stores["planted"]).scenes()
        # 1. The finder, with cross-validated folds, on the planted copy and the clean one.
        checks = {}
        for variant, store in stores.items():
            cfg = Config.from_dict(config(store, work / f"cv-{variant}", seed=args.seeds[0]))
            checks[variant] = check_labels(
                store, None, work / f"{variant}-out", folds=args.folds, config=cfg
            )
            print(f"checked {variant}: {time.perf_counter() - started:.0f} s", flush=True)
        found = checks["planted"]
        ranks = {e["scene"]: e["rank"] for e in found.scenes}
        clean_ranks = {e["scene"]: e["rank"] for e in checks["clean"].scenes}
        k = len(planted)
        top = {e["scene"] for e in found.scenes[:k]}
        flagged = {e["scene"] for e in found.flagged()}
        per_kind = {}
        for kind in KINDS:
            mine = [n for n, kd in planted.items() if kd == kind]
            per_kind[kind] = {
                "chips": {
                    n: {
                        "rank": ranks[n],
                        "rank_when_clean": clean_ranks[n],
                        "flagged": n in flagged,
                    }
                    for n in mine
                },
                "recall_in_top_k": round(sum(n in top for n in mine) / len(mine), 3),
                "recall_flagged": round(sum(n in flagged for n in mine) / len(mine), 3),
            }
        # 2. Training with and without the flagged labels, scored on an independent scene.
        image, labels = test_scene(args.data, work / "test")
        experiment: dict[str, Any] = {}
        variants = {
            "planted, flags kept": (stores["planted"], {}),
            "planted, flagged chips excluded": (
                stores["planted"], {"label_quality": {"action": "exclude"}}
            ),
            "planted, flagged chips down-weighted": (
                stores["planted"], {"label_quality": {"action": "down_weight"}}
            ),
            "clean (no planted errors)": (stores["clean"], {}),
        }  # fmt: skip
        for name, (store, extra) in variants.items():
            runs = []
            for seed in args.seeds:
                out = work / f"train-{len(experiment)}-{seed}"
                result = train(Config.from_dict(config(store, out, seed, **extra)))
                scored = evaluate_rasters(
                    str(result.model_path), [image], [labels], ["clear", "cloud", "cloud shadow"]
                ).metrics
                runs.append(
                    {
                        "seed": seed,
                        "train_chips": len(result.train_scenes),
                        "mean_iou": scored["mean_iou"],
                        "iou": {c: v["iou"] for c, v in scored["per_class"].items()},
                    }
                )
                print(f"{name} seed {seed}: {runs[-1]}", flush=True)
            experiment[name] = {
                "runs": runs,
                "mean_iou": round(float(np.mean([r["mean_iou"] for r in runs])), 4),
                "cloud_iou": round(float(np.mean([r["iou"]["cloud"] for r in runs])), 4),
                "shadow_iou": round(float(np.mean([r["iou"]["cloud shadow"] for r in runs])), 4),
            }
    report = {
        "benchmark": "planted label errors in a chip copy of the real CloudSEN12 store "
        f"({len(chips)} chips of {CHIP} px, B02 B03 B04); the finder ranks chips by cleanlab's "
        f"label quality score with {args.folds}-fold cross-validated probabilities (each "
        f"fold's model fine-tuned from {INIT} on the other folds)",
        "chips": len(chips),
        "planted": planted,
        "k": k,
        "precision_at_k": round(len(top & set(planted)) / k, 3),
        "recall_at_k": round(len(top & set(planted)) / k, 3),
        "flag_limit": found.limit,
        "flagged": sorted(flagged),
        "precision_flagged": round(len(flagged & set(planted)) / max(len(flagged), 1), 3),
        "recall_flagged": round(len(flagged & set(planted)) / k, 3),
        "per_kind": per_kind,
        "fold_training": f"{args.epochs} epochs x {args.samples} windows of 128 px each",
        "folds": found.folds,
        "ranking": found.scenes,
        "ranking_clean": checks["clean"].scenes,
        "confusions": found.confusions,
        "training_with_and_without_flags": {
            "test_scene": "ukis-csmask Sentinel-2 test scene (512 x 512, B02 B03 B04 as 10 m)",
            "settings": f"fine-tuned from ukis-csmask-4b-l1c, {args.epochs} epochs x "
            f"{args.samples} windows of 128 px; the same seeds in every variant",
            "seeds": args.seeds,
            "results": experiment,
        },
        "minutes": round((time.perf_counter() - started) / 60, 2),
    }
    for entry in report["ranking"] + report["ranking_clean"]:
        entry.pop("issue_raster", None)
        entry.pop("predicted_raster", None)
        entry["windows"] = entry["windows"][:3]
    write_results(report, ("cloudseg", "cleanlab", "numpy", "torch"), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

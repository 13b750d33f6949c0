#!/usr/bin/env python3
"""Planted label errors: how many does ``cloudseg labels check`` rank on top?

The labeled ukis-csmask Sentinel-2 scene of the shared data (6 bands, 30 m, 512 x 512
px; the built-in ``ukis-csmask-6b-l1c`` did not train on it) is cut into 16 chips of
128 px and ingested as a store; in a copy, errors are planted in some chips:

- ``all clear``: a chip with cloud labeled all clear (a chip-level error);
- ``shadow erased``: a chip's shadow labeled clear;
- ``shifted``: a chip's mask shifted by 20 px.

The finder then ranks the chips of the copy by label quality. For each kind: recall in
the top k (k = number of planted chips) and precision of the top k overall; and the
planted chips' ranks. The clean store is checked too, as a baseline for the ranks.

Usage: benchmark_label_issues.py --data ../shared/data/real --out benchmarks/label_issues.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchmark_common import write_results

MODEL = "ukis-csmask-6b-l1c"
CHIP = 128
#: Which chips get which error (chosen among chips with cloud and shadow, seed 0).
KINDS = ("all clear", "shadow erased", "shifted")


def plant(mask: np.ndarray, kind: str) -> np.ndarray:
    """The chip's labels with one planted error."""
    if kind == "all clear":
        return np.zeros_like(mask)
    if kind == "shadow erased":
        return np.where(mask == 2, 0, mask).astype(mask.dtype)
    shifted = np.roll(mask, 20, axis=1)
    shifted[:, :20] = mask[:, :1]
    return shifted


def main() -> int:
    """Build the stores, plant the errors, check, score."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/label_issues.json"))
    parser.add_argument("--per-kind", type=int, default=2, help="chips planted per kind")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import rasterio
    from rasterio.transform import from_origin

    from cloudseg.backend.store.ingest import ingest
    from cloudseg.training.label_check import check_labels
    from cloudseg.training.reference import SIX_BANDS, labeled_scenes

    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        scene = next(s for s in labeled_scenes(args.data, work / "s") if s.name == "ukis-s2-l1c")
        image = np.moveaxis(scene.reflectance, -1, 0)
        truth = scene.reference()
        chips = {}
        for r in range(0, 512, CHIP):
            for c in range(0, 512, CHIP):
                chips[f"chip-r{r:03d}-c{c:03d}"] = (r, c)
        # Chips with both cloud and shadow can carry every kind of error.
        eligible = [
            n for n, (r, c) in chips.items()
            if (truth[r:r + CHIP, c:c + CHIP] == 1).mean() > 0.05
            and (truth[r:r + CHIP, c:c + CHIP] == 2).mean() > 0.02
        ]  # fmt: skip
        picked = list(rng.permutation(eligible)[: args.per_kind * len(KINDS)])
        planted = {
            name: KINDS[i // args.per_kind] for i, name in enumerate(picked)
        }  # fmt: skip
        reports = {}
        for variant in ("clean", "planted"):
            root = work / variant
            (root / "images").mkdir(parents=True)
            (root / "masks").mkdir()
            (root / "data.json").write_text(
                json.dumps(
                    {"bands": list(SIX_BANDS), "classes": ["clear", "cloud", "cloud shadow"]}
                )
            )
            for name, (r, c) in chips.items():
                mask = truth[r : r + CHIP, c : c + CHIP].copy()
                if variant == "planted" and name in planted:
                    mask = plant(mask, planted[name])
                profile = {
                    "driver": "GTiff", "width": CHIP, "height": CHIP, "crs": "EPSG:32632",
                    "transform": from_origin(500000 + c * 30, 5300000 - r * 30, 30, 30),
                }  # fmt: skip
                dn = np.rint(image[:, r : r + CHIP, c : c + CHIP] * 1e4).astype(np.uint16)
                with rasterio.open(
                    root / "images" / f"{name}.tif", "w", count=6, dtype="uint16", **profile
                ) as ds:
                    ds.write(dn)
                    ds.descriptions = tuple(SIX_BANDS)
                with rasterio.open(
                    root / "masks" / f"{name}.tif", "w", count=1, dtype="uint8", **profile
                ) as ds:
                    ds.write(mask[None])
            ingest(root, work / f"{variant}-store", layout="pairs", env_file=None, report=False)
            reports[variant] = check_labels(
                work / f"{variant}-store", MODEL, work / f"{variant}-out"
            )
    ranks = {e["scene"]: e["rank"] for e in reports["planted"].scenes}
    clean_ranks = {e["scene"]: e["rank"] for e in reports["clean"].scenes}
    k = len(planted)
    top = {e["scene"] for e in reports["planted"].scenes[:k]}
    per_kind = {}
    for kind in KINDS:
        mine = [n for n, kd in planted.items() if kd == kind]
        per_kind[kind] = {
            "chips": {n: {"rank": ranks[n], "rank_when_clean": clean_ranks[n]} for n in mine},
            "recall_in_top_k": round(sum(n in top for n in mine) / len(mine), 3),
        }
    report = {
        "benchmark": "planted label errors in a store of 16 chips (128 px) of the labeled "
        "ukis-csmask Sentinel-2 scene; the finder ranks chips by cleanlab's label quality "
        f"score with {MODEL}'s out-of-sample probabilities",
        "model": MODEL,
        "chips": len(chips),
        "planted": planted,
        "k": k,
        "precision_at_k": round(len(top & set(planted)) / k, 3),
        "recall_at_k": round(len(top & set(planted)) / k, 3),
        "per_kind": per_kind,
        "ranking": reports["planted"].scenes,
        "ranking_clean": reports["clean"].scenes,
        "confusions": reports["planted"].confusions,
        "minutes": round((time.perf_counter() - started) / 60, 2),
    }
    for entry in report["ranking"] + report["ranking_clean"]:
        entry.pop("issue_raster", None)
    write_results(report, ("cloudseg", "cleanlab", "numpy"), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Sensitivity and valid pixels on the labeled real scenes: what the thresholds move.

On ukis-csmask's labeled test scenes in the shared data (Sentinel-2, Landsat-5,
Landsat-7; 6 bands, ~30 m), ``cloudseg segment`` with ukis-csmask-6b-l1c is run at
several cloud thresholds and shadow thresholds (and the default argmax). For each:
IoU, commission error (share of the predicted pixels that are wrong) and omission error
(share of the labeled pixels missed), for cloud and for shadow.

The valid mask (buffers 120 m = ukis-csmask's 4 pixels at 30 m) is compared with the
reference valid mask as ukis-csmask's own test builds it (Cohen's kappa), next to
ukis-csmask's ``valid`` output on the same scene.

Usage: benchmark_sensitivity.py --data ../shared/data/real --out dev/results/sensitivity.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from benchmark_common import write_results

MODEL = "ukis-csmask-6b-l1c"
THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
SCENES = ("ukis-s2-l1c", "ukis-landsat5", "ukis-landsat7")


def errors(truth: np.ndarray, predicted: np.ndarray, value: int) -> dict[str, float]:
    """IoU, commission and omission of one class (unlabeled pixels left out)."""
    labeled = truth != 255
    t, p = (truth == value) & labeled, (predicted == value) & labeled
    tp, fp, fn = int((t & p).sum()), int((~t & p).sum()), int((t & ~p).sum())
    return {
        "iou": round(tp / max(tp + fp + fn, 1), 4),
        "commission": round(fp / max(tp + fp, 1), 4),
        "omission": round(fn / max(tp + fn, 1), 4),
    }


def main() -> int:
    """Run every threshold on every scene, then the valid-mask agreement."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("dev/results/sensitivity.json"))
    args = parser.parse_args()
    import rasterio
    from reference_scenes import (
        csmask_valid,
        labeled_scenes,
        on_grid,
        reference_valid,
    )  # fmt: skip
    from sklearn.metrics import cohen_kappa_score

    from cloudseg.backend.inference.segment import SegmentOptions, segment

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for scene in labeled_scenes(args.data, work / "s"):
            if scene.name not in SCENES:
                continue
            image = scene.image if scene.resolution_m else on_grid(scene, work)
            truth = scene.reference()
            rows = []
            runs = [("default (argmax)", {})]
            runs += [(f"cloud >= {t}", {"cloud_threshold": t}) for t in THRESHOLDS]
            runs += [(f"shadow >= {t}", {"shadow_threshold": t}) for t in THRESHOLDS]
            for label, thresholds in runs:
                out = work / f"{scene.name}-{len(rows)}.tif"
                options = SegmentOptions(model=MODEL, precision="fp32", **thresholds)
                segment(image, out, options)
                with rasterio.open(out) as ds:
                    predicted = ds.read(1)
                rows.append({"setting": label, **thresholds, "cloud": errors(truth, predicted, 1),
                             "shadow": errors(truth, predicted, 2)})  # fmt: skip
            valid = work / f"{scene.name}-valid.tif"
            segment(image, work / f"{scene.name}-m.tif",
                    SegmentOptions(model=MODEL, precision="fp32", valid=valid,
                                   buffer_cloud_m=120, buffer_shadow_m=120))  # fmt: skip
            with rasterio.open(valid) as ds:
                ours = ds.read(1)
            reference = reference_valid(truth, 4)
            theirs = csmask_valid(scene, 6, 4)
            results[scene.name] = {
                "description": scene.description,
                "thresholds": rows,
                "valid_kappa": {
                    "cloudseg (120 m disk buffers)": round(
                        float(cohen_kappa_score(reference.ravel(), ours.ravel())), 3
                    ),
                    "ukis-csmask valid (4-pixel buffer)": round(
                        float(cohen_kappa_score(reference.ravel(), theirs.ravel())), 3
                    ),
                },
                "usable_percent": {
                    "reference": round(100 * float(reference.mean()), 2),
                    "cloudseg": round(100 * float((ours == 1).mean()), 2),
                    "ukis-csmask": round(100 * float(theirs.mean()), 2),
                },
            }
    report = {
        "benchmark": f"{MODEL} at cloud and shadow thresholds on the labeled ukis-csmask test "
        "scenes; valid-mask agreement with the reference (Cohen's kappa) next to ukis-csmask",
        "model": MODEL,
        "scenes": results,
    }
    write_results(report, ("cloudseg", "ukis-csmask", "scikit-learn"), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

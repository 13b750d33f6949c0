"""Evaluate the built-in models and a fine-tuned one on the labeled real data.

Reproduces the table of docs/training.md::

    .venv/bin/cloudseg ingest ../shared/data/real/cloudsen12_figures runs/cloudsen12-store
    .venv/bin/cloudseg train --config docs/train-cloudsen12.yaml
    .venv/bin/python dev/evaluate_models.py --finetuned runs/cloudsen12-rgb/model.pt

Datasets (see ../shared/data/real/PROVENANCE.md; both are tiny, figures are indicative):
- CloudSEN12 figure patches, Sentinel-2 L1C, B02-B04 only, 10 m: the held-out place
  ROI_2507 (5 patches; the fine-tuned model never saw it). The built-in models need
  B08, which these patches lack.
- ukis-csmask's Landsat-5/7 test chips, 6 bands of TOA reflectance, ~30 m, not
  georeferenced (run at their native grid).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from benchmark_common import write_results

from cloudseg.backend.errors import BandError
from cloudseg.backend.inference.options import RunOptions
from cloudseg.backend.models.registry import builtin_models, load_model
from cloudseg.backend.store.ingest import ingest
from cloudseg.training.evaluate import evaluate_store

LANDSAT_SCHEME = {
    "bands": ["blue", "green", "red", "nir", "swir16", "swir22"],
    "classes": ["clear", "cloud", "cloud shadow"],
    # ukis-csmask's test masks: 0 cloud shadow, 4 cloud, 1-3 clear surfaces
    "mask_values": {"0": 2, "1": 0, "2": 0, "3": 0, "4": 1},
}


def _landsat_store(data: Path, work: Path) -> Path:
    store = work / "landsat-store"
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp)
        for chip in sorted((data / "ukis_landsat").glob("*.npz")):
            shutil.copy(chip, source / chip.name)
        (source / "data.json").write_text(json.dumps(LANDSAT_SCHEME))
        ingest(source, store, layout="npz", env_file=None, report=False)
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/real"))
    parser.add_argument("--work", type=Path, default=Path("runs"))
    parser.add_argument("--finetuned", action="append", default=[], help="model.pt or .onnx")
    parser.add_argument("--out", type=Path, default=Path("dev/results/evaluation.json"))
    args = parser.parse_args()

    cs12 = args.work / "cloudsen12-store"
    ingest(args.data / "cloudsen12_figures", cs12, env_file=None, report=False)
    landsat = _landsat_store(args.data, args.work)
    held_out = [
        f"ROI_2507-{level}"
        for level in ("clear", "almost-clear", "low-cloudy", "mid-cloudy", "cloudy")
    ]
    datasets = {
        "cloudsen12 ROI_2507 (held out)": (cs12, held_out, RunOptions(precision="fp32")),
        "ukis Landsat-5/7 chips": (landsat, None, RunOptions(precision="fp32")),
    }
    models = [m.card.name for m in builtin_models()] + [str(p) for p in args.finetuned]
    rows = []
    for model in models:
        card = load_model(model).card
        for label, (store, scenes, options) in datasets.items():
            row = {"model": card.name, "dataset": label}
            try:
                result = evaluate_store(model, store, scenes=scenes, options=options)
            except BandError as exc:
                row["result"] = f"n/a: {exc}"
            else:
                m = result.metrics
                row |= {
                    "pixels": m["pixels"],
                    "mean_iou": m["mean_iou"],
                    "pixel_accuracy": m["pixel_accuracy"],
                    "balanced_accuracy": m["balanced_accuracy"],
                    "iou": {k: v["iou"] for k, v in m["per_class"].items()},
                    "f1": {k: v["f1"] for k, v in m["per_class"].items()},
                }
            rows.append(row)
    write_results(
        {"evaluations": rows}, ("torch", "onnxruntime", "segmentation-models-pytorch"), args.out
    )
    print(
        "\n| model | data | pixels | mIoU | IoU clear / cloud / shadow | F1 cloud | balanced acc. |"
    )
    print("|---|---|---:|---:|---|---:|---:|")
    for row in rows:
        if "mean_iou" not in row:
            reason = "needs " + row["result"].split("needs ")[-1].split(" that ")[0]
            print(f"| {row['model']} | {row['dataset']} | - | n/a ({reason}) | | | |")
            continue

        def fmt(v: float | None) -> str:
            return "-" if v is None else f"{v:.3f}"

        ious = " / ".join(fmt(row["iou"][c]) for c in ("clear", "cloud", "cloud shadow"))
        print(
            f"| {row['model']} | {row['dataset']} | {row['pixels']:,} | {fmt(row['mean_iou'])} | "
            f"{ious} | {fmt(row['f1']['cloud'])} | {fmt(row['balanced_accuracy'])} |"
        )


if __name__ == "__main__":
    main()

"""Training throughput (windows per second) on this machine, written as JSON.

    .venv/bin/cloudseg ingest ../shared/data/real/cloudsen12_figures runs/cloudsen12-store
    .venv/bin/python dev/benchmark_train.py            # -> dev/results/train_cpu.json

Each model trains for one epoch on 256-pixel windows of the real CloudSEN12 patches
(batch 4, 3 bands); the figure counts the training batches only, window reading and
augmentation included, validation and checkpoints excluded. Add ``--device cuda`` on a
GPU (bf16 mixed precision).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from benchmark_common import write_results

from cloudseg.training.config import Config
from cloudseg.training.train import train

MODELS = [
    {"init": "ukis-csmask-4b-l1c"},  # U-Net, EfficientNet-B4 (the built-in cloud model)
    {"architecture": "Unet", "encoder": "resnet34"},
    {"architecture": "FPN", "encoder": "resnet34"},
    {"architecture": "DeepLabV3Plus", "encoder": "resnet34"},
    {"architecture": "Segformer", "encoder": "mit_b0"},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="runs/cloudsen12-store")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--windows", type=int, default=48, help="windows per model")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for model in MODELS:
        with tempfile.TemporaryDirectory() as tmp:
            config = Config.from_dict(
                {
                    "name": "benchmark",
                    "output": tmp,
                    "data": {
                        "store": args.store,
                        "bands": ["B02", "B03", "B04"],
                        "classes": ["clear", "cloud", "cloud shadow"],
                        "window": 256,
                        "samples_per_epoch": args.windows,
                        "split": {"val_scenes": ["ROI_2507-clear"]},
                    },
                    "model": model,
                    "train": {"epochs": 1, "batch_size": args.batch_size, "device": args.device},
                }
            )
            result = train(config, overwrite=True)
        rows.append(
            {
                "model": model.get("init") or f"{model['architecture']}/{model['encoder']}",
                "windows_per_second": result.windows_per_second,
                "window": 256,
                "batch_size": args.batch_size,
                "windows": args.windows,
                "device": result.device,
            }
        )
        print(rows[-1])
    out = args.out or Path(f"dev/results/train_{args.device}.json")
    report = {"training_throughput": rows, "threads": torch.get_num_threads()}
    write_results(report, ("torch", "lightning", "segmentation-models-pytorch", "kornia"), out)


if __name__ == "__main__":
    main()

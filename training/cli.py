"""``cloudseg train``, ``cloudseg evaluate`` and ``cloudseg export``, and the label commands.

The backend's command line adds these through :func:`add_parsers` (the
``cloudseg.commands`` entry point ``training``); the label round's commands
(``propose``, ``labels-to-store``, ``fine-tune``, ``labels ...``) are
:mod:`.label_cli`'s, added from here.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..backend.cli import add_output_flags, bar_progress, percent_bar
from ..backend.errors import InputError
from ..backend.inference.options import add_run_flags, run_options
from . import label_cli


def _parse_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a config dict.

    Raises:
        InputError: For an override without ``=``.
    """
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--set {item!r}: write KEY=VALUE, e.g. train.epochs=5")
        target = data
        *parents, last = key.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[last] = _parse_value(value)
    return data


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import Config, load_yaml
    from .train import global_rank, train

    config = Config.from_dict(apply_overrides(load_yaml(args.config), args.set), args.config)
    follower = global_rank() > 0  # a DDP process: rank 0 reports
    with percent_bar(args.quiet or follower) as bar:
        progress = bar_progress(bar)
        result = train(config, resume=args.resume, overwrite=args.overwrite, progress=progress)
    if follower:
        return 0
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        iou = f"{result.best_val_iou:.3f}" if result.best_val_iou is not None else "n/a"
        print(
            f"{result.model_path}: {result.epochs} epoch(s), validation mIoU {iou}, "
            f"{result.windows_per_second:.1f} windows/s on {result.device}, {result.seconds:.0f} s"
        )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .data import parse_class_map
    from .evaluate import evaluate_rasters, evaluate_store

    options = run_options(args)
    class_map = parse_class_map(args.class_map)
    with percent_bar(args.quiet) as bar:
        progress = bar_progress(bar)
        if args.store:
            result = evaluate_store(
                args.model,
                args.store,
                scenes=args.scenes.split(",") if args.scenes else None,
                out=args.out,
                class_map=class_map,
                endpoint_url=args.endpoint_url,
                options=options,
                progress=progress,
            )
        elif args.images and args.labels:
            result = evaluate_rasters(
                args.model,
                args.images,
                args.labels,
                label_classes=args.label_classes.split(",") if args.label_classes else None,
                out=args.out,
                class_map=class_map,
                options=options,
                progress=progress,
            )
        else:
            raise InputError("give --store URL, or --images and --labels")
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    m = result.metrics
    per_class = ", ".join(
        f"{name} {v['iou']:.3f}" for name, v in m["per_class"].items() if v["iou"] is not None
    )
    print(
        f"{result.model}: mIoU {m['mean_iou'] or 0:.3f} (IoU {per_class}), pixel accuracy "
        f"{m['pixel_accuracy'] or 0:.3f}, balanced accuracy {m['balanced_accuracy'] or 0:.3f} "
        f"on {m['pixels']:,} px of {len(result.scenes)} scene(s)"
        + (f"; report in {result.metrics_path.parent}" if result.metrics_path else "")
    )
    print(f"cost: {result.accounting['summary']}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_onnx

    result = export_onnx(args.model, args.output, opset=args.opset, overwrite=args.overwrite)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(
            f"{result.path}: {result.card.name} with its card embedded; onnxruntime matches "
            f"torch to {result.max_abs_diff:.1e} (batch sizes "
            f"{', '.join(map(str, result.batch_sizes))})"
        )
    return 0


def add_parsers(sub: Any) -> None:
    """Add ``train``, the label commands (:mod:`.label_cli`), ``evaluate`` and ``export``."""
    tr = sub.add_parser(
        "train",
        help="train or fine-tune a model on an ingested store",
        description="Train or fine-tune a segmentation model as a YAML config says "
        "(see docs/training.md). Writes checkpoints, logs, the config and model.pt "
        "into the config's output folder.",
    )
    tr.add_argument("--config", required=True, help="the YAML config file")
    tr.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.epochs=5 (repeatable)",
    )
    tr.add_argument("--resume", action="store_true", help="continue from checkpoints/last.ckpt")
    tr.add_argument("--overwrite", action="store_true", help="replace an earlier run")
    add_output_flags(tr)
    tr.set_defaults(handler=_cmd_train)

    label_cli.add_parsers(sub)

    ev = sub.add_parser(
        "evaluate",
        help="IoU, F1, precision, recall and the confusion matrix of a model on labeled data",
        description="Evaluate a model on scenes of an ingested store, or on rasters with "
        "label rasters. Reference classes map to the model's by name (thick and thin "
        "cloud -> cloud) unless --class-map says otherwise.",
    )
    ev.add_argument("--store", help="an ingested store (folder or s3://bucket/prefix)")
    ev.add_argument("--scenes", help="comma-separated scene ids (default: all)")
    ev.add_argument("--endpoint-url", help="S3 endpoint (MinIO)")
    ev.add_argument("--images", nargs="+", help="scenes to segment (with --labels)")
    ev.add_argument("--labels", nargs="+", help="label rasters, one per image")
    ev.add_argument("--label-classes", help="names of label values 0,1,2... (default: the model's)")
    ev.add_argument(
        "--class-map",
        action="append",
        default=[],
        metavar="SOURCE=TARGET",
        help="map a reference class to a model class; empty TARGET ignores it (repeatable)",
    )
    # fp32 by default: the metrics of the model itself (auto: as segment runs it here).
    add_run_flags(ev, model_required=True, defaults={"precision": "fp32"})
    ev.add_argument("--out", help="folder for metrics.json and confusion.png")
    add_output_flags(ev)
    ev.set_defaults(handler=_cmd_evaluate)

    ex = sub.add_parser(
        "export",
        help="a trained model.pt to ONNX with its card, checked against torch",
        description="Export a model.pt from 'cloudseg train' to ONNX (dynamic batch, card "
        "embedded). onnxruntime is compared with torch first; on a mismatch nothing is "
        "written.",
    )
    ex.add_argument("model", metavar="MODEL", help="model.pt written by cloudseg train")
    ex.add_argument("output", metavar="OUTPUT", help="the .onnx file to write")
    ex.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing file")
    ex.add_argument("--json", action="store_true", help="print the result as JSON")
    ex.set_defaults(handler=_cmd_export)

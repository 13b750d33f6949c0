"""``cloudseg train``, ``cloudseg evaluate`` and ``cloudseg export``.

The backend's command line adds these through :func:`add_parsers` when the training
packages (Lightning, kornia) are installed.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..backend.cli import add_output_flags, bar_progress, percent_bar
from ..backend.errors import InputError
from ..backend.inference.options import add_run_flags, run_options
from .adapt import DEFAULT_RECIPE, RECIPES


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


def _cmd_fine_tune(args: argparse.Namespace) -> int:
    from .label_round import LabelRound

    with percent_bar(args.quiet) as bar:
        result = LabelRound(args.project, args.scene).fine_tune(
            model=args.model,
            store=args.store,
            recipe=args.recipe,
            steps=args.steps,
            endpoint_url=args.endpoint_url,
            context=args.context,
            seed=args.seed,
            progress=bar_progress(bar),
        )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    entry = result.round
    print(
        f"{result.model} (round {entry.round}, from {entry.init_model}, recipe {entry.recipe}): "
        f"trained on {entry.train_boxes} box(es), judged on {entry.held_out_boxes} held-out "
        f"box(es) in {entry.seconds:.0f} s"
    )
    for name, score in result.verdict.classes.items():
        figures = (
            f"{score.before:.3f} -> {score.after:.3f}"
            if score.before is not None
            else "not in the held-out boxes"
        )
        note = "" if score.judged else " (too few pixels to judge)"
        print(f"  {name}: {figures}, {score.pixels} px{note}")
    print(("" if result.adopted else "kept: ") + result.verdict.reason)
    if not result.adopted:
        print(f"  {result.model} is registered; run it by name with --model {result.model}")
    return 0


def _cmd_labels_check(args: argparse.Namespace) -> int:
    from .label_check import check_labels

    with percent_bar(args.quiet) as bar:
        result = check_labels(
            args.store,
            args.model,
            args.out,
            scenes=args.scenes.split(",") if args.scenes else None,
            endpoint_url=args.endpoint_url,
            annotate=not args.no_annotate,
            folds=args.folds,
            config=args.config,
            window=args.window,
            progress=bar_progress(bar),
        )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(f"{len(result.scenes)} scene(s) checked with {result.model}; worst first:")
    for entry in result.scenes[: args.top]:
        print(
            f"  {entry['rank']:3d}. {entry['scene']}: quality {entry['score']:.3f}, "
            f"{100 * entry['flagged_share']:.1f} % of labeled pixels flagged"
            + (" (flagged)" if entry["flagged"] else "")
        )
    confusions = ", ".join(f"{k} {v}" for k, v in list(result.confusions.items())[:4])
    print(f"flagged pixels by label -> model: {confusions or 'none'}")
    print(f"{len(result.flagged())} scene(s) flagged; report: {result.report} (and .csv)")
    return 0


def _cmd_labels_boxes(args: argparse.Namespace) -> int:
    from ..backend.active.project import LabelProject

    project = LabelProject(args.project)
    if not project.path.exists():
        raise InputError(f"{project.path} does not exist; propose boxes first (cloudseg propose)")
    rows = [p.to_dict() for p in project.read().proposals]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(
            f"  box {row['fid']:>4}  rank {row['rank']:>3}  {row['status']:<8} "
            f"doubt {row['score']:5.1f} %  {row['scene']}"
        )
    counts = {s: sum(r["status"] == s for r in rows) for s in ("todo", "labeled", "skipped")}
    print(", ".join(f"{n} {s}" for s, n in counts.items()))
    return 0


def _cmd_labels_add(args: argparse.Namespace) -> int:
    from ..backend.active.labels import label_box

    added = label_box(args.project, args.box, args.source, done=not args.keep_todo)
    state = "left to label" if args.keep_todo else "marked done"
    print(f"box {args.box}: {added} polygon(s) from {args.source}; {state}")
    return 0


def _cmd_labels_status(args: argparse.Namespace) -> int:
    from ..backend.active.project import LabelProject

    status = {"skip": "skipped", "todo": "todo", "done": "labeled"}[args.labels_command]
    LabelProject(args.project).set_status(args.box, status)
    print(f"box {args.box}: {status}")
    return 0


def _add_label_loop_parsers(label_sub: Any) -> None:
    """``labels boxes|add|done|skip|todo``: the label loop from scripts."""
    boxes = label_sub.add_parser(
        "boxes",
        help="a label project's proposed boxes: id, rank, status",
        description="List the boxes of a label project (its proposals layer) with the id "
        "that 'labels add', 'done', 'skip' and 'todo' take.",
    )
    boxes.add_argument("project", metavar="PROJECT", help="label project (.gpkg)")
    boxes.add_argument("--json", action="store_true", help="print the boxes as JSON")
    boxes.set_defaults(handler=_cmd_labels_boxes)
    add = label_sub.add_parser(
        "add",
        help="label a box from a class raster or polygons, and mark it done",
        description="Label a proposed box from a class raster (the model's class values; "
        "any grid or CRS, warped onto the box) or a vector file with a 'class' field (any "
        "CRS, reprojected; pixels under no polygon are clear). The labels replace what was "
        "drawn in the box; the box is marked done (labeled).",
    )
    add.add_argument("project", metavar="PROJECT", help="label project (.gpkg)")
    add.add_argument("--box", type=int, required=True, metavar="ID", help="the box's id")
    add.add_argument(
        "--from", dest="source", required=True, metavar="FILE", help="class raster or polygons"
    )
    add.add_argument("--keep-todo", action="store_true", help="add the labels, do not mark done")
    add.set_defaults(handler=_cmd_labels_add)
    for name, text in (
        ("done", "mark a box done: its labels count (pixels under no polygon are clear)"),
        ("skip", "mark a box skipped: never proposed again, never trained on"),
        ("todo", "mark a box to label again"),
    ):
        status = label_sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        status.add_argument("project", metavar="PROJECT", help="label project (.gpkg)")
        status.add_argument("--box", type=int, required=True, metavar="ID", help="the box's id")
        status.set_defaults(handler=_cmd_labels_status)


def add_parsers(sub: Any) -> None:
    """Add ``train``, ``fine-tune``, ``evaluate`` and ``export`` to the subcommands."""
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

    ft = sub.add_parser(
        "fine-tune",
        help="one active-learning round: a label project's done boxes -> a new model version",
        description="Add the label project's done boxes to its label store, hold about a "
        "quarter out, fine-tune the current model (the last adopted version, else the model "
        "that proposed the boxes), judge the new version against it on the held-out boxes "
        "and register it; it becomes the project's current model only if no class loses "
        "more than 0.01 IoU there and the mean rises by at least 0.01 (see "
        "docs/active-learning.md).",
    )
    ft.add_argument("project", metavar="PROJECT", help="the label project (.gpkg)")
    ft.add_argument("scene", metavar="SCENE", help="the scene its boxes were proposed on")
    ft.add_argument("--model", help="start from this model (default: the project's current)")
    ft.add_argument("--store", help="label store (default: <project stem>-store beside it)")
    ft.add_argument(
        "--recipe",
        choices=list(RECIPES),
        default=DEFAULT_RECIPE,
        help=f"what is trained and how (default {DEFAULT_RECIPE}: the segmentation head only, "
        "pulled toward the base on unlabeled pixels; see docs/active-learning.md)",
    )
    ft.add_argument("--steps", type=int, help="optimizer steps (default: the recipe's)")
    ft.add_argument("--seed", type=int, default=0, help="seeds the training order (0)")
    ft.add_argument("--endpoint-url", help="S3 endpoint (MinIO) for an s3:// store")
    ft.add_argument(
        "--context",
        type=int,
        metavar="PX",
        help="pixels of unlabeled image around each box (default: a quarter of the box edge)",
    )
    add_output_flags(ft)
    ft.set_defaults(handler=_cmd_fine_tune)

    labels = sub.add_parser(
        "labels",
        help="label boxes of a label project; find likely label errors in a store",
        description="The label loop from scripts (boxes, add, done, skip, todo) and "
        "label-quality tools for ingested stores (check).",
    )
    label_sub = labels.add_subparsers(dest="labels_command", required=True)
    _add_label_loop_parsers(label_sub)
    check = label_sub.add_parser(
        "check",
        help="rank a store's scenes by label quality (cleanlab) against a model",
        description="Predict every scene with a model that did not train on it and let "
        "cleanlab's confident learning flag the pixels whose label the model contradicts "
        "with confidence; rank scenes by label quality, write label_issues.json and one "
        "issue raster per scene, and note the score in each scene's STAC Item. The "
        "stored labels are never changed.",
    )
    check.add_argument("store", metavar="STORE", help="an ingested store (folder or s3://)")
    source = check.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a model that did not train on the store's scenes")
    source.add_argument(
        "--folds",
        type=int,
        help="cross-validate instead: K models, each trained on the other folds (with --config)",
    )
    check.add_argument("--config", help="training config (YAML) of the folds' models")
    check.add_argument(
        "--window", type=int, default=128, help="edge of the windows scored in each scene (128)"
    )
    check.add_argument("--out", required=True, help="folder for the report and rasters")
    check.add_argument("--scenes", help="comma-separated scene ids (default: all)")
    check.add_argument("--endpoint-url", help="S3 endpoint (MinIO)")
    check.add_argument("--no-annotate", action="store_true", help="leave the Items as they are")
    check.add_argument("--top", type=int, default=10, help="scenes listed (default 10)")
    add_output_flags(check)
    check.set_defaults(handler=_cmd_labels_check)

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

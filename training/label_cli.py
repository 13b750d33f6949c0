"""The label commands: ``propose``, ``labels-to-store``, ``fine-tune`` and ``labels ...``.

Every command of the label round, in one place, each a thin adapter to
:class:`.label_round.LabelRound` (or, for a box's status and labels, to the label
project, :class:`cloudseg.backend.active.project.LabelProject`, and
:func:`cloudseg.backend.active.labels.label_box`):

- ``cloudseg propose SCENE|UNCERTAINTY PROJECT``: boxes to label (:meth:`LabelRound.propose`,
  :meth:`LabelRound.rank`);
- ``cloudseg labels boxes|add|done|skip|todo PROJECT``: the analyst's step from scripts;
- ``cloudseg labels-to-store PROJECT SCENE STORE``: the done boxes into a store
  (:meth:`LabelRound.store`);
- ``cloudseg fine-tune PROJECT SCENE``: store, fine-tune, judge, record
  (:meth:`LabelRound.fine_tune`);
- ``cloudseg labels check STORE``: the label-quality check of an ingested store
  (:func:`.label_check.check_labels`).

They are added to ``cloudseg`` with the training commands (:func:`.cli.add_parsers`,
the ``cloudseg.commands`` entry point). This module and what it imports before a
command runs need neither torch nor Lightning: ``propose`` segments with onnxruntime and
``labels ...`` edit the GeoPackage, so they work in an install without the training
packages; ``fine-tune`` and ``labels check`` say in one line what is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..backend.cli import add_output_flags, bar_progress, percent_bar
from ..backend.errors import InputError
from ..backend.inference.options import add_run_flags, run_options
from .adapt import DEFAULT_RECIPE, RECIPES


def add_parsers(sub: Any) -> None:
    """Add ``propose``, ``labels-to-store``, ``fine-tune`` and ``labels`` to the subcommands."""
    _add_propose_parser(sub)
    _add_labels_to_store_parser(sub)
    _add_fine_tune_parser(sub)
    _add_labels_parser(sub)


def _cmd_propose(args: argparse.Namespace) -> int:
    """Propose the most doubtful boxes of a scene into a label project."""
    from ..backend.active.propose import is_uncertainty_raster
    from .label_round import LabelRound

    if is_uncertainty_raster(args.input):
        proposals = LabelRound(args.project, args.scene).rank(args.input, args.box, args.count)
    else:
        with percent_bar(args.quiet) as bar:
            proposals = (
                LabelRound(args.project, args.input)
                .propose(
                    box=args.box,
                    count=args.count,
                    progress=bar_progress(bar),
                    options=run_options(args),
                )
                .proposals
            )
    if args.json:
        rows = [
            {"rank": p.rank, "score": p.score, "row": p.box.row, "col": p.box.col}
            | {"size": p.box.size}
            for p in proposals
        ]
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{args.project}: {len(proposals)} boxes of {args.box} px proposed (layer proposals)")
    for p in proposals[:10]:
        print(
            f"  {p.rank:>3}. doubt {p.score:5.1f} %  rows {p.box.row}-{p.box.row + p.box.size}"
            f", columns {p.box.col}-{p.box.col + p.box.size}"
        )
    return 0


def _cmd_labels_to_store(args: argparse.Namespace) -> int:
    """Add a label project's labeled boxes of a scene to a store."""
    from .label_round import LabelRound

    result = LabelRound(args.project, args.scene).store(
        args.store,
        model=args.model,
        endpoint_url=args.endpoint_url,
        context=args.context,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(
            f"{result.store}: {len(result.ingested)} labeled box(es) added, "
            f"{len(result.skipped)} already there, {len(result.failed)} failed"
        )
    if not result.failed:
        return 0
    for scene, reason in result.failed:
        print(f"not added: {scene}: {reason}", file=sys.stderr)
    print(
        f"cloudseg: error: {len(result.failed)} labeled box(es) were not added to "
        f"{result.store}; the boxes added are kept, run the command again to add the rest",
        file=sys.stderr,
    )
    return 1


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


def _add_propose_parser(sub: Any) -> None:
    propose = sub.add_parser(
        "propose",
        help="boxes to label where the model is unsure (active learning)",
        description="Rank boxes of a scene by the model's mean doubt and write the top ones, "
        "non-overlapping and never over a box already labeled or skipped, into the label "
        "project's GeoPackage (layer proposals: rank, score, status, scene, model). INPUT is "
        "the scene (segmented first with an uncertainty raster into <project>-runs, or the "
        "newest run there of the same model is reused) or an uncertainty raster from "
        "'cloudseg segment --uncertainty'. Without --model the project's current model "
        "proposes (the last version a round adopted), so each round asks where the model "
        "the last one taught is unsure.",
    )
    propose.add_argument(
        "input", metavar="INPUT", help="the scene, or its uncertainty raster (.tif)"
    )
    propose.add_argument("project", metavar="PROJECT", help="label project (.gpkg)")
    propose.add_argument("--box", type=int, default=128, metavar="PX", help="box edge (128)")
    propose.add_argument("--count", type=int, default=20, help="how many boxes (20)")
    propose.add_argument(
        "--scene",
        help="with an uncertainty raster: the scene it was made from (default: the scene "
        "the raster records)",
    )
    add_run_flags(propose)
    add_output_flags(propose)
    propose.set_defaults(handler=_cmd_propose)


def _add_labels_to_store_parser(sub: Any) -> None:
    to_store = sub.add_parser(
        "labels-to-store",
        help="a label project's labeled boxes into a store, for fine-tuning",
        description="For every proposal marked labeled in the label project, store the "
        "scene's window and the labels layer's polygons rasterized on its grid (pixels "
        "under no polygon are clear) as one scene of a Zarr + STAC store (folder or S3), "
        "as 'cloudseg ingest' does.",
    )
    to_store.add_argument("project", metavar="PROJECT", help="label project (.gpkg)")
    to_store.add_argument("scene", metavar="SCENE", help="the scene the boxes are on")
    to_store.add_argument("store", metavar="STORE", help="a folder or s3://bucket/prefix")
    to_store.add_argument("--model", help="the model whose bands and classes apply")
    to_store.add_argument("--endpoint-url", help="S3 endpoint, e.g. http://127.0.0.1:9000")
    to_store.add_argument(
        "--context",
        type=int,
        metavar="PX",
        help="pixels of image stored around each box, unlabeled (default: a quarter of "
        "the box edge; see docs/active-learning.md)",
    )
    to_store.add_argument("--json", action="store_true", help="print the result as JSON")
    to_store.set_defaults(handler=_cmd_labels_to_store)


def _add_fine_tune_parser(sub: Any) -> None:
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


def _add_labels_parser(sub: Any) -> None:
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

"""The ``cloudseg`` command.

Every subcommand exits 0 on success and non-zero with one line on standard error that
says what is wrong. Progress goes to standard error, results to standard output.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._version import __version__
from .atomic import published_count, write_fault, write_fault_count
from .choices import EXPLAIN_METHODS
from .errors import CloudsegError, InputError
from .inference.options import SEGMENT_FLAGS, add_run_flags, run_options

logger = logging.getLogger("cloudseg")

Handler = Callable[[argparse.Namespace], int]


def _cmd_info(args: argparse.Namespace) -> int:
    """Print versions and the device ``--device auto`` would use."""
    from .environment import environment_report

    report = environment_report()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.summary())
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    """List the built-in and registered models, and the files given, with their accuracy."""
    from .models.registry import available_models, load_model

    models = available_models() + [load_model(path) for path in args.files]
    if args.json:
        print(json.dumps([m.card.summary() | {"path": str(m.path)} for m in models], indent=2))
        return 0
    for model in models:
        card = model.card
        classes = ", ".join(f"{c.value}={c.name}" for c in card.classes)
        print(
            f"{card.name}  {card.product_level}  {card.resolution_m:g} m  "
            f"bands {','.join(card.bands)}  classes {classes}  ({card.license})"
        )
        print(f"    accuracy: {card.headline() or 'not measured'}")
    return 0


def percent_bar(quiet: bool) -> Any:
    """A tqdm bar on standard error that counts percent (disabled when quiet or piped)."""
    from tqdm import tqdm

    return tqdm(
        total=100,
        unit="%",
        disable=quiet or None,
        file=sys.stderr,
        bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}",
    )


def bar_progress(bar: Any) -> Callable[[float, str], None]:
    """A (percent, message) progress callback that drives ``bar``."""

    def progress(percent: float, message: str) -> None:
        bar.update(percent - bar.n)
        bar.set_postfix_str(message, refresh=False)

    return progress


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--json`` and ``-q/--quiet`` to a subcommand."""
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _cmd_segment(args: argparse.Namespace) -> int:
    """Segment a scene and print a summary (or JSON)."""
    from .inference.segment import SegmentOptions, segment
    from .inference.shadow import describe as describe_geometry

    options = run_options(
        args,
        SegmentOptions,
        probabilities=args.probabilities,
        stats=args.stats,
        overwrite=args.overwrite,
        bounds=tuple(args.extent) if args.extent else None,
        polygons=args.polygons,
        uncertainty=args.uncertainty,
        valid=args.valid,
        stac_item=args.stac_item,
    )
    with percent_bar(args.quiet) as bar:
        result = segment(args.input, args.output, options, progress=bar_progress(bar))
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    shares = ", ".join(f"{name} {pct:.1f} %" for name, pct in result.class_percent.items())
    print(f"{result.output}: {shares} ({result.model} on {result.runner}, {result.seconds:.1f} s)")
    if result.valid is not None:
        print(f"valid pixels: {result.valid} ({result.usable_percent:.1f} % of the data usable)")
    if result.accounting:
        print(f"cost: {result.accounting['summary']}")
    if result.stac_item is not None:
        print(f"STAC Item: {result.stac_item}")
    if result.shadow_geometry is not None:
        print(describe_geometry(result.shadow_geometry))
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    """Ingest a labeled dataset into a Zarr + STAC store and print a summary."""
    from tqdm import tqdm

    from .store.ingest import ingest

    if args.env_file is not None and not Path(args.env_file).is_file():
        raise InputError(f"--env-file {args.env_file} does not exist")
    with tqdm(total=0, unit="scene", disable=args.quiet or None, file=sys.stderr) as bar:

        def progress(done: int, total: int, scene: str) -> None:
            bar.total = total
            bar.update(done - bar.n)
            bar.set_postfix_str(scene, refresh=False)

        result = ingest(
            args.source,
            args.dest,
            layout=args.layout,
            name=args.name,
            endpoint_url=args.endpoint_url,
            env_file=args.env_file or ".env",
            report=not args.no_report,
            progress=progress,
        )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(
            f"{result.store}: {len(result.ingested)} scene(s) ingested, {len(result.skipped)} "
            f"already there, {len(result.failed)} not ingested ({result.layout} layout, "
            f"{result.megabytes:.1f} MB in {result.seconds:.1f} s)"
        )
    for name, reason in result.failed:
        print(f"not ingested: {name}: {reason}", file=sys.stderr)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    """Write the dataset dashboard of a store."""
    from . import atomic
    from .store.dashboard import dashboard_html, write_dashboard
    from .store.dataset import open_dataset

    out = None
    if args.out:  # the output contract: checked before any work, replaced only when asked
        out = atomic.check_outputs(
            {"--out": args.out}, [], args.overwrite, {"--out": (".html", ".htm")}
        )["--out"]
    dataset = open_dataset(args.store, args.endpoint_url)
    if out is not None:
        with atomic.claim([out]), atomic.atomic_path(out) as partial:
            partial.write_bytes(dashboard_html(dataset).encode("utf-8"))
        where = str(out)
    else:
        key = write_dashboard(dataset)
        where = f"{dataset.storage.url.rstrip('/')}/{key}"
    if args.json:
        print(json.dumps({"dashboard": where}))
    else:
        print(f"dashboard: {where}")
    if args.open:
        import webbrowser

        webbrowser.open(Path(where).resolve().as_uri() if "://" not in where else where)
    return 0


def _cmd_segment_batch(args: argparse.Namespace) -> int:
    """Segment many scenes on a Dask cluster; print a summary (or JSON)."""
    from tqdm import tqdm

    from .batch import segment_batch
    from .inference.options import changed_run_options

    # Only what differs from the defaults: the settings key of a re-run stays the same.
    options = changed_run_options(run_options(args))
    with tqdm(total=0, unit="scene", disable=args.quiet or None, file=sys.stderr) as bar:

        def progress(done: int, total: int, record: dict[str, Any]) -> None:
            bar.total = total
            bar.update(done - bar.n)
            bar.set_postfix_str(f"{record['scene']}: {record['status']}", refresh=False)

        def started(dashboard: str | None) -> None:
            where = dashboard or 'not available (pip install "cloudseg[serve]")'
            print(f"Dask dashboard: {where}", file=sys.stderr, flush=True)

        result = segment_batch(
            args.inputs,
            args.out,
            options,
            workers=args.workers,
            scheduler=args.scheduler,
            retries=args.retries,
            endpoint_url=args.endpoint_url,
            progress=progress,
            on_start=started,
            overwrite=args.overwrite,
        )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        counts = result.counts()
        print(
            f"{len(result.records)} scene(s): {counts.get('done', 0)} done, "
            f"{counts.get('skipped', 0)} skipped (already done), {counts.get('failed', 0)} "
            f"failed; {result.workers} worker(s), {result.seconds:.1f} s; manifest "
            f"{result.manifest}; STAC collection {result.collection}"
        )
    for record in result.records:
        if record["status"] == "failed":
            print(f"failed: {record['scene']}: {record['error']}", file=sys.stderr)
    return 1 if any(r["status"] == "failed" for r in result.records) else 0


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with all subcommands.

    Returns:
        The parser; each subparser sets ``handler`` to the function that runs it.
    """
    parser = argparse.ArgumentParser(
        prog="cloudseg",
        description="Cloud and cloud-shadow segmentation of Sentinel-2 imagery.",
    )
    parser.add_argument("--version", action="version", version=f"cloudseg {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    info = sub.add_parser(
        "info",
        help="versions, GPU and onnxruntime providers",
        description="Show package versions and which device is used.",
    )
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(handler=_cmd_info)

    models = sub.add_parser(
        "models",
        help="list the built-in models",
        description="List models with bands, level, resolution, classes and the accuracy "
        "measured on labeled data (docs/accuracy.md).",
    )
    models.add_argument(
        "files", nargs="*", metavar="FILE", help="model files to describe as well (.onnx, .pt)"
    )
    models.add_argument("--json", action="store_true", help="print JSON")
    models.set_defaults(handler=_cmd_models)

    seg = sub.add_parser(
        "segment",
        help="find clouds and cloud shadows in a Sentinel-2 scene",
        description="Write a class GeoTIFF (COG): 0 clear, 1 cloud, 2 cloud shadow, "
        "255 nodata. INPUT is a multi-band raster whose band descriptions "
        "name the bands, a folder of band files (B02.tif ...), a SAFE "
        "product (.SAFE folder or .zip), or a STAC Item (.json file or https:// URL: "
        "its B02, B03... assets, else its image asset).",
    )
    seg.add_argument("input", metavar="INPUT")
    seg.add_argument("output", metavar="OUTPUT", help="class raster to write (.tif)")
    add_run_flags(seg)
    seg.add_argument(
        "--probabilities",
        metavar="PATH",
        help="also write class probabilities (uint8 percent) here",
    )
    seg.add_argument("--stats", metavar="PATH", help="also write class statistics as JSON")
    seg.add_argument(
        "--uncertainty",
        metavar="PATH",
        help="also write the model's doubt per pixel (normalized entropy, uint8 percent): "
        "where labels would teach it most",
    )
    seg.add_argument(
        "--polygons", metavar="PATH", help="also write cloud and shadow polygons (GeoPackage)"
    )
    seg.add_argument(
        "--extent",
        nargs=4,
        type=float,
        metavar=("LEFT", "BOTTOM", "RIGHT", "TOP"),
        help="segment only this extent (in the input's CRS)",
    )
    seg.add_argument(
        "--valid",
        metavar="PATH",
        help="also write the valid-pixel mask (1 usable, 0 cloud, shadow or their buffer, "
        "255 no data) here",
    )
    seg.add_argument(
        "--stac-item",
        metavar="PATH",
        help="also write a STAC Item (.json) of the outputs: geometry, datetime, "
        "eo:cloud_cover, classes, checksums, model and its accuracy",
    )
    seg.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    add_run_flags(seg, flags=SEGMENT_FLAGS, title="what the outputs keep")
    add_output_flags(seg)
    seg.set_defaults(handler=_cmd_segment)
    _add_ingest_parser(sub)
    _add_report_parser(sub)
    _add_batch_parser(sub)
    _add_explain_parser(sub)
    _add_serve_parser(sub)
    _add_plugin_parsers(sub)
    return parser


def _cmd_explain(args: argparse.Namespace) -> int:
    """Write class activation maps of a scene and print a summary (or JSON)."""
    from .inference.explain import explain

    options = run_options(args)
    with percent_bar(args.quiet) as bar:
        result = explain(
            args.input,
            args.output,
            classes=args.classes or ["cloud"],
            method=args.method,
            bounds=tuple(args.extent) if args.extent else None,
            overwrite=args.overwrite,
            progress=bar_progress(bar),
            options=options,
        )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(
            f"{result.output}: {result.method} of {', '.join(result.classes)} by "
            f"{result.model} (layer {result.layer}), 0-1 per class, in {result.seconds:.1f} s"
        )
        print(f"cost: {result.accounting['summary']}")
    return 0


def _add_explain_parser(sub: Any) -> None:
    ex = sub.add_parser(
        "explain",
        help="where the model looked: class activation maps (Grad-CAM) as a GeoTIFF",
        description="Write a float GeoTIFF on the input's grid with, per chosen class, the "
        "Grad-CAM (or HiResCAM) map of the model's score for that class (its logit summed "
        "over the pixels it assigns to the class), 0-1 scaled by the scene's maximum. "
        "Computed tile by tile as segmentation is, so any extent works in bounded memory.",
    )
    ex.add_argument("input", metavar="INPUT", help="the scene (as for cloudseg segment)")
    ex.add_argument("output", metavar="OUTPUT", help="the GeoTIFF to write")
    ex.add_argument(
        "--class",
        dest="classes",
        action="append",
        metavar="NAME",
        help="class to explain (default cloud; repeat for more, one band each)",
    )
    ex.add_argument("--method", choices=EXPLAIN_METHODS, default="gradcam", help="default gradcam")
    ex.add_argument(
        "--extent",
        nargs=4,
        type=float,
        metavar=("LEFT", "BOTTOM", "RIGHT", "TOP"),
        help="explain only this extent (in the input's CRS)",
    )
    add_run_flags(ex)
    ex.add_argument("--overwrite", action="store_true", help="replace an existing output")
    add_output_flags(ex)
    ex.set_defaults(handler=_cmd_explain)


def _cmd_serve(args: argparse.Namespace) -> int:
    """Run the web page and OGC API server until interrupted."""
    from .serve.app import serve
    from .serve.config import ServeConfig

    config = ServeConfig(
        host=args.host,
        port=args.port,
        token=args.token,
        roots=args.root or [],
        work=Path(args.work).expanduser() if args.work else None,
        max_upload_mib=args.max_upload,
        keep_hours=args.keep,
        concurrency=args.concurrency,
        url=args.url,
    )
    try:
        serve(config)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: jobs were cancelled, nothing half-written
        print("cloudseg serve: stopped", file=sys.stderr)
    return 0


def _add_serve_parser(sub: Any) -> None:
    from .serve import config

    srv = sub.add_parser(
        "serve",
        help="a web page and an OGC API - Processes endpoint over one job queue",
        description="Serve a web page (upload a scene, see the mask, download the results) "
        "and OGC API - Processes (/ogc: segment and explain, synchronous or asynchronous "
        "jobs) from one server whose jobs share one queue. Listens on 127.0.0.1 unless "
        "told otherwise; on any other interface every request needs a token. See "
        "docs/serve.md.",
    )
    srv.add_argument(
        "--host", default=config.LOOPBACK_HOST, help="interface to listen on (default %(default)s)"
    )
    srv.add_argument(
        "--port", type=int, default=config.DEFAULT_PORT, help="port (default %(default)s; 0: any)"
    )
    srv.add_argument(
        "--token",
        help=f"the token every request must carry (default: ${config.TOKEN_ENV}; made and "
        "printed at start when the server listens beyond this machine)",
    )
    srv.add_argument(
        "--root",
        action="append",
        metavar="DIR",
        help="a folder whose scenes jobs may read by path (repeat for more; default none: "
        "uploads and URLs only)",
    )
    srv.add_argument(
        "--work",
        metavar="DIR",
        help="folder for uploads and job results (default: a temporary one)",
    )
    srv.add_argument(
        "--max-upload",
        type=float,
        default=config.DEFAULT_MAX_UPLOAD_MIB,
        metavar="MIB",
        help="largest upload, MiB (default %(default)g)",
    )
    srv.add_argument(
        "--keep",
        type=float,
        default=config.DEFAULT_KEEP_HOURS,
        metavar="HOURS",
        help="hours uploads and finished jobs' results are kept (default %(default)g)",
    )
    srv.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="model runs at the same time; more wait in the queue (default 1)",
    )
    srv.add_argument("--url", help="the address clients reach the server at, behind a proxy")
    srv.set_defaults(handler=_cmd_serve)


#: Entry-point group through which other packages add subcommands: each entry is a
#: function ``add_parsers(subparsers)``. cloudseg's own training package adds train,
#: evaluate and export this way, so the backend never imports it.
COMMANDS_GROUP = "cloudseg.commands"


def _add_plugin_parsers(sub: Any) -> None:
    """Add the subcommands that installed packages register under :data:`COMMANDS_GROUP`."""
    from importlib.metadata import entry_points

    for entry in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        try:
            add_parsers = entry.load()
        except ImportError as exc:  # e.g. Lightning missing: the rest still works
            logger.debug("subcommands %s unavailable: %s", entry.name, exc)
            continue
        add_parsers(sub)


def _add_ingest_parser(sub: Any) -> None:
    from .store.sources import LAYOUTS

    ing = sub.add_parser(
        "ingest",
        help="labeled scenes and masks into a Zarr + STAC store (folder or S3)",
        description="Ingest a labeled dataset into chunked Zarr with STAC metadata. "
        "DEST is a folder or s3://bucket/prefix (S3 settings from MINIO_ENDPOINT, "
        "MINIO_ACCESS_KEY, MINIO_SECRET_KEY, S3_BUCKET_NAME or the AWS variables, "
        "in the environment or a .env file). Re-running skips stored scenes.",
    )
    ing.add_argument("source", metavar="SOURCE", help="the dataset folder")
    ing.add_argument("dest", metavar="DEST", help="a folder or s3://bucket/prefix")
    ing.add_argument("--layout", choices=LAYOUTS, help="the source layout (default: detected)")
    ing.add_argument("--endpoint-url", help="S3 endpoint, e.g. http://127.0.0.1:9000 (MinIO)")
    ing.add_argument(
        "--env-file", help="file with S3 settings (default: .env in the current folder, if any)"
    )
    ing.add_argument("--name", default="cloudseg-dataset", help="STAC collection id")
    ing.add_argument("--no-report", action="store_true", help="skip the dataset report")
    add_output_flags(ing)
    ing.set_defaults(handler=_cmd_ingest)


def _add_batch_parser(sub: Any) -> None:
    batch = sub.add_parser(
        "segment-batch",
        help="segment many scenes on a Dask cluster (local by default), resumable",
        description="Segment every scene the inputs name, one Dask task per scene, into "
        "OUT (a folder or s3://bucket/prefix): <scene>.tif, its STAC Item "
        "<scene>.stac.json, its record <scene>.json, manifest.json and the STAC "
        "Collection collection.json of every done scene. Inputs: folders, glob patterns, "
        "list files (.txt), STAC Item / ItemCollection / search-result files (.json) or "
        "URLs, S3 prefixes of GeoTIFFs or SAFE zips. A re-run skips scenes already done "
        "with the same model and settings; a bad scene is recorded with its reason and "
        "the others go on (exit status 1).",
    )
    batch.add_argument("inputs", nargs="+", metavar="INPUT")
    batch.add_argument("--out", required=True, help="output folder or s3://bucket/prefix")
    add_run_flags(batch)
    batch.add_argument(
        "--workers", type=int, help="local worker processes (default: one per 4 cores)"
    )
    batch.add_argument(
        "--scheduler",
        help="an existing Dask cluster: tcp://host:8786 or a scheduler file "
        "(dask-jobqueue, Dask Kubernetes; see docs/batch.md)",
    )
    batch.add_argument(
        "--retries", type=int, default=2, help="tries again after an unexpected failure (2)"
    )
    batch.add_argument("--endpoint-url", help="S3 endpoint (MinIO) for inputs and outputs")
    batch.add_argument(
        "--overwrite",
        action="store_true",
        help="replace files in OUT that no earlier batch wrote (default: refuse)",
    )
    add_output_flags(batch)
    batch.set_defaults(handler=_cmd_segment_batch)


def _add_report_parser(sub: Any) -> None:
    rep = sub.add_parser(
        "report",
        help="the dataset dashboard of a store: one self-contained HTML page",
        description="Write one HTML page about an ingested store (folder or s3://): class "
        "balance, cloud fractions, band statistics, scenes on a map and by month, label "
        "quality (after cloudseg labels check) and the worst windows as thumbnails. It "
        "opens offline. Default: report/dashboard.html in the store.",
    )
    rep.add_argument("store", metavar="STORE", help="an ingested store (folder or s3://)")
    rep.add_argument("--out", help="write the page to this .html file instead")
    rep.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    rep.add_argument("--endpoint-url", help="S3 endpoint (MinIO)")
    rep.add_argument("--open", action="store_true", help="open the page in the web browser")
    add_output_flags(rep)
    rep.set_defaults(handler=_cmd_report)


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING - 10 * min(verbosity, 2)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    # Said once, here: a library that configures the root logger (pygeoapi in
    # ``cloudseg serve``) would print every line a second time in its own format.
    logger.propagate = False


def _write_fault_line(exc: BaseException, faults: int, published: int) -> str | None:
    """The one line for a run that the file system stopped (disk full, quota, read-only).

    Args:
        exc: The exception the command ended with.
        faults: :func:`~cloudseg.backend.atomic.write_fault_count` when it began.
        published: :func:`~cloudseg.backend.atomic.published_count` when it began.

    Returns:
        The line, or None when the failure has another cause.
    """
    fault = write_fault(exc, faults)
    if fault is None:
        return None
    folder, reason = fault
    where = f" in {folder.resolve()}" if folder is not None else ""
    state = (
        "the outputs published before it are complete"
        if published_count() > published
        else "earlier outputs are untouched"
    )
    return f"cannot write the outputs{where}: {reason}; {state}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cloudseg`` command.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` if None.

    Returns:
        The exit status: 0 on success, 1 on a reported error, 130 when interrupted.
    """
    received: list[int] = []

    def interrupt(signum: int, frame: Any) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    # SIGTERM (a scheduler's or a service manager's stop) is handled like Ctrl-C: the
    # run's temporary files are removed and earlier outputs are left as they were. Both
    # are handled from the start: building the parser imports the subcommands.
    previous = signal.signal(signal.SIGTERM, interrupt)
    published, faults = published_count(), write_fault_count()
    try:
        args = build_parser().parse_args(argv)
        _configure_logging(args.verbose)
        handler: Handler = args.handler
        return handler(args)
    except CloudsegError as exc:
        # A disk that filled up under a write may surface as the writer's own error.
        line = write_fault_count() > faults and _write_fault_line(exc, faults, published)
        print(f"cloudseg: error: {line or exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        from .dependencies import missing_from
        from .store.storage import explain_s3_error, is_s3_error

        missing = missing_from(exc)
        if missing is not None:
            print(f"cloudseg: error: {missing}", file=sys.stderr)
            return 1
        line = _write_fault_line(exc, faults, published)
        if line is None and not is_s3_error(exc):
            raise
        print(f"cloudseg: error: {line or explain_s3_error(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        name = signal.Signals(received[-1]).name if received else "SIGINT"
        state = (
            "the outputs were already complete and are kept"
            if published_count() > published
            else "earlier outputs are untouched"
        )
        print(f"cloudseg: interrupted ({name}); {state}", file=sys.stderr)
        return 128 + (received[-1] if received else signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())

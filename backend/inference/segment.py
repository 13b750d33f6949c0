"""Segment a Sentinel-2 scene into clear / cloud / cloud-shadow, from file to files.

:func:`segment` only orchestrates: it opens the scene and plans the run as every engine
entry point does (:func:`.engine.open_input`, :func:`.engine.plan_run`), claims its
outputs, streams the scene through the engine (:mod:`.engine`: tiles, blending and
resampling, bounded memory whatever the scene's size) into the run's outputs
(:mod:`.outputs`: classes from the one decision, written under temporary names,
published together on success), and returns what happened. By default the model runs
on the input's own grid; ``resolution="preview"`` runs it on the model card's grid (30 m
for the built-in models: 9x fewer pixels for 10 m input, but small clouds and shadows
are lost; see docs/accuracy.md).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..accounting import Accounting, RunMeter, area_km2
from ..atomic import check_outputs, claim
from ..callbacks import CancelCallback, ProgressCallback, never_cancelled, no_progress
from ..errors import InputError
from ..models.cards import ModelCard
from ..raster.bands import band_from_filename
from ..raster.reader import MAX_REFLECTANCE, SceneReader, check_reflectance
from ..raster.stac_input import SourceItem, is_item_input, local_source, read_item
from .engine import NODATA, RunPlan, open_input, plan_reader, reader_rows
from .options import RunOptions, SegmentOptions
from .outputs import SegmentOutputs, provenance_tags
from .runners import Runner
from .shadow import shadow_geometry
from .stac_item import item_bytes, mask_item, scene_time

__all__ = ["NODATA", "RunOptions", "SegmentOptions", "SegmentResult", "load_classes", "segment"]

logger = logging.getLogger(__name__)


@dataclass
class SegmentResult:
    """What a run produced and how it went."""

    output: Path
    probabilities: Path | None
    stats_path: Path | None
    model: str
    model_reason: str
    runner: str
    device: str
    seconds: float
    width: int
    height: int
    class_pixels: dict[str, int]
    class_percent: dict[str, float]
    nodata_pixels: int
    warnings: list[str] = field(default_factory=list)
    polygons: Path | None = None
    polygon_counts: dict[str, int] = field(default_factory=dict)
    uncertainty: Path | None = None
    #: The product level the model was chosen for, and how it was found (or assumed).
    product_level: str = ""
    #: Seconds by stage, km², seconds and joules per km² (see :mod:`..accounting`).
    accounting: dict[str, Any] = field(default_factory=dict)
    #: The valid-pixel mask, and the share of the scene's data pixels it keeps.
    valid: Path | None = None
    usable_percent: float | None = None
    #: When the scene was acquired (ISO 8601, None where the source does not say), and
    #: how that was found (see :func:`.stac_item.scene_time`).
    acquired: str | None = None
    acquired_from: str = ""
    #: The STAC Item written (see :mod:`.stac_item`), and the one the input was read from.
    stac_item: Path | None = None
    source_item: str | None = None
    #: What ``--shadow-geometry`` did (sun angles and their source, reach, pixels
    #: changed; see :class:`.shadow.GeometryReport`); None when it was off.
    shadow_geometry: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the result as JSON-serialisable data."""
        data = asdict(self)
        paths = ("output", "probabilities", "stats_path", "polygons", "uncertainty", "valid")
        for key in (*paths, "stac_item"):
            data[key] = str(data[key]) if data[key] else None
        data["megapixels_per_second"] = round(self.width * self.height / 1e6 / self.seconds, 3)
        return data


def _warnings(reader: SceneReader, card: ModelCard, options: SegmentOptions) -> list[str]:
    """Level mismatch and values that do not look like reflectance, logged and returned.

    Raises:
        InputError: For values no real scene has, unless ``options.check_reflectance``
            is False (they are then a warning).
    """
    warnings = []
    if options.model is None and not reader.level.known:
        warnings.append(
            f"product level unknown ({reader.level.how}): assumed L1C, so {card.name} ran; "
            "if the image is L2A surface reflectance, set --product-level L2A: the mask "
            "depends on it"
        )
    if reader.product_level and card.product_level not in ("any", reader.product_level):
        warnings.append(
            f"model {card.name} is for {card.product_level} but the input is {reader.product_level}"
        )
    check = check_reflectance(reader, list(card.bands))
    if check.message and check.certain and options.check_reflectance:
        raise InputError(
            f"{check.message}; or --no-reflectance-check to run anyway at your own risk"
        )
    if check.message:
        warnings.append(check.message)
    for message in warnings:
        logger.info("warning: %s", message)  # the result carries it; the CLI prints it
    return warnings


def _not_data_warning(reader: SceneReader) -> str:
    """The warning for values the run read as nodata (+-Inf, fill values), logged."""
    message = (
        f"{reader.path} holds values that are not finite (+-Inf) or beyond reflectance "
        f"+-{MAX_REFLECTANCE:g}; their pixels are nodata in the outputs"
    )
    logger.info("warning: %s", message)
    return message


#: The file suffixes each output's format allows.
OUTPUT_SUFFIXES = {
    "OUTPUT": (".tif", ".tiff"),
    "--probabilities": (".tif", ".tiff"),
    "--polygons": (".gpkg",),
    "--stats": (".json",),
    "--uncertainty": (".tif", ".tiff"),
    "--valid": (".tif", ".tiff"),
    "--stac-item": (".json",),
}


def _check_outputs(
    reader: SceneReader, output: Path, options: SegmentOptions, item: SourceItem | None
) -> dict[str, Path]:
    """Check the run's outputs against each other and every file the scene reads.

    ``item``: the STAC Item the input is (its file and local assets are inputs too).
    """
    inputs = [reader.path] + [
        Path(s.path) for s in reader.sources.values() if not s.path.startswith("/vsi")
    ]
    if item is not None:
        files = [item.source, item.href.split("#", 1)[0], *item.hrefs()]
        inputs += [Path(f) for f in files if "://" not in f]
    return check_outputs(
        {
            "OUTPUT": output,
            "--probabilities": options.probabilities,
            "--polygons": options.polygons,
            "--stats": options.stats,
            "--uncertainty": options.uncertainty,
            "--valid": options.valid,
            "--stac-item": options.stac_item,
        },
        inputs,
        options.overwrite,
        OUTPUT_SUFFIXES,
        input_folders=[reader.path] if reader.path.is_dir() else [],
        input_name=lambda stem: band_from_filename(stem) is not None,
    )


def segment(
    input_path: str | Path,
    output_path: str | Path,
    options: SegmentOptions | None = None,
    progress: ProgressCallback | None = None,
    cancelled: CancelCallback | None = None,
) -> SegmentResult:
    """Segment clouds and cloud shadows in a Sentinel-2 scene and write a class COG.

    The class raster (uint8, color table, class names in the ``CLOUDSEG_CLASSES`` tag,
    255 = nodata) and the optional probabilities, polygons and statistics are written
    under temporary names and published together when all are complete: a failed or
    cancelled run leaves nothing that looks like a result, and earlier results as they
    were.

    Args:
        input_path: Multi-band raster, folder of band files, SAFE product, or STAC Item
            (a ``.json`` file or an http(s) URL: its band assets or image asset, see
            :mod:`cloudseg.backend.raster.stac_input`).
        output_path: Where the class GeoTIFF (COG) goes.
        options: Run options; defaults pick the model automatically.
        progress: Called with (percent 0-100, message) as work proceeds.
        cancelled: Polled once per batch; returning True stops the run.

    Returns:
        A :class:`SegmentResult` with per-class statistics.

    Raises:
        CloudsegError: Subclasses for bad input, missing bands, an existing output
            (without ``overwrite``), a model that does not fit, or cancellation.
    """
    options = options or SegmentOptions()
    original = input_path
    progress = progress or no_progress
    cancelled = cancelled or never_cancelled
    output = Path(output_path).expanduser()
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        item = None
        if is_item_input(input_path):
            item = read_item(input_path)
            work = stack.enter_context(tempfile.TemporaryDirectory(prefix="cloudseg-item-"))
            input_path = local_source(item, Path(work))
        reader = stack.enter_context(open_input(input_path, options, options.bounds))
        # The contract (backend.atomic) before the model loads: no output is an input or
        # another output, every folder is writable, and no other run holds the outputs.
        stack.enter_context(claim(_check_outputs(reader, output, options, item).values()))
        acquired, acquired_from = scene_time(reader)
        plan = plan_reader(reader, options, options.max_memory_mib)
        logger.info("%s", plan.reason)
        warnings = _warnings(reader, plan.card, options)
        checked = reader.not_data_values  # the reflectance check's sample says so itself
        runner = plan.runner(options, keep=options.keep_runner)
        logger.info(
            "running on %s; model grid %d x %d (factor %g)",
            runner.description,
            plan.grid.width,
            plan.grid.height,
            plan.grid.factor,
        )
        meter = RunMeter(runner.device)  # time and energy from the first tile on
        km2 = area_km2(reader.width, reader.height, reader.transform, reader.crs)
        progress(0.0, f"{plan.card.name} on {runner.description}")
        profile = {
            "width": reader.width,
            "height": reader.height,
            "crs": reader.crs,
            "transform": reader.transform,
        }
        tags = provenance_tags(plan, reader, runner, options)
        with SegmentOutputs(output, options, profile, plan.card, tags) as outputs:
            rows = reader_rows(reader, plan, runner, options, progress, cancelled, meter)
            geometry = shadow_geometry(reader, plan.card, options, item, output.parent)
            if geometry is not None:
                rows = geometry.rows(rows, progress, cancelled)
            for row, col, probs, nodata in rows:
                with meter.stage("write"):
                    outputs.write(row, probs, nodata, col)
            report = geometry.report.to_dict() if geometry is not None else None
            if report is not None:
                outputs.tags["CLOUDSEG_SHADOW_GEOMETRY"] = json.dumps(report)
            if reader.not_data_values and not checked:
                warnings.append(_not_data_warning(reader))
            # The rasters' provenance: what reading, inference and writing their rows took.
            outputs.tags["CLOUDSEG_ACCOUNTING"] = json.dumps(meter.finish(km2).to_dict())
            polygons = _finish_outputs(outputs, reader, meter, progress, cancelled)
            result = _result(
                output,
                options,
                reader,
                outputs,
                plan=plan,
                runner=runner,
                accounting=meter.finish(km2),
                started=start,
                warnings=warnings,
                polygon_counts=polygons,
            )
            result.acquired, result.acquired_from = acquired, acquired_from
            result.stac_item = options.stac_item
            result.shadow_geometry = report
            result.source_item = item.href if item is not None else None
            outputs.publish(
                result.to_dict() if options.stats else None,
                cancelled,
                functools.partial(_item_json, result, options, str(original), item),
            )
    progress(100.0, f"done in {result.seconds:.1f} s")
    return result


def _item_json(
    result: SegmentResult,
    options: SegmentOptions,
    source: str,
    item: SourceItem | None,
    staged: dict[Path, Path],
) -> bytes:
    """The STAC Item of the run's outputs (:mod:`.stac_item`), read where they are staged."""
    assert options.stac_item is not None
    built = mask_item(
        result.output,
        result,
        item_path=options.stac_item,
        item_id=options.stac_item_id,
        assets={
            "probabilities": options.probabilities,
            "uncertainty": options.uncertainty,
            "valid": options.valid,
            "polygons": options.polygons,
            "stats": options.stats,
        },
        source=source,
        source_item=item,
        staged=staged,
    )
    return item_bytes(built)


def _finish_outputs(
    outputs: SegmentOutputs,
    reader: SceneReader,
    meter: RunMeter,
    progress: ProgressCallback,
    cancelled: CancelCallback,
) -> dict[str, int]:
    """Close the rasters, derive the valid mask and polygons, and stage the COGs.

    Returns:
        The polygon counts by class (empty without polygons).
    """
    with meter.stage("write"):
        outputs.finish_rasters()
    with meter.stage("valid"):
        outputs.make_valid(reader.resolution_m, progress, cancelled)
    with meter.stage("polygons"):
        polygon_counts = outputs.trace_polygons(progress, cancelled)
    with meter.stage("write"):
        outputs.stage(progress, cancelled)
    return polygon_counts


def _result(
    output: Path,
    options: SegmentOptions,
    reader: SceneReader,
    outputs: SegmentOutputs,
    *,
    plan: RunPlan,
    runner: Runner,
    accounting: Accounting,
    started: float,
    warnings: list[str],
    polygon_counts: dict[str, int],
) -> SegmentResult:
    """What the run wrote and how it went, from the outputs' pixel counts.

    ``started`` is when the run began (``time.perf_counter``).
    """
    counts = outputs.counts
    valid = int(counts[:-1].sum())
    pixels = {c.name: int(counts[c.value]) for c in plan.card.classes}
    return SegmentResult(
        output=output,
        probabilities=options.probabilities,
        stats_path=options.stats,
        model=plan.card.name,
        model_reason=plan.reason,
        runner=runner.description,
        device=runner.device,
        seconds=round(time.perf_counter() - started, 3),
        width=reader.width,
        height=reader.height,
        class_pixels=pixels,
        class_percent={
            name: round(100.0 * n / valid, 3) if valid else 0.0 for name, n in pixels.items()
        },
        nodata_pixels=int(counts[-1]),
        warnings=warnings,
        polygons=options.polygons,
        polygon_counts=polygon_counts,
        product_level=reader.level.describe(),
        uncertainty=options.uncertainty,
        accounting=accounting.to_dict() | {"summary": accounting.summary()},
        valid=options.valid,
        usable_percent=_usable_percent(outputs.valid_counts),
    )


def _usable_percent(counts: dict[str, int]) -> float | None:
    """Share of the data pixels the valid mask keeps, percent (None without a mask)."""
    data = counts.get("usable", 0) + counts.get("unusable", 0)
    return round(100.0 * counts["usable"] / data, 3) if data else None


def load_classes(path: str | Path) -> list[dict[str, Any]]:
    """The classes (value, name, color) recorded in a class raster written by :func:`segment`.

    Returns:
        One dict per class; empty when the raster has no cloudseg class list.
    """
    import rasterio

    with rasterio.open(path) as ds:
        return json.loads(ds.tags().get("CLOUDSEG_CLASSES", "[]"))

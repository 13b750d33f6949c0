"""Segment a Sentinel-2 scene into clear / cloud / cloud-shadow, from file to files.

:func:`segment` only orchestrates: it opens the scene, chooses the model, the grid and
the runner, streams the scene through the engine (:mod:`.engine`: tiles, blending and
resampling, bounded memory whatever the scene's size) into the run's outputs
(:mod:`.outputs`: written under temporary names, published together on success), and
returns what happened. By default the model runs on the input's own grid;
``resolution="preview"`` runs it on the model card's grid (30 m for the built-in
models: 9x fewer pixels for 10 m input, but small clouds and shadows are lost; see
docs/accuracy.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..accounting import RunMeter, area_km2
from ..atomic import check_outputs, claim
from ..callbacks import CancelCallback, ProgressCallback, never_cancelled, no_progress
from ..errors import InputError
from ..models.cards import ModelCard
from ..raster.bands import band_from_filename
from ..raster.reader import SceneReader, check_reflectance, open_scene
from .engine import NODATA, ReaderScene, memory_plan, resolve_model, scene_rows
from .options import RunOptions, SegmentOptions
from .outputs import SegmentOutputs, provenance_tags
from .resample import ModelGrid
from .runners import create_runner, shared_runner

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

    def to_dict(self) -> dict[str, Any]:
        """Return the result as JSON-serialisable data."""
        data = asdict(self)
        for key in ("output", "probabilities", "stats_path", "polygons", "uncertainty", "valid"):
            data[key] = str(data[key]) if data[key] else None
        data["megapixels_per_second"] = round(self.width * self.height / 1e6 / self.seconds, 3)
        return data


def _gdal_settings() -> dict[str, int | str]:
    """GDAL settings for a run, where the user has not set them.

    The block cache is 256 MiB: GDAL's default (5 % of RAM) lets a run's memory grow
    with the scene up to that share, and strips are read once each, so a small cache
    costs little time. Compressed blocks are decoded and encoded on all cores
    (GDAL_NUM_THREADS): a strip of a full Sentinel-2 tile spans dozens of blocks.
    """
    settings: dict[str, int | str] = {
        "GDAL_CACHEMAX": 256 * 1024 * 1024,
        "GDAL_NUM_THREADS": "ALL_CPUS",
    }
    return {k: v for k, v in settings.items() if k not in os.environ}


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


def _block_progress(progress: ProgressCallback, index: int, count: int) -> ProgressCallback:
    """Progress of column block ``index`` of ``count`` as a share of the whole run."""
    if count == 1:
        return progress

    def report(percent: float, message: str) -> None:
        progress((index * 98.0 + percent) / count, f"column block {index + 1}/{count}, {message}")

    return report


#: The file suffixes each output's format allows.
OUTPUT_SUFFIXES = {
    "OUTPUT": (".tif", ".tiff"),
    "--probabilities": (".tif", ".tiff"),
    "--polygons": (".gpkg",),
    "--stats": (".json",),
    "--uncertainty": (".tif", ".tiff"),
    "--valid": (".tif", ".tiff"),
}


def _check_outputs(reader: SceneReader, output: Path, options: SegmentOptions) -> dict[str, Path]:
    """Check the run's outputs against each other and every file the scene reads."""
    inputs = [reader.path] + [
        Path(s.path) for s in reader.sources.values() if not s.path.startswith("/vsi")
    ]
    return check_outputs(
        {
            "OUTPUT": output,
            "--probabilities": options.probabilities,
            "--polygons": options.polygons,
            "--stats": options.stats,
            "--uncertainty": options.uncertainty,
            "--valid": options.valid,
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
        input_path: Multi-band raster, folder of band files, or SAFE product.
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
    import rasterio

    options = options or SegmentOptions()
    progress = progress or no_progress
    cancelled = cancelled or never_cancelled
    output = Path(output_path).expanduser()
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        reader = stack.enter_context(
            open_scene(
                input_path, options.bands, options.product_level, options.scale, options.offset
            )
        )
        stack.enter_context(rasterio.Env(GDAL_PAM_ENABLED="NO", **_gdal_settings()))
        # The contract (backend.atomic) before the model loads: no output is an input or
        # another output, every folder is writable, and no other run holds the outputs.
        stack.enter_context(claim(_check_outputs(reader, output, options).values()))
        if options.bounds is not None:
            reader.crop(options.bounds)
        model, reason = resolve_model(reader.bands, reader.product_level, options, reader.path.name)
        card = model.card
        tile, _ = options.tiling(card)
        logger.info("%s", reason)
        warnings = _warnings(reader, card, options)
        grid = ModelGrid.choose(
            reader.height,
            reader.width,
            reader.resolution_m,
            card.resolution_m,
            options.resolution,
            str(reader.path),
        )
        plan = memory_plan(reader.width, card, grid, options, options.max_memory_mib)
        if len(plan.blocks) > 1:
            logger.info(
                "one pass over %d columns would need about %.1f GiB (budget %.1f GiB): "
                "running in %d column blocks",
                reader.width,
                plan.estimate_mib / 1024,
                plan.budget_mib / 1024,
                len(plan.blocks),
            )
        make = shared_runner if options.keep_runner else create_runner
        runner = make(model, options.device, options.precision, options.runtime, tile)
        logger.info(
            "running on %s; model grid %d x %d (factor %g)",
            runner.description,
            grid.width,
            grid.height,
            grid.factor,
        )
        meter = RunMeter(runner.device)  # time and energy from the first tile on
        km2 = area_km2(reader.width, reader.height, reader.transform, reader.crs)
        progress(0.0, f"{card.name} on {runner.description}")
        profile = {
            "width": reader.width,
            "height": reader.height,
            "crs": reader.crs,
            "transform": reader.transform,
        }
        tags = provenance_tags(model, reader, runner, options, grid)
        with SegmentOutputs(output, options, profile, card, tags) as outputs:
            for index, (c0, c1, b0, b1) in enumerate(plan.blocks):
                outputs.columns(c0, c1 - c0)
                scene = ReaderScene(reader, b0, b1 - b0)
                block_grid = grid if len(plan.blocks) == 1 else grid.of_width(b1 - b0)
                for row, probs, nodata in scene_rows(
                    scene,
                    block_grid,
                    card,
                    runner,
                    options,
                    _block_progress(progress, index, len(plan.blocks)),
                    cancelled,
                    meter,
                ):
                    with meter.stage("write"):
                        outputs.write(
                            row, probs[:, :, c0 - b0 : c1 - b0], nodata[:, c0 - b0 : c1 - b0]
                        )
            # The rasters' provenance: what reading, inference and writing their rows took.
            outputs.tags["CLOUDSEG_ACCOUNTING"] = json.dumps(meter.finish(km2).to_dict())
            with meter.stage("write"):
                outputs.finish_rasters()
            with meter.stage("valid"):
                outputs.make_valid(reader.resolution_m, progress, cancelled)
            with meter.stage("polygons"):
                polygon_counts = outputs.trace_polygons(progress, cancelled)
            with meter.stage("write"):
                outputs.stage(progress, cancelled)
            accounting = meter.finish(km2)
            counts = outputs.counts
            valid = int(counts[:-1].sum())
            pixels = {c.name: int(counts[c.value]) for c in card.classes}
            result = SegmentResult(
                output=output,
                probabilities=options.probabilities,
                stats_path=options.stats,
                model=card.name,
                model_reason=reason,
                runner=runner.description,
                device=runner.device,
                seconds=round(time.perf_counter() - start, 3),
                width=reader.width,
                height=reader.height,
                class_pixels=pixels,
                class_percent={
                    name: round(100.0 * n / valid, 3) if valid else 0.0
                    for name, n in pixels.items()
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
            outputs.publish(result.to_dict() if options.stats else None, cancelled)
    progress(100.0, f"done in {result.seconds:.1f} s")
    return result


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

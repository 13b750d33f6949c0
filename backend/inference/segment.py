"""Segment a Sentinel-2 scene into clear / cloud / cloud-shadow: the engine.

Read (by window) -> match the model card -> tile -> run -> blend -> write, streamed by
tile rows so that memory stays bounded whatever the scene's size. Probabilities are
computed on the input's own grid by default; ``resolution="preview"`` computes them on
the model card's grid (30 m for the built-in models: 9x fewer pixels for 10 m input, but
small clouds and shadows are lost; see docs/accuracy.md) and brings them back to the
input grid by bilinear interpolation.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import atomic
from .._version import __version__
from ..atomic import check_target, cleanup_on_failure, temporary_sibling
from ..callbacks import CancelCallback, ProgressCallback, never_cancelled, no_progress
from ..choices import resolution_choice
from ..errors import BandError, CancelledError, InputError
from ..models.cards import ModelCard
from ..models.registry import Model, choose_model, load_model
from ..raster.cog import BlockRowWriter, block_profile, publish_cog
from ..raster.reader import SceneReader, check_reflectance, open_scene
from .runners import Runner, create_runner
from .tiling import RowBlender, TileGrid, padded_extent

logger = logging.getLogger(__name__)

NODATA = 255


@dataclass
class SegmentOptions:
    """Everything a segmentation run can be told (the CLI and QGIS map onto it).

    Attributes:
        model: Built-in model name or model file; None picks the best built-in model.
        bands: Band names in file order, overriding the file's band descriptions.
        product_level: ``"L1C"`` or ``"L2A"``, overriding the product metadata.
        scale: Reflectance per digital number (default from metadata or 0.0001).
        offset: Reflectance added after scaling.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        precision: ``"auto"`` (bf16 where the hardware computes it natively: about 1.6x
            faster on such CPUs; 0.3 to 0.8 % of mask pixels differ), ``"fp32"`` or
            ``"bf16"``.
        runtime: ``"auto"``, ``"onnxruntime"``, ``"openvino"`` or ``"torch"``; see
            :func:`cloudseg.backend.inference.runners.plan_runner`.
        batch_size: Tiles per model call; None picks the runner's fastest: 16 on a GPU,
            4 with OpenVINO and 1 with onnxruntime or torch on the CPU.
        tta: Average predictions over flips and a 90-degree rotation (4x slower).
        tile_size: Tile edge in model-grid pixels (a multiple of 32); None: the card's.
        overlap: Pixels shared by neighbouring tiles (at most half a tile); None: the
            card's.
        resolution: ``"native"`` (the input's grid, the default) or ``"preview"`` (the
            model card's resolution: faster on finer input, less accurate); ``"model"``
            is accepted for ``"preview"``.
        probabilities: Also write per-class probabilities (uint8 percent) here.
        stats: Also write per-class pixel counts and percentages as JSON here.
        overwrite: Replace existing outputs.
        bounds: Segment only this extent, ``(left, bottom, right, top)`` in the input's
            CRS (widened to whole pixels); the outputs then cover just that extent.
        polygons: Also write the cloud and shadow polygons (GeoPackage) here.
        min_polygon_area_m2: Polygons smaller than this are left out.
    """

    model: str | None = None
    bands: list[str] | None = None
    product_level: str | None = None
    scale: float | None = None
    offset: float | None = None
    device: str = "auto"
    precision: str = "auto"
    runtime: str = "auto"
    batch_size: int | None = None
    tta: bool = False
    tile_size: int | None = None
    overlap: int | None = None
    resolution: str = "native"
    probabilities: Path | None = None
    stats: Path | None = None
    overwrite: bool = False
    bounds: tuple[float, float, float, float] | None = None
    polygons: Path | None = None
    min_polygon_area_m2: float = 0.0

    def __post_init__(self) -> None:
        try:
            self.resolution = resolution_choice(self.resolution)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        if self.probabilities is not None:
            self.probabilities = Path(self.probabilities).expanduser()
        if self.stats is not None:
            self.stats = Path(self.stats).expanduser()
        if self.polygons is not None:
            self.polygons = Path(self.polygons).expanduser()


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

    def to_dict(self) -> dict[str, Any]:
        """Return the result as JSON-serialisable data."""
        data = asdict(self)
        for key in ("output", "probabilities", "stats_path", "polygons"):
            data[key] = str(data[key]) if data[key] else None
        data["megapixels_per_second"] = round(self.width * self.height / 1e6 / self.seconds, 3)
        return data


# -- model grid and resampling ----------------------------------------------------------
@dataclass(frozen=True)
class ModelGrid:
    """The grid the model runs on: the input grid scaled by ``factor`` (model px / input px)."""

    factor: float
    height: int
    width: int

    @classmethod
    def for_scene(cls, reader: SceneReader, card: ModelCard, resolution: str) -> ModelGrid:
        """Choose the model grid for a scene.

        Raises:
            InputError: If the card's resolution is asked for but the scene's is unknown.
        """
        factor = 1.0
        if resolution_choice(resolution) == "preview":
            res = reader.resolution_m
            if res is None:
                raise InputError(
                    f"{reader.path} has no projected CRS, so its pixel size in metres is "
                    f"unknown; georeference it or leave out --resolution preview"
                )
            factor = card.resolution_m / res
            if abs(factor - 1) < 0.02:
                factor = 1.0
        return cls(factor, math.ceil(reader.height / factor), math.ceil(reader.width / factor))


def block_nanmean(x: np.ndarray, k: int, nan: np.ndarray | None = None) -> np.ndarray:
    """Mean of each ``k`` x ``k`` block of ``(C, H, W)`` (H, W multiples of ``k``), NaN-aware.

    NaN (nodata) pixels are left out of a block's mean, as GDAL's average resampling
    leaves nodata out; a block with no valid pixel is NaN. ``nan`` is ``np.isnan(x)``
    where the caller has it already.
    """
    if nan is None:
        nan = np.isnan(x)
    if not nan.any():
        total = _block_sum(x, k)
        total *= np.float32(1 / (k * k))
        return total
    total = _block_sum(np.where(nan, np.float32(0), x), k)
    count = _block_sum((~nan).astype(np.float32), k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.divide(total, count, out=total)  # 0 / 0 -> NaN


def _block_sum(x: np.ndarray, k: int) -> np.ndarray:
    # k strided row sums, then k strided column sums: a few times faster than a
    # reduction over the axes of a (C, H/k, k, W/k, k) view.
    rows = x[:, 0::k].copy()
    for j in range(1, k):
        rows += x[:, j::k]
    total = rows[:, :, 0::k].copy()
    for j in range(1, k):
        total += rows[:, :, j::k]
    return total


def argmax_classes(probs: np.ndarray) -> np.ndarray:
    """``probs.argmax(axis=0)`` as uint8 for ``(C, H, W)``, a pass per class.

    numpy's argmax along a short first axis is several times slower than comparing
    whole planes; ties go to the lower class, as with argmax.
    """
    classes = np.zeros(probs.shape[1:], dtype=np.uint8)
    best = probs[0].copy()
    for c in range(1, probs.shape[0]):
        better = probs[c] > best
        classes[better] = c
        np.maximum(best, probs[c], out=best)
    return classes


class Upsampler:
    """Turns blended model-grid rows into input-grid rows (bilinear), block by block."""

    def __init__(self, grid: ModelGrid, out_height: int, out_width: int) -> None:
        self.grid = grid
        self.out_height = out_height
        self.next_row = 0
        self._rows: np.ndarray | None = None  # model rows kept for interpolation
        self._first = 0  # model row index of self._rows[:, 0]
        f = grid.factor
        xm = np.clip((np.arange(out_width) + 0.5) / f - 0.5, 0, grid.width - 1)
        self._x0 = np.floor(xm).astype(np.intp)
        self._x1 = np.minimum(self._x0 + 1, grid.width - 1)
        self._wx = (xm - self._x0).astype(np.float32)

    def push(self, first: int, block: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """Add model rows ``first..`` and yield ``(row, (C, n, W))`` input-grid blocks."""
        if self.grid.factor == 1.0:
            self.next_row = first + block.shape[1]
            yield first, block
            return
        if self._rows is None:
            self._rows, self._first = block, first
        else:
            self._rows = np.concatenate([self._rows, block], axis=1)
        available = self._first + self._rows.shape[1]
        f = self.grid.factor
        end = self.out_height
        if available < self.grid.height:
            # Output row r interpolates model rows floor(y) and floor(y) + 1, with
            # y = max((r + 0.5) / f - 0.5, 0); both are loaded while y < available - 1.
            end = min(end, math.ceil((available - 0.5) * f - 0.5)) if available >= 2 else 0
        if end > self.next_row:
            rows = np.arange(self.next_row, end)
            ym = np.clip((rows + 0.5) / f - 0.5, 0, self.grid.height - 1)
            y0 = np.floor(ym).astype(np.intp)
            y1 = np.minimum(y0 + 1, self.grid.height - 1)
            wy = (ym - y0).astype(np.float32)[None, :, None]
            # Horizontal first, on the model rows in use (f times fewer than the output
            # rows), then vertical, whose gathers are whole contiguous rows.
            lo, hi = y0[0], y1[-1] + 1
            model_rows = self._rows[:, lo - self._first : hi - self._first]
            left = model_rows[:, :, self._x0]
            wide = model_rows[:, :, self._x1]
            wide -= left
            wide *= self._wx
            wide += left
            top = wide[:, y0 - lo]
            out = wide[:, y1 - lo]
            out -= top
            out *= wy
            out += top
            yield self.next_row, out
            self.next_row = end
            keep_from = max(math.floor((end + 0.5) / f - 0.5), 0)
            self._rows = self._rows[:, keep_from - self._first :]
            self._first = keep_from


# -- inference helpers -------------------------------------------------------------------
def _predict(runner: Runner, tiles: np.ndarray, tta: bool) -> np.ndarray:
    if not tta:
        return runner(tiles)
    total = runner(tiles)
    total += runner(np.ascontiguousarray(tiles[..., ::-1]))[..., ::-1]
    total += runner(np.ascontiguousarray(tiles[..., ::-1, :]))[..., ::-1, :]
    total += np.rot90(runner(np.ascontiguousarray(np.rot90(tiles, 1, (2, 3)))), -1, (2, 3))
    return total / 4


def _resolve_model(reader: SceneReader, options: SegmentOptions) -> tuple[Model, str]:
    if options.model is None:
        return choose_model(reader.bands, reader.product_level)
    model = load_model(options.model)
    missing = [b for b in model.card.bands if b not in reader.bands]
    if missing:
        raise BandError(
            f"model {model.card.name} needs band(s) {', '.join(missing)} that "
            f"{reader.path.name} lacks (it has {', '.join(reader.bands)}); "
            "if they are there but unnamed, pass --bands"
        )
    return model, f"model {model.card.name} as asked"


def _provenance(
    model: Model, reader: SceneReader, runner: Runner, options: SegmentOptions, grid: ModelGrid
) -> dict[str, str]:
    card = model.card
    return {
        "CLOUDSEG_VERSION": __version__,
        "CLOUDSEG_MODEL": card.name,
        "CLOUDSEG_MODEL_VERSION": card.version,
        "CLOUDSEG_MODEL_SHA256": model.sha256,
        "CLOUDSEG_CLASSES": json.dumps([asdict(c) for c in card.classes]),
        "CLOUDSEG_MODEL_ACCURACY": card.headline() or "not measured",
        "CLOUDSEG_MODEL_METRICS": json.dumps(
            [
                {k: m[k] for k in ("dataset", "config", "iou", "measured") if k in m}
                for m in card.metrics
            ]
        ),
        "CLOUDSEG_BAND_MAPPING": json.dumps(
            {b: f"{reader.sources[b].path}#{reader.sources[b].index}" for b in card.bands}
        ),
        "CLOUDSEG_SCALING": reader.description,
        "CLOUDSEG_PRODUCT_LEVEL": str(reader.product_level or "unknown"),
        "CLOUDSEG_RUN_RESOLUTION": (
            f"{card.resolution_m:g} m (model card; preview)"
            if options.resolution == "preview"
            else "input grid"
        ),
        "CLOUDSEG_TILING": json.dumps(
            {"tile_size": tile_size(options, card), "overlap": tile_overlap(options, card)}
        ),
        "CLOUDSEG_RESAMPLING_FACTOR": f"{grid.factor:g}",
        "CLOUDSEG_TTA": str(options.tta),
        "CLOUDSEG_RUNNER": runner.description,
        "CLOUDSEG_DEVICE": runner.device,
        "CLOUDSEG_CREATED": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


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


# -- the run ---------------------------------------------------------------------------
def segment(
    input_path: str | Path,
    output_path: str | Path,
    options: SegmentOptions | None = None,
    progress: ProgressCallback | None = None,
    cancelled: CancelCallback | None = None,
) -> SegmentResult:
    """Segment clouds and cloud shadows in a Sentinel-2 scene and write a class COG.

    The class raster (uint8, color table, class names in the ``CLOUDSEG_CLASSES`` tag,
    255 = nodata) is written under a temporary name and renamed when complete: a
    failed or cancelled run leaves nothing that looks like a result.

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
    targets = [
        p for p in (output, options.probabilities, options.stats, options.polygons) if p is not None
    ]
    for target in targets:
        check_target(Path(target), options.overwrite)
    if options.batch_size is not None and options.batch_size < 1:
        raise InputError("batch size must be at least 1")

    start = time.perf_counter()
    with (
        open_scene(
            input_path, options.bands, options.product_level, options.scale, options.offset
        ) as reader,
        rasterio.Env(GDAL_PAM_ENABLED="NO", **_gdal_settings()),
    ):
        if options.bounds is not None:
            reader.crop(options.bounds)
        model, reason = _resolve_model(reader, options)
        card = model.card
        _check_tiling(options, card)
        logger.info("%s", reason)
        warnings = []
        if reader.product_level and card.product_level not in ("any", reader.product_level):
            warnings.append(
                f"model {card.name} is for {card.product_level} but the input "
                f"is {reader.product_level}"
            )
        reflectance_warning = check_reflectance(reader, list(card.bands))
        if reflectance_warning:
            warnings.append(reflectance_warning)
        for message in warnings:
            logger.warning("%s", message)
        grid = ModelGrid.for_scene(reader, card, options.resolution)
        runner = create_runner(
            model, options.device, options.precision, options.runtime, tile_size(options, card)
        )
        logger.info(
            "running on %s; model grid %d x %d (factor %g)",
            runner.description,
            grid.width,
            grid.height,
            grid.factor,
        )
        progress(0.0, f"{card.name} on {runner.description}")

        tmp_classes = temporary_sibling(output)
        tmp_probs = temporary_sibling(options.probabilities) if options.probabilities else None
        profile = {
            "width": reader.width,
            "height": reader.height,
            "crs": reader.crs,
            "transform": reader.transform,
        }
        tag_values = _provenance(model, reader, runner, options, grid)
        counts = np.zeros(len(card.classes) + 1, dtype=np.int64)
        with cleanup_on_failure(*(p for p in (tmp_classes, tmp_probs) if p)):
            with rasterio.open(
                tmp_classes, "w", **block_profile(profile, 1, "uint8", NODATA)
            ) as classes_ds:
                probs_ds = (
                    rasterio.open(
                        tmp_probs, "w", **block_profile(profile, len(card.classes), "uint8", NODATA)
                    )
                    if tmp_probs
                    else None
                )
                try:
                    _run(
                        reader,
                        card,
                        runner,
                        grid,
                        options,
                        BlockRowWriter(classes_ds),
                        BlockRowWriter(probs_ds) if probs_ds is not None else None,
                        counts,
                        progress,
                        cancelled,
                    )
                    _describe(classes_ds, probs_ds, card, tag_values)
                finally:
                    if probs_ds is not None:
                        probs_ds.close()
            if cancelled():  # the last chance before anything looks like a result
                raise CancelledError("cancelled; no output was written")
            progress(99.0, "writing Cloud-Optimized GeoTIFF")
            if tmp_probs is not None and options.probabilities is not None:
                publish_cog(tmp_probs, Path(options.probabilities), "AVERAGE")
            publish_cog(tmp_classes, output, "NEAREST")
    polygon_counts = (
        _polygonize_published(output, options, progress, cancelled) if options.polygons else {}
    )

    seconds = time.perf_counter() - start
    valid = int(counts[:-1].sum())
    pixels = {c.name: int(counts[c.value]) for c in card.classes}
    percent = {name: round(100.0 * n / valid, 3) if valid else 0.0 for name, n in pixels.items()}
    result = SegmentResult(
        output=output,
        probabilities=options.probabilities,
        stats_path=options.stats,
        model=card.name,
        model_reason=reason,
        runner=runner.description,
        device=runner.device,
        seconds=round(seconds, 3),
        width=reader.width,
        height=reader.height,
        class_pixels=pixels,
        class_percent=percent,
        nodata_pixels=int(counts[-1]),
        warnings=warnings,
        polygons=options.polygons,
        polygon_counts=polygon_counts,
    )
    if options.stats is not None:
        atomic.write_text(Path(options.stats), json.dumps(result.to_dict(), indent=2))
    progress(100.0, f"done in {seconds:.1f} s")
    return result


def _polygonize_published(
    output: Path,
    options: SegmentOptions,
    progress: ProgressCallback,
    cancelled: CancelCallback,
) -> dict[str, int]:
    """Trace the polygons of a published mask; if that fails, remove what was published."""
    from ..raster.vectorize import polygonize

    assert options.polygons is not None
    try:
        if cancelled():
            raise CancelledError("cancelled; no output was written")
        progress(99.5, "tracing cloud and shadow polygons")
        return polygonize(
            output,
            options.polygons,
            min_area_m2=options.min_polygon_area_m2,
            overwrite=options.overwrite,
        )
    except BaseException:
        for path in (output, options.probabilities):
            if path is not None:
                Path(path).unlink(missing_ok=True)
        raise


def _run(
    reader: SceneReader,
    card: ModelCard,
    runner: Runner,
    grid: ModelGrid,
    options: SegmentOptions,
    classes_out: BlockRowWriter,
    probs_out: BlockRowWriter | None,
    counts: np.ndarray,
    progress: ProgressCallback,
    cancelled: CancelCallback,
) -> None:
    """Stream tile rows through the model, blend, upsample and write block rows."""
    tile = tile_size(options, card)
    overlap = tile_overlap(options, card)
    margin = scene_margin(tile)
    tiles = TileGrid(
        padded_extent(grid.height, margin, tile, overlap),
        padded_extent(grid.width, margin, tile, overlap),
        tile,
        overlap,
    )
    blender = RowBlender(tiles, len(card.classes))
    upsampler = Upsampler(grid, reader.height, reader.width)
    mean = np.asarray(card.normalization["mean"], dtype=np.float32)[:, None, None]
    std = np.asarray(card.normalization["std"], dtype=np.float32)[:, None, None]
    bands = list(card.bands)
    f = grid.factor
    total, done = len(tiles), 0
    batch_size = options.batch_size or runner.default_batch
    # An integer factor (10 m input, 30 m model) reads native rows once and averages
    # k x k blocks here: GDAL's average resampling was the slowest step of a run, and the
    # native rows also give the nodata mask for writing. Other factors let GDAL
    # resample, and read the input rows again at native resolution when writing.
    k = round(f)
    block_mean = f > 1 and abs(f - k) < 1e-9
    # On the input grid (and with block means) the strips show which pixels are nodata.
    known_nodata = _RowMasks() if f == 1 or block_mean else None

    for y in tiles.rows:
        top = y - margin  # first model-grid row of this tile row (may be negative)
        r0, r1 = max(top, 0), min(top + tile, grid.height)
        if block_mean:
            native = reader.read(bands, r0 * k, 0, (r1 - r0) * k, grid.width * k)
            nan = np.isnan(native)
            known_nodata.add(r0 * k, nan[:, :, : reader.width].any(axis=0))
            strip = block_nanmean(native, k, nan)
            del native, nan
            missing = np.isnan(strip)
        else:
            strip = reader.read(
                bands, r0 * f, 0, (r1 - r0) * f, grid.width * f, out_shape=(r1 - r0, grid.width)
            )
            missing = np.isnan(strip)
            if known_nodata is not None:
                known_nodata.add(r0, missing.any(axis=0))
        strip = (strip - mean) / std
        strip[missing] = 0.0
        pad_right = tiles.cols[-1] + tile - margin - grid.width
        strip = np.pad(
            strip, ((0, 0), (r0 - top, top + tile - r1), (margin, pad_right)), mode="symmetric"
        )
        cols = tiles.cols
        for i in range(0, len(cols), batch_size):
            if cancelled():
                raise CancelledError("cancelled; no output was written")
            batch_cols = cols[i : i + batch_size]
            batch = np.stack([strip[:, :, c : c + tile] for c in batch_cols])
            probabilities = _predict(runner, np.ascontiguousarray(batch), options.tta)
            for c, p in zip(batch_cols, probabilities, strict=True):
                blender.add(c, p)
            done += len(batch_cols)
            progress(98.0 * done / total, f"tile {done} of {total}")
        first, block = blender.finish_row()
        # Back to scene rows and columns: drop the mirrored margin.
        lo, hi = max(first, margin), min(first + block.shape[1], margin + grid.height)
        if hi <= lo:
            continue
        block = block[:, lo - first : hi - first, margin : margin + grid.width]
        for row, probs in upsampler.push(lo - margin, block):
            nodata = known_nodata.take(row, probs.shape[1]) if known_nodata else None
            _write_block(reader, bands, row, probs, nodata, classes_out, probs_out, counts)
    classes_out.close()
    if probs_out is not None:
        probs_out.close()


def tile_size(options: SegmentOptions, card: ModelCard) -> int:
    """The tile edge of a run: the option, else the card's."""
    return options.tile_size or card.tile_size


def tile_overlap(options: SegmentOptions, card: ModelCard) -> int:
    """The overlap of a run: the option, else the card's, at most half a tile."""
    overlap = card.overlap if options.overlap is None else options.overlap
    return min(overlap, tile_size(options, card) // 2)


def _check_tiling(options: SegmentOptions, card: ModelCard) -> None:
    tile = tile_size(options, card)
    if tile < 64 or tile % 32:
        raise InputError(f"tile size must be a multiple of 32 and at least 64, not {tile}")
    if options.overlap is not None and not 0 <= options.overlap <= tile // 2:
        raise InputError(f"overlap must be between 0 and half the tile size ({tile // 2})")


def scene_margin(tile: int) -> int:
    """The mirrored margin around the scene: a fifth of a tile.

    Border pixels are then predicted with context, not at the weak edge of a tile (as
    ukis-csmask does).
    """
    return tile // 5


class _RowMasks:
    """Rolling buffer of per-row boolean masks, added and taken in row order."""

    def __init__(self) -> None:
        self.first = 0
        self.rows: np.ndarray | None = None

    def add(self, row: int, mask: np.ndarray) -> None:
        """Add ``mask`` for rows ``row..``; rows already held are skipped."""
        if self.rows is None:
            self.first, self.rows = row, mask
            return
        end = self.first + self.rows.shape[0]
        if row + mask.shape[0] > end:
            self.rows = np.concatenate([self.rows, mask[end - row :]])

    def take(self, row: int, n: int) -> np.ndarray:
        """Masks of rows ``row..row + n``; rows before ``row`` are dropped."""
        assert self.rows is not None and row >= self.first
        self.rows = self.rows[row - self.first :]
        self.first = row
        return self.rows[:n]


def _write_block(
    reader: SceneReader,
    bands: list[str],
    row: int,
    probs: np.ndarray,
    nodata: np.ndarray | None,
    classes_out: BlockRowWriter,
    probs_out: BlockRowWriter | None,
    counts: np.ndarray,
) -> None:
    n = probs.shape[1]
    classes = argmax_classes(probs)
    if nodata is None:
        nodata = np.isnan(reader.read(bands, row, 0, n, reader.width)).any(axis=0)
    classes[nodata] = NODATA
    classes_out.write(row, classes[None])
    counts[: probs.shape[0]] += np.bincount(classes[~nodata].ravel(), minlength=probs.shape[0])[
        : probs.shape[0]
    ]
    counts[-1] += int(nodata.sum())
    if probs_out is not None:
        percent = np.rint(np.clip(probs, 0, 1) * 100).astype(np.uint8)
        percent[:, nodata] = NODATA
        probs_out.write(row, percent)


def _describe(classes_ds: Any, probs_ds: Any, card: ModelCard, tags: dict[str, str]) -> None:
    classes_ds.write_colormap(1, {c.value: c.rgba() for c in card.classes} | {NODATA: (0, 0, 0, 0)})
    classes_ds.set_band_description(
        1, "class: " + ", ".join(f"{c.value}={c.name}" for c in card.classes)
    )
    classes_ds.update_tags(**tags)
    if probs_ds is not None:
        for c in card.classes:
            probs_ds.set_band_description(c.value + 1, f"P({c.name}) %")
        probs_ds.update_tags(**tags, CLOUDSEG_PROBABILITY_SCALE="percent 0-100")


def load_classes(path: str | Path) -> list[dict[str, Any]]:
    """The classes (value, name, color) recorded in a class raster written by :func:`segment`.

    Returns:
        One dict per class; empty when the raster has no cloudseg class list.
    """
    import rasterio

    with rasterio.open(path) as ds:
        return json.loads(ds.tags().get("CLOUDSEG_CLASSES", "[]"))

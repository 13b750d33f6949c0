"""The engine's core: reflectance in, blended class probabilities out, tile row by tile row.

:func:`scene_rows` streams a scene (a :class:`~cloudseg.backend.raster.reader.SceneReader`
or an array in memory) through the model: strips of reflectance on the model's grid
are normalised, mirrored at the edges, cut into tiles, run in batches (optionally with
TTA), blended, brought back to the input grid and yielded row block by row block with
their nodata masks. :func:`reader_rows` runs a scene read from files through it in
column blocks when one pass would not fit the memory budget.

Every run takes the same steps: :func:`open_input` opens the input as the options say
(bands, level, scaling, extent), :func:`plan_run` chooses the model, the grid and the
column blocks, a runner runs the model, and :func:`scene_rows` streams the rows.
:func:`cloudseg.backend.inference.segment.segment` writes those rows to files,
:func:`cloudseg.backend.inference.explain.explain` runs a map-making runner through
them, and :func:`predict` collects them in memory, for evaluation, uncertainty and
active learning. All give the same probabilities for the same input, and
classes come from the one decision (:func:`.decision.decide`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from ..accounting import RunMeter
from ..callbacks import CancelCallback, ProgressCallback, never_cancelled, no_progress
from ..errors import BandError, CancelledError, InputError, ModelError
from ..models.cards import ModelCard
from ..models.registry import Model, choose_model, load_model
from ..raster.reader import MAX_REFLECTANCE, SceneReader, mark_not_data, open_scene
from .decision import NODATA, decide
from .options import RunOptions
from .resample import ModelGrid, RowMasks, Upsampler, block_nanmean
from .runners import Runner, create_runner, shared_runner
from .shadow import memory_mib as shadow_memory_mib
from .shadow import shadow_geometry
from .tiling import RowBlender, TileLayout

logger = logging.getLogger(__name__)

__all__ = [
    "NODATA",
    "ArrayScene",
    "Prediction",
    "ReaderScene",
    "RunPlan",
    "memory_plan",
    "open_input",
    "plan_reader",
    "plan_run",
    "predict",
    "reader_rows",
    "resolve_model",
    "scene_rows",
]


# -- opening an input ----------------------------------------------------------------------
def gdal_settings() -> dict[str, int | str]:
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


@contextlib.contextmanager
def open_input(
    source: str | Path,
    options: RunOptions,
    bounds: tuple[float, float, float, float] | None = None,
) -> Iterator[SceneReader]:
    """Open an input as a run reads it: its bands, level and scaling as the options say.

    Reads go through GDAL with the run's settings (:func:`gdal_settings`, no ``.aux.xml``
    written beside the input) while the context lasts.

    Args:
        source: Anything ``cloudseg segment`` reads (raster, band folder, SAFE).
        options: ``bands``, ``product_level``, ``scale`` and ``offset`` apply.
        bounds: Only this extent (left, bottom, right, top in the input's CRS).

    Raises:
        CloudsegError: For an input that cannot be read, or an extent off the scene.
    """
    import rasterio

    with contextlib.ExitStack() as stack:
        reader = stack.enter_context(
            open_scene(source, options.bands, options.product_level, options.scale, options.offset)
        )
        stack.enter_context(rasterio.Env(GDAL_PAM_ENABLED="NO", **gdal_settings()))
        if bounds is not None:
            reader.crop(bounds)
        yield reader


# -- where strips come from --------------------------------------------------------------
class Scene(Protocol):
    """An input the engine can read strips of reflectance from (NaN where no data)."""

    height: int
    width: int

    def read_native(self, bands: list[str], row: int, n: int, width: int) -> np.ndarray:
        """Rows ``row..row + n`` of the input grid, ``width`` columns (NaN past the edges)."""
        ...

    def read_resampled(self, bands: list[str], grid: ModelGrid, r0: int, r1: int) -> np.ndarray:
        """Model-grid rows ``r0..r1`` for a factor that is not a whole number."""
        ...


class ReaderScene:
    """A scene read by window from files, through GDAL (see :class:`SceneReader`).

    ``col_off`` and ``width`` make it a block of the scene's columns (for scenes too
    wide for memory, see :func:`memory_plan`); columns past the block are NaN, as past
    the scene's edge.
    """

    def __init__(self, reader: SceneReader, col_off: int = 0, width: int | None = None) -> None:
        self.reader = reader
        self.col_off = col_off
        self.height = reader.height
        self.width = reader.width - col_off if width is None else width

    def read_native(self, bands: list[str], row: int, n: int, width: int) -> np.ndarray:
        """See :class:`Scene`."""
        strip = self.reader.read(bands, row, self.col_off, n, width)
        strip[:, :, self.width :] = np.nan
        return strip

    def read_resampled(self, bands: list[str], grid: ModelGrid, r0: int, r1: int) -> np.ndarray:
        """See :class:`Scene`: GDAL's average resampling."""
        if self.col_off or self.width != self.reader.width:
            raise InputError("column blocks need a model grid a whole multiple of the input's")
        f = grid.factor
        return self.reader.read(
            bands, r0 * f, 0, (r1 - r0) * f, grid.width * f, out_shape=(r1 - r0, grid.width)
        )


class ArrayScene:
    """Reflectance already in memory: ``(bands, rows, cols)`` float32, NaN where no data.

    Values that are no pixel's data (+-Inf, beyond ``MAX_REFLECTANCE``) are nodata too,
    by the rule every file read follows (:func:`~cloudseg.backend.raster.reader.mark_not_data`);
    the caller's array is not changed.

    Args:
        reflectance: The image, its bands named by ``bands``.
        bands: Canonical band names of the image's bands, in order.
        resolution_m: Pixel size in metres (needed for ``resolution="preview"`` only).
    """

    def __init__(
        self, reflectance: np.ndarray, bands: list[str], resolution_m: float | None = None
    ) -> None:
        if reflectance.ndim != 3 or reflectance.shape[0] != len(bands):
            raise InputError(
                f"expected reflectance of shape (bands, rows, cols) with {len(bands)} bands, "
                f"got {reflectance.shape}"
            )
        self.reflectance = reflectance.astype(np.float32, copy=False)
        with np.errstate(invalid="ignore"):  # NaN compares False: nodata already
            beyond = bool((np.abs(self.reflectance) > MAX_REFLECTANCE).any())
        if beyond:
            if self.reflectance is reflectance:
                self.reflectance = self.reflectance.copy()
            mark_not_data(self.reflectance)
        self.bands = list(bands)
        self.resolution_m = resolution_m
        self.height, self.width = reflectance.shape[1:]

    def read_native(self, bands: list[str], row: int, n: int, width: int) -> np.ndarray:
        """See :class:`Scene`."""
        missing = [b for b in bands if b not in self.bands]
        if missing:
            raise BandError(f"the image has no band(s) {', '.join(missing)}")
        out = np.full((len(bands), n, width), np.nan, dtype=np.float32)
        rows = slice(max(row, 0), min(row + n, self.height))
        if rows.stop > rows.start:
            cols = min(width, self.width)
            index = [self.bands.index(b) for b in bands]
            out[:, rows.start - row : rows.stop - row, :cols] = self.reflectance[index, rows, :cols]
        return out

    def read_resampled(self, bands: list[str], grid: ModelGrid, r0: int, r1: int) -> np.ndarray:
        """See :class:`Scene`: not offered for arrays."""
        raise InputError(
            f"the model's resolution is {grid.factor:g} times the image's pixel size, not a "
            "whole multiple; run on the native grid, or read the image from a file"
        )


class _Strips:
    """Model-grid strips of a scene, and the nodata mask of every input row read.

    A whole factor (10 m input, 30 m model) reads input rows once and averages k x k
    blocks: GDAL's average resampling was the slowest step of a run, and the input rows
    also give the nodata mask. Other factors let the scene resample, and nodata rows are
    read again at the input's resolution when asked for.
    """

    def __init__(self, scene: Scene, bands: list[str], grid: ModelGrid) -> None:
        self.scene, self.bands, self.grid = scene, bands, grid
        self.k = grid.block_factor
        self.masks = RowMasks() if grid.factor == 1 or self.k else None

    def strip(self, r0: int, r1: int) -> np.ndarray:
        """Reflectance of model-grid rows ``r0..r1`` (NaN where no data)."""
        grid, k = self.grid, self.k
        if k:
            native = self.scene.read_native(self.bands, r0 * k, (r1 - r0) * k, grid.width * k)
            nan = np.isnan(native)
            self.masks.add(r0 * k, nan[:, :, : self.scene.width].any(axis=0))
            return block_nanmean(native, k, nan)
        if grid.factor == 1:
            strip = self.scene.read_native(self.bands, r0, r1 - r0, grid.width)
            self.masks.add(r0, np.isnan(strip).any(axis=0))
            return strip
        return self.scene.read_resampled(self.bands, grid, r0, r1)

    def nodata(self, row: int, n: int) -> np.ndarray:
        """Which pixels of input rows ``row..row + n`` have no data."""
        if self.masks is not None:
            return self.masks.take(row, n)
        native = self.scene.read_native(self.bands, row, n, self.scene.width)
        return np.isnan(native).any(axis=0)


# -- the model over strips ------------------------------------------------------------------
def fill_nodata(strip: np.ndarray) -> None:
    """Fill pixels without data (NaN in any band) by mirroring the valid pixels beside them.

    In place. The model sees the valid area continued, as the mirrored margin does at
    the scene's border, so valid pixels next to nodata are predicted much as they would
    be in a crop; a constant fill (the mean, or zeros) shows the model an edge that is
    not there and changes them. Where the mirror image falls in nodata too, the nearest
    valid pixel is used. A strip with no valid pixel becomes the mean (0).
    """
    missing = np.isnan(strip).any(axis=0)
    if not missing.any():
        return
    if missing.all():
        strip[:] = 0.0
        return
    from scipy.ndimage import distance_transform_edt

    rows, cols = distance_transform_edt(missing, return_distances=False, return_indices=True)
    r, c = np.nonzero(missing)
    near_r, near_c = rows[r, c], cols[r, c]
    # Mirror each pixel across its nearest valid one (numpy's "symmetric" padding, the
    # edge pixel repeated once): a straight nodata edge then looks like a crop's margin.
    mirror_r = np.clip(2 * near_r - r - np.sign(near_r - r), 0, missing.shape[0] - 1)
    mirror_c = np.clip(2 * near_c - c - np.sign(near_c - c), 0, missing.shape[1] - 1)
    bad = missing[mirror_r, mirror_c]  # the mirror lands in nodata: take the nearest
    mirror_r[bad], mirror_c[bad] = near_r[bad], near_c[bad]
    strip[:, r, c] = strip[:, mirror_r, mirror_c]


def _predict_tiles(runner: Runner, tiles: np.ndarray, tta: bool) -> np.ndarray:
    if not tta:
        return runner(tiles)
    total = runner(tiles)
    total += runner(np.ascontiguousarray(tiles[..., ::-1]))[..., ::-1]
    total += runner(np.ascontiguousarray(tiles[..., ::-1, :]))[..., ::-1, :]
    total += np.rot90(runner(np.ascontiguousarray(np.rot90(tiles, 1, (2, 3)))), -1, (2, 3))
    return total / 4


@contextlib.contextmanager
def _no_stage(name: str) -> Iterator[None]:
    """A stage nobody times."""
    yield


def scene_rows(
    scene: Scene,
    grid: ModelGrid,
    card: ModelCard,
    runner: Runner,
    options: RunOptions,
    progress: ProgressCallback = no_progress,
    cancelled: CancelCallback = never_cancelled,
    meter: RunMeter | None = None,
    *,
    tiling: tuple[int, int],
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Stream a scene through the model, in row order.

    ``meter`` (optional) gets the seconds spent reading (``read``) and in the model
    (``infer``); ``tiling`` is the run plan's tile size and overlap (:class:`RunPlan`).

    Yields:
        ``(row, probabilities, nodata)``: input-grid rows ``row..row + n`` as
        ``(classes, n, width)`` float32 blended probabilities and an ``(n, width)``
        nodata mask. Progress goes from 0 to 98 %.

    Raises:
        CancelledError: When ``cancelled()`` returns True (polled once per batch).
    """
    tile, overlap = tiling
    stage = meter.stage if meter is not None else _no_stage
    layout = TileLayout(grid.height, grid.width, tile, overlap)
    blender = RowBlender(layout.grid, len(card.classes))
    upsampler = Upsampler(grid, scene.height, scene.width)
    strips = _Strips(scene, list(card.bands), grid)
    cols = layout.grid.cols
    total, done = len(layout.grid), 0
    batch_size = options.batch_size or runner.default_batch
    for tile_row in layout.grid.rows:
        top, r0, r1 = layout.rows_of(tile_row)
        with stage("read"):
            strip = card.normalize(strips.strip(r0, r1))
        fill_nodata(strip)
        strip = layout.pad(strip, top, r0, r1)
        for i in range(0, len(cols), batch_size):
            if cancelled():
                raise CancelledError("cancelled; no output was written")
            batch_cols = cols[i : i + batch_size]
            batch = np.stack([strip[:, :, c : c + tile] for c in batch_cols])
            with stage("infer"):
                probabilities = _predict_tiles(runner, np.ascontiguousarray(batch), options.tta)
            if probabilities.shape[1] != len(card.classes):  # a graph without static shapes
                raise ModelError(
                    f"model {card.name}: the network returns {probabilities.shape[1]} class "
                    f"channel(s) but its card names {len(card.classes)} class(es) "
                    f"({', '.join(card.class_names())}); fix the card's classes"
                )
            for c, p in zip(batch_cols, probabilities, strict=True):
                blender.add(c, p)
            done += len(batch_cols)
            progress(98.0 * done / total, f"tile {done} of {total}")
        cropped = layout.crop(*blender.finish_row())
        if cropped is None:
            continue
        for row, probs in upsampler.push(*cropped):
            yield row, probs, strips.nodata(row, probs.shape[1])


# -- memory --------------------------------------------------------------------------------
#: Memory a run holds whatever the scene's width, in MiB: Python and its libraries, the
#: runtime with the model, and GDAL's block cache (256 MiB). Measured: 600-700 MiB.
BASE_MEMORY_MIB = 768
#: More memory, in MiB, when probabilities or polygons are written too: converting the
#: probabilities to a COG and tracing polygons hold buffers of their own (measured: 194
#: MiB more on a full 10980 x 10980 tile; dev/results/memory.json).
EXTRA_OUTPUTS_MIB = 256
#: Column blocks are whole COG blocks wide, so that each block of the output is written once.
COLUMN_ALIGN = 512
#: More memory, in MiB, that a run computing the network's gradients holds (``explain``:
#: torch with autograd and captum, the network in float32). Measured on the built-in
#: U-Nets (EfficientNet-B4, the largest network cloudseg ships) on a CPU: a run peaks
#: at 1160 MiB with 128 px tiles, 1380 with 256 and 2530 with 512 (batch 1), and 2130
#: with four 256 px tiles a batch; :data:`BASE_MEMORY_MIB` and these two figures cover
#: that with room to spare.
GRADIENT_BASE_MIB = 384
#: Activations kept for the backward pass, bytes per pixel of each tile of a batch, on
#: the CPU (measured: 3.8-5.6 KiB). On a GPU they are held in the GPU's memory.
GRADIENT_BYTES_PER_PIXEL = 6 * 1024


def gradient_memory_mib(card: ModelCard, options: RunOptions) -> float:
    """Memory, in MiB, a run that computes the network's gradients holds beyond inference.

    The tiles of a batch (``options.batch_size``, else 4 on a GPU and 1 on the CPU, as
    ``explain``'s runner takes them) keep their activations for the backward pass.
    """
    from .runners import cuda_usable

    tile, _ = options.tiling(card)
    device = options.device
    if device == "auto":
        device = "cuda" if cuda_usable() else "cpu"
    if device == "cuda":
        return float(GRADIENT_BASE_MIB)
    batch = options.batch_size or 1
    return GRADIENT_BASE_MIB + batch * float(tile) ** 2 * GRADIENT_BYTES_PER_PIXEL / 2**20


def bytes_per_column(bands: int, classes: int, tile: int, factor: float) -> float:
    """Working memory per input column, in bytes: the streaming buffers scale with this.

    A strip of ``tile`` model rows is ``tile * factor`` input rows of every band, held
    twice as float32 (read and normalised, then padded) with its nodata mask; then the
    blender's sums, the blended and upsampled probabilities, and the output writers'
    buffers of one COG block row. Checked against the measured peak (about 20 KB per
    column for 4 bands, 3 classes, 256 px tiles; dev/results/memory.json): the estimate
    errs on the high side.
    """
    rows = tile * max(factor, 1.0)
    strip = bands * rows * (4 * 2 + 1)
    blend = (classes + 1) * tile * 4 + classes * rows * 4 * 2
    writers = (classes + 1) * (COLUMN_ALIGN + rows)
    return float(strip + blend + writers)


@dataclass(frozen=True)
class MemoryPlan:
    """How a scene is run within a memory budget.

    Attributes:
        blocks: ``(c0, c1, b0, b1)`` column blocks (see ``tiling.column_blocks``); one
            block spanning the scene when it fits.
        estimate_mib: The estimated peak of the whole scene in one pass.
        budget_mib: The budget.
    """

    blocks: list[tuple[int, int, int, int]]
    estimate_mib: float
    budget_mib: float


def memory_plan(
    width: int,
    card: ModelCard,
    grid: ModelGrid,
    options: RunOptions,
    budget_mib: float,
    extra_mib: float = 0.0,
) -> MemoryPlan:
    """Split a scene into column blocks when one pass over its width would exceed the budget.

    Args:
        width: Input columns.
        card: The model's card.
        grid: The model grid over the input.
        options: The tiling, and the outputs that hold buffers of their own.
        budget_mib: The budget.
        extra_mib: Memory the runner holds beyond an inference runtime's, whatever the
            width (gradients: :func:`gradient_memory_mib`).

    Raises:
        InputError: If the budget is too small for even a narrow block, or the scene
            needs blocks and the model grid is not a whole multiple of the input's.
    """
    from .tiling import column_blocks

    tile, overlap = options.tiling(card)
    per_column = bytes_per_column(len(card.bands), len(card.classes), tile, grid.factor)
    extras = any(
        getattr(options, name, None) for name in ("probabilities", "polygons", "uncertainty")
    )
    base = BASE_MEMORY_MIB + (EXTRA_OUTPUTS_MIB if extras else 0) + extra_mib
    estimate = base + per_column * width / 2**20
    if estimate <= budget_mib:
        return MemoryPlan([(0, width, 0, width)], estimate, budget_mib)
    k = 1 if grid.factor == 1 else grid.block_factor
    fits = int((budget_mib - base) * 2**20 / per_column)
    context = tile * (k or 1)
    align = (tile - overlap) * (k or 1)
    interior = (fits - 2 * context - align) // COLUMN_ALIGN * COLUMN_ALIGN
    if k is None or interior < COLUMN_ALIGN:
        why = (
            "a model grid that is not a whole multiple of the input's cannot be run in "
            "column blocks; crop the scene (--extent) or"
            if k is None
            else f"even a narrow column block does not fit with tiles of {tile} px; crop the "
            "scene (--extent), use smaller tiles (--tile-size) or"
        )
        need = estimate / 1024
        shown = f"{need:.1f}" if need < 1e4 else f"{need:.3g}"
        raise InputError(
            f"a {width} px wide scene needs about {shown} GiB of memory, more "
            f"than the {budget_mib / 1024:.1f} GiB allowed; {why} raise --max-memory"
        )
    blocks = column_blocks(width, interior, context, align)
    return MemoryPlan(blocks, estimate, budget_mib)


# -- choosing the model, and the in-memory entry point ----------------------------------------
def resolve_model(
    bands: list[str], product_level: str | None, options: RunOptions, where: str = "the input"
) -> tuple[Model, str]:
    """The model asked for (checked against the bands), or the best built-in one.

    Returns:
        The model and one line that says why it was chosen.

    Raises:
        CloudsegError: For an unknown model, or bands the model needs and the input lacks.
    """
    if options.model is None:
        return choose_model(bands, product_level)
    model = load_model(options.model)
    missing = [b for b in model.card.bands if b not in bands]
    if missing:
        raise BandError(
            f"model {model.card.name} needs band(s) {', '.join(missing)} that "
            f"{where} lacks (it has {', '.join(bands)}); "
            "if they are there but unnamed, pass --bands"
        )
    return model, f"model {model.card.name} as asked"


@dataclass(frozen=True)
class RunPlan:
    """What a run does with one input, decided before the model loads.

    Attributes:
        model: The model.
        reason: One line: why this model.
        grid: The model's grid over the input.
        blocks: ``(c0, c1, b0, b1)`` column blocks (see :func:`memory_plan`); one block
            spanning the input when it fits in memory, or when no budget was given.
        tiling: The tile size and overlap, resolved once from the options and the card
            (:meth:`RunOptions.tiling`): what the runner, the tiles and the tags use.
    """

    model: Model
    reason: str
    grid: ModelGrid
    blocks: list[tuple[int, int, int, int]]
    tiling: tuple[int, int]

    @property
    def card(self) -> ModelCard:
        """The model's card."""
        return self.model.card

    def runner(self, options: RunOptions, keep: bool = False) -> Runner:
        """The runner :func:`.runners.plan_runner` chooses for the options.

        Args:
            options: ``device``, ``precision`` and ``runtime`` apply (the tile size is the
                plan's).
            keep: Keep it loaded for the next run in this thread (a batch worker).
        """
        make = shared_runner if keep else create_runner
        return make(self.model, options.device, options.precision, options.runtime, self.tiling[0])


def plan_run(
    options: RunOptions,
    bands: list[str],
    product_level: str | None,
    shape: tuple[int, int],
    pixel_m: float | None,
    where: str,
    budget_mib: float | None = None,
    gradients: bool = False,
) -> RunPlan:
    """Choose the model, its grid and the column blocks for an input (nothing loads).

    Args:
        options: The run's options (model, tiling, resolution).
        bands: The input's band names.
        product_level: The input's level, if known.
        shape: ``(height, width)`` of the input grid.
        pixel_m: The input's pixel size in metres (None where unknown).
        where: What to call the input in an error (its path, or "the image").
        budget_mib: The memory budget (see :func:`memory_plan`); None: one block.
        gradients: The run computes the network's gradients (``explain``): the budget
            counts what they hold (:func:`gradient_memory_mib`).

    Raises:
        CloudsegError: For a model that does not fit, a bad tiling, a grid the model
            cannot run on, or a budget too small.
    """
    height, width = shape
    model, reason = resolve_model(bands, product_level, options, Path(where).name)
    card = model.card
    tiling = options.tiling(card)  # resolved, and checked, before anything loads
    grid = ModelGrid.choose(height, width, pixel_m, card.resolution_m, options.resolution, where)
    blocks = [(0, width, 0, width)]
    if budget_mib is not None:
        extra = gradient_memory_mib(card, options) if gradients else 0.0
        if options.shadow_geometry:
            extra += shadow_memory_mib(height, width, len(card.classes))
        memory = memory_plan(width, card, grid, options, budget_mib, extra)
        blocks = memory.blocks
        if len(blocks) > 1:
            logger.info(
                "one pass over %d columns would need about %.1f GiB (budget %.1f GiB): "
                "running in %d column blocks",
                width,
                memory.estimate_mib / 1024,
                memory.budget_mib / 1024,
                len(blocks),
            )
    return RunPlan(model, reason, grid, blocks, tiling)


def plan_reader(
    reader: SceneReader,
    options: RunOptions,
    budget_mib: float | None = None,
    gradients: bool = False,
) -> RunPlan:
    """:func:`plan_run` for a scene read from files (see :func:`open_input`)."""
    return plan_run(
        options,
        reader.bands,
        reader.product_level,
        (reader.height, reader.width),
        reader.resolution_m,
        str(reader.path),
        budget_mib,
        gradients,
    )


def _block_progress(progress: ProgressCallback, index: int, count: int) -> ProgressCallback:
    """Progress of column block ``index`` of ``count`` as a share of the whole run."""
    if count == 1:
        return progress

    def report(percent: float, message: str) -> None:
        progress((index * 98.0 + percent) / count, f"column block {index + 1}/{count}, {message}")

    return report


def reader_rows(
    reader: SceneReader,
    plan: RunPlan,
    runner: Runner,
    options: RunOptions,
    progress: ProgressCallback = no_progress,
    cancelled: CancelCallback = never_cancelled,
    meter: RunMeter | None = None,
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Stream a scene read from files through the model, column block by column block.

    Each block is run with the context its tiles need and cropped to its own columns,
    so the rows are those of one pass over the whole width (see :func:`memory_plan`).

    Yields:
        ``(row, col, probabilities, nodata)``: input rows ``row..row + n`` of the
        columns ``col..col + width``, as :func:`scene_rows` yields them; all rows of a
        block come before the next block's.
    """
    count = len(plan.blocks)
    for index, (c0, c1, b0, b1) in enumerate(plan.blocks):
        scene = ReaderScene(reader, b0, b1 - b0)
        grid = plan.grid if count == 1 else plan.grid.of_width(b1 - b0)
        block_progress = _block_progress(progress, index, count)
        rows = scene_rows(
            scene, grid, plan.card, runner, options, block_progress, cancelled, meter,
            tiling=plan.tiling,
        )  # fmt: skip
        for row, probs, nodata in rows:
            yield row, c0, probs[:, :, c0 - b0 : c1 - b0], nodata[:, c0 - b0 : c1 - b0]


@dataclass
class Prediction:
    """Blended class probabilities of a whole input, in memory.

    Attributes:
        probabilities: ``(classes, rows, cols)`` float32 on the input grid.
        nodata: ``(rows, cols)``: pixels without data.
        model: The model's card.
        runner: What ran the model (runtime, device, precision).
        model_reason: Why this model.
        cloud_threshold: See :class:`RunOptions`.
        shadow_threshold: See :class:`RunOptions`.
    """

    probabilities: np.ndarray
    nodata: np.ndarray
    model: ModelCard
    runner: str
    model_reason: str
    #: The run's cloud and shadow thresholds (None: argmax), as ``segment`` applies them.
    cloud_threshold: float | None = None
    shadow_threshold: float | None = None
    #: What the shadow geometry step did (:class:`.shadow.GeometryReport`); None: off.
    shadow_geometry: dict | None = None

    def classes(self) -> np.ndarray:
        """The class raster: uint8 class values, :data:`NODATA` where no data.

        The classes ``segment`` writes for the same input and options (the one class
        decision, :func:`.decision.decide`, with the run's thresholds).
        """
        return decide(
            self.probabilities,
            self.model.classes,
            self.cloud_threshold,
            self.shadow_threshold,
            self.nodata,
        )


def predict(
    scene: Scene | SceneReader,
    options: RunOptions | None = None,
    runner: Runner | None = None,
    progress: ProgressCallback = no_progress,
    cancelled: CancelCallback = never_cancelled,
) -> Prediction:
    """Class probabilities of a whole input, in memory, exactly as ``segment`` computes them.

    For inputs that fit in memory (chips, windows, evaluation scenes); ``segment``
    streams scenes of any size to files.

    Args:
        scene: An :class:`ArrayScene` (reflectance in memory) or a scene reader (open it
            with ``open_scene`` and ``crop`` it to a window).
        options: Model, runtime and tiling; ``bands``, ``scale`` and ``offset`` apply
            when the reader is opened, not here.
        runner: A runner made for the model already (saves loading it per input).
        progress: Called with (percent, message).
        cancelled: Polled once per batch of tiles.

    Raises:
        CloudsegError: For a model that does not fit, bad options, or cancellation.
    """
    options = options or RunOptions()
    if isinstance(scene, SceneReader):
        plan = plan_reader(scene, options, options.max_memory_mib)
    elif isinstance(scene, ArrayScene):
        plan = plan_run(
            options,
            scene.bands,
            options.product_level,
            (scene.height, scene.width),
            scene.resolution_m,
            "the image",
            options.max_memory_mib,  # refuses tiles that cannot fit at all
        )
        # The image is in memory already: its streaming buffers are smaller than it.
        plan = replace(plan, blocks=[(0, scene.width, 0, scene.width)])
    else:
        raise InputError(f"cannot predict on a {type(scene).__name__}; give an ArrayScene")
    card = plan.card
    if runner is None:
        runner = plan.runner(options)
    probabilities = np.empty((len(card.classes), scene.height, scene.width), dtype=np.float32)
    nodata = np.empty((scene.height, scene.width), dtype=bool)
    if isinstance(scene, SceneReader):
        rows = reader_rows(scene, plan, runner, options, progress, cancelled)
    else:
        rows = (
            (row, 0, probs, missing)
            for row, probs, missing in scene_rows(
                scene, plan.grid, card, runner, options, progress, cancelled, tiling=plan.tiling
            )
        )
    geometry = shadow_geometry(scene, card, options)
    if geometry is not None:
        rows = geometry.rows(rows, progress, cancelled)
    for row, col, probs, missing in rows:
        height, width = probs.shape[1:]
        probabilities[:, row : row + height, col : col + width] = probs
        nodata[row : row + height, col : col + width] = missing
    progress(100.0, "done")
    return Prediction(
        probabilities,
        nodata,
        card,
        runner.description,
        plan.reason,
        options.cloud_threshold,
        options.shadow_threshold,
        geometry.report.to_dict() if geometry is not None else None,
    )

"""The outputs of one segmentation run, published together or not at all.

:class:`SegmentOutputs` is the run's one writer: the class raster and the probabilities
are written block row by block row under hidden temporary names, polygons are traced
from the temporary class raster, the rasters become Cloud-Optimized GeoTIFFs, and only
then is every output renamed onto its target: the statistics and the STAC Item before
the mask, which comes last. A failure or cancel at any moment removes every temporary
file and leaves earlier results untouched.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import atomic
from .._version import __version__
from ..callbacks import CancelCallback, ProgressCallback
from ..errors import CancelledError
from ..models.cards import ModelCard
from ..raster.cog import BlockRowWriter, block_profile, to_cog
from ..raster.reader import SceneReader, scene_key
from .decision import NODATA, decide
from .options import SegmentOptions
from .resample import normalized_entropy
from .runners import Runner

if TYPE_CHECKING:
    from .engine import RunPlan


def provenance_tags(
    plan: RunPlan, reader: SceneReader, runner: Runner, options: SegmentOptions
) -> dict[str, str]:
    """The ``CLOUDSEG_*`` tags every output carries: what made it, from what, and how."""
    model, card, grid = plan.model, plan.card, plan.grid
    tile, overlap = plan.tiling
    return {
        "CLOUDSEG_VERSION": __version__,
        "CLOUDSEG_SCENE": scene_key(reader.path),
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
        "CLOUDSEG_PRODUCT_LEVEL": reader.level.describe(),
        "CLOUDSEG_RUN_RESOLUTION": (
            f"{card.resolution_m:g} m (model card; preview)"
            if options.resolution == "preview"
            else "input grid"
        ),
        "CLOUDSEG_TILING": json.dumps({"tile_size": tile, "overlap": overlap}),
        "CLOUDSEG_RESAMPLING_FACTOR": f"{grid.factor:g}",
        "CLOUDSEG_TTA": str(options.tta),
        "CLOUDSEG_DECISION": (
            "argmax of the blended probabilities"
            if options.cloud_threshold is None and options.shadow_threshold is None
            else json.dumps(
                {
                    "cloud_threshold": options.cloud_threshold,
                    "shadow_threshold": options.shadow_threshold,
                }
            )
        ),
        "CLOUDSEG_RUNNER": runner.description,
        "CLOUDSEG_DEVICE": runner.device,
        "CLOUDSEG_CREATED": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


class SegmentOutputs:
    """Writes a run's outputs under temporary names; publishes them together on success.

    Use as a context manager: :meth:`write` block rows, then :meth:`finish_rasters`,
    :meth:`trace_polygons`, :meth:`stage`, and :meth:`publish`. Leaving the block by
    an exception (a failure, a cancel, Ctrl-C) removes everything written.

    Args:
        output: The class raster's final path.
        options: The run's options (which other outputs, where).
        profile: ``width``, ``height``, ``crs`` and ``transform`` of the input grid.
        card: The model's card (classes, names, colours).
        tags: Provenance tags for every raster.
    """

    def __init__(
        self,
        output: Path,
        options: SegmentOptions,
        profile: dict[str, Any],
        card: ModelCard,
        tags: dict[str, str],
    ) -> None:
        self.output, self.options, self.profile = output, options, profile
        self.card, self.tags = card, tags
        classes = len(card.classes)
        #: Valid pixels per class, then nodata pixels.
        self.counts = np.zeros(classes + 1, dtype=np.int64)
        self._classes_tmp = atomic.temporary_sibling(output)
        self._probs_tmp = (
            atomic.temporary_sibling(options.probabilities) if options.probabilities else None
        )
        self._polygons_tmp = (
            atomic.temporary_sibling(options.polygons, "part.gpkg") if options.polygons else None
        )
        self._uncertainty_tmp = (
            atomic.temporary_sibling(options.uncertainty) if options.uncertainty else None
        )
        self._valid_tmp = atomic.temporary_sibling(options.valid) if options.valid else None
        #: Pixels of the valid mask: usable, unusable, nodata (when one is written).
        self.valid_counts: dict[str, int] = {}
        self._staged: list[tuple[Path, Path]] = []  # (temporary, final), in publishing order
        self._classes_staged: Path | None = None
        self._datasets: list[Any] = []
        self._writers: list[BlockRowWriter] = []  # of the current column block
        self._col_off: int | None = None

    # -- the context ------------------------------------------------------------------------
    def __enter__(self) -> SegmentOutputs:
        import rasterio

        classes = len(self.card.classes)
        rasters = [(self._classes_tmp, 1)]
        rasters += [(self._probs_tmp, classes)] if self._probs_tmp else []
        rasters += [(self._uncertainty_tmp, 1)] if self._uncertainty_tmp else []
        try:
            for path, count in rasters:
                dataset = rasterio.open(
                    path, "w", **block_profile(self.profile, count, "uint8", NODATA)
                )
                self._datasets.append(dataset)
        except BaseException:
            self._discard()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is not None:
            self._discard()

    def _discard(self) -> None:
        """Close and remove everything written so far."""
        self._close_datasets()
        temporaries = [
            self._classes_tmp,
            self._probs_tmp,
            self._polygons_tmp,
            self._uncertainty_tmp,
            self._valid_tmp,
        ]
        temporaries += [self._classes_staged, *(tmp for tmp, _ in self._staged)]
        atomic.remove(*(p for p in temporaries if p))
        self._staged.clear()

    def _close_datasets(self) -> None:
        for dataset in self._datasets:
            dataset.close()
        self._datasets.clear()

    # -- writing ------------------------------------------------------------------------------
    def columns(self, col_off: int, width: int) -> None:
        """Write the next rows into columns ``col_off..col_off + width``: a column block.

        :meth:`write` calls it when its ``col_off`` changes; otherwise call it before
        the first :meth:`write` (with the whole width for a run in one pass). The block
        before must be complete.
        """
        for writer in self._writers:
            writer.close()
        self._writers = [BlockRowWriter(ds, col_off=col_off, width=width) for ds in self._datasets]
        self._col_off = col_off

    def write(
        self, row: int, probs: np.ndarray, nodata: np.ndarray, col_off: int | None = None
    ) -> None:
        """Write input rows ``row..`` of ``(classes, n, width)`` probabilities.

        Args:
            row: The first input row.
            probs: Blended probabilities; the classes come from the one class decision
                with the run's thresholds.
            nodata: ``(n, width)``: pixels without data.
            col_off: The first column; a new value starts the next column block (see
                :meth:`columns`). None: the current block.
        """
        if col_off is not None and col_off != self._col_off:
            self.columns(col_off, probs.shape[2])
        options = self.options
        classes = decide(
            probs, self.card.classes, options.cloud_threshold, options.shadow_threshold, nodata
        )
        self._writers[0].write(row, classes[None])
        n_classes = probs.shape[0]
        valid = np.bincount(classes[~nodata].ravel(), minlength=n_classes)[:n_classes]
        self.counts[:n_classes] += valid
        self.counts[-1] += int(nodata.sum())
        if self._probs_tmp is not None:
            percent = np.rint(np.clip(probs, 0, 1) * 100).astype(np.uint8)
            percent[:, nodata] = NODATA
            self._writers[1].write(row, percent)
        if self._uncertainty_tmp is not None:
            doubt = np.rint(normalized_entropy(probs) * 100).astype(np.uint8)
            doubt[nodata] = NODATA
            self._writers[-1].write(row, doubt[None])

    def finish_rasters(self) -> None:
        """Check every row was written, add colours, names and tags, and close the rasters."""
        for writer in self._writers:
            writer.close()
        card, classes_ds = self.card, self._datasets[0]
        colours = {c.value: c.rgba() for c in card.classes} | {NODATA: (0, 0, 0, 0)}
        classes_ds.write_colormap(1, colours)
        classes_ds.set_band_description(1, "class")  # the names: CLOUDSEG_CLASSES, colours
        classes_ds.update_tags(**self.tags)
        if self._probs_tmp is not None:
            from rasterio.enums import ColorInterp

            probs_ds = self._datasets[1]
            # Not red, green, blue (GDAL's guess for 3 byte bands): GIS legends would say so.
            probs_ds.colorinterp = [ColorInterp.undefined] * len(card.classes)
            for c in card.classes:
                probs_ds.set_band_description(c.value + 1, f"P({c.name}) %")
            probs_ds.update_tags(**self.tags, CLOUDSEG_PROBABILITY_SCALE="percent 0-100")
        if self._uncertainty_tmp is not None:
            doubt_ds = self._datasets[-1]
            doubt_ds.set_band_description(1, "uncertainty %")
            doubt_ds.update_tags(
                **self.tags,
                CLOUDSEG_UNCERTAINTY="normalized entropy of the blended class probabilities, "
                "percent 0-100 (0: certain, 100: all classes equally likely)",
            )
        self._close_datasets()

    def make_valid(
        self, pixel_m: float | None, progress: ProgressCallback, cancelled: CancelCallback
    ) -> None:
        """Write the valid-pixel mask of the finished class raster (if asked)."""
        if self._valid_tmp is None:
            return
        from .valid import buffer_pixels, unusable_classes, write_valid

        if cancelled():
            raise CancelledError("cancelled; no output was written")
        progress(98.2, "valid pixels: removing cloud and shadow with their buffers")
        radii = {
            "cloud": buffer_pixels(self.options.buffer_cloud_m, pixel_m),
            "shadow": buffer_pixels(self.options.buffer_shadow_m, pixel_m),
        }
        self.valid_counts = write_valid(
            self._classes_tmp, self._valid_tmp, unusable_classes(list(self.card.classes)), radii
        )
        import rasterio

        with rasterio.open(self._valid_tmp, "r+") as dst:
            dst.update_tags(
                **self.tags,
                CLOUDSEG_VALID="1 usable, 0 cloud or cloud shadow or within their buffer, "
                "255 no data",
                CLOUDSEG_BUFFERS_M=json.dumps(
                    {"cloud": self.options.buffer_cloud_m, "shadow": self.options.buffer_shadow_m}
                ),
            )

    def trace_polygons(
        self, progress: ProgressCallback, cancelled: CancelCallback
    ) -> dict[str, int]:
        """Trace the cloud and shadow polygons of the finished class raster (if asked)."""
        if self._polygons_tmp is None:
            return {}
        from ..raster.vectorize import write_polygons

        if cancelled():
            raise CancelledError("cancelled; no output was written")
        progress(98.5, "tracing cloud and shadow polygons")
        return write_polygons(
            self._classes_tmp, self._polygons_tmp, min_area_m2=self.options.min_polygon_area_m2
        )

    def stage(self, progress: ProgressCallback, cancelled: CancelCallback) -> None:
        """Turn the rasters into Cloud-Optimized GeoTIFFs, still under temporary names.

        Raises:
            CancelledError: If ``cancelled()`` says so before the work starts.
        """
        if cancelled():
            raise CancelledError("cancelled; no output was written")
        progress(99.0, "writing Cloud-Optimized GeoTIFF")
        if self._probs_tmp is not None and self.options.probabilities is not None:
            staged = to_cog(self._probs_tmp, self.options.probabilities, "AVERAGE")
            self._staged.append((staged, self.options.probabilities))
        if self._uncertainty_tmp is not None and self.options.uncertainty is not None:
            staged = to_cog(self._uncertainty_tmp, self.options.uncertainty, "AVERAGE")
            self._staged.append((staged, self.options.uncertainty))
        if self._polygons_tmp is not None and self.options.polygons is not None:
            self._staged.append((self._polygons_tmp, self.options.polygons))
        if self._valid_tmp is not None and self.options.valid is not None:
            staged = to_cog(self._valid_tmp, self.options.valid, "NEAREST")
            self._staged.append((staged, self.options.valid))
        self._classes_staged = to_cog(self._classes_tmp, self.output, "NEAREST")

    def publish(
        self,
        stats: dict[str, Any] | None,
        cancelled: CancelCallback,
        item: Callable[[dict[Path, Path]], bytes] | None = None,
    ) -> None:
        """Rename every staged output onto its target: the statistics, the Item, the mask last.

        Args:
            stats: The statistics JSON (written where ``options.stats`` says).
            cancelled: Polled once more before anything is renamed.
            item: Makes the STAC Item's JSON (written where ``options.stac_item`` says)
                from ``{final path: staged path}`` of every other output, complete.

        Raises:
            CancelledError: If ``cancelled()`` says so before anything is renamed.
        """
        if stats is not None and self.options.stats is not None:
            stats_tmp = atomic.temporary_sibling(self.options.stats)
            self._staged.append((stats_tmp, self.options.stats))
            stats_tmp.write_text(json.dumps(stats, indent=2), encoding="utf-8")
        assert self._classes_staged is not None, "stage() first"
        self._staged.append((self._classes_staged, self.output))
        if item is not None and self.options.stac_item is not None:
            item_tmp = atomic.temporary_sibling(self.options.stac_item)
            self._staged.insert(-1, (item_tmp, self.options.stac_item))  # the mask stays last
            item_tmp.write_bytes(item({final: tmp for tmp, final in self._staged}))
        if cancelled():  # the last chance before anything looks like a result
            raise CancelledError("cancelled; no output was written")
        atomic.publish(self._staged)
        self._staged.clear()
        self._classes_staged = None

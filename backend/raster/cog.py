"""Cloud-Optimized GeoTIFF output: tiled block-row writing, then publishing as a COG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import cleanup_on_failure, remove, temporary_sibling


def block_profile(
    profile: dict[str, Any], count: int, dtype: str, nodata: float | None
) -> dict[str, Any]:
    """Profile of a tiled, compressed GeoTIFF written block row by block row."""
    return {
        "driver": "GTiff", "width": profile["width"], "height": profile["height"],
        "crs": profile["crs"], "transform": profile["transform"], "count": count,
        "dtype": dtype, "nodata": nodata, "tiled": True, "blockxsize": 512,
        "blockysize": 512, "compress": "deflate", "predictor": 2 if dtype != "uint8" else 1,
        "BIGTIFF": "IF_SAFER", "sparse_ok": False,
    }  # fmt: skip


def to_cog(source: Path, target: Path, overview_resampling: str) -> Path:
    """Copy a finished GeoTIFF into a Cloud-Optimized GeoTIFF beside ``target``.

    The COG gets a hidden temporary name; the caller renames it onto ``target`` when
    every output of the run is ready (or removes it). ``source`` is removed.

    Args:
        source: The finished temporary GeoTIFF.
        target: Where the COG will go.
        overview_resampling: ``"NEAREST"`` for classes, ``"AVERAGE"`` for probabilities.

    Returns:
        The temporary COG.
    """
    import rasterio.shutil

    staged = temporary_sibling(target, "cog")
    with cleanup_on_failure(staged):
        rasterio.shutil.copy(
            str(source),
            str(staged),
            driver="COG",
            COMPRESS="DEFLATE",
            BLOCKSIZE=512,
            OVERVIEW_RESAMPLING=overview_resampling,
            BIGTIFF="IF_SAFER",
            NUM_THREADS="ALL_CPUS",
        )
    remove(source)
    return staged


class BlockRowWriter:
    """Collects row chunks of a tiled GeoTIFF and writes whole block rows at once.

    Writing a chunk that covers only part of a block makes GDAL keep the half-filled
    block in its cache, or, once the cache is full, compress it, write it and read it
    back for the next chunk. Buffering until a block row is complete avoids both, so
    the block cache can stay small whatever the size of the scene.
    """

    def __init__(
        self,
        dataset: Any,
        block_rows: int | None = None,
        col_off: int = 0,
        width: int | None = None,
    ) -> None:
        """Buffer rows for ``dataset`` (open for writing); blocks of ``block_rows`` rows.

        ``col_off`` and ``width`` restrict the writer to a band of columns (a scene too
        wide for memory is written in column blocks, each by its own writer).
        """
        self.dataset = dataset
        self.block_rows = block_rows or dataset.block_shapes[0][0]
        self.col_off = col_off
        self.width = dataset.width - col_off if width is None else width
        self._chunks: list[np.ndarray] = []
        self._first = 0
        self._buffered = 0

    def write(self, row: int, data: np.ndarray) -> None:
        """Add ``data`` (``(bands, n, width)``) for rows ``row..row + n``; rows come in order."""
        from rasterio.windows import Window

        if row != self._first + self._buffered:
            raise ValueError(f"rows must come in order: expected {self._first + self._buffered}")
        self._chunks.append(data)
        self._buffered += data.shape[1]
        end = self._first + self._buffered
        complete = end - end % self.block_rows if end < self.dataset.height else end
        if complete <= self._first:
            return
        rows = np.concatenate(self._chunks, axis=1) if len(self._chunks) > 1 else data
        n = complete - self._first
        self.dataset.write(rows[:, :n], window=Window(self.col_off, self._first, self.width, n))
        rest = rows[:, n:]
        self._chunks = [rest] if rest.shape[1] else []
        self._first, self._buffered = complete, rest.shape[1]

    def close(self) -> None:
        """Check that every row was written."""
        if self._buffered or self._first != self.dataset.height:
            raise ValueError(f"only {self._first} of {self.dataset.height} rows were written")

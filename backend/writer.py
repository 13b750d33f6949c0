"""Write results safely: temporary names, renamed only when complete, as COGs."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import OutputExistsError


def check_target(path: Path, overwrite: bool) -> None:
    """Refuse to replace an existing output unless asked.

    Raises:
        OutputExistsError: If ``path`` exists and ``overwrite`` is False.
    """
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass --overwrite to replace it")
    if not path.parent.is_dir():
        raise OutputExistsError(f"the folder of {path} does not exist; create it first")


def temporary_sibling(path: Path, tag: str = "part") -> Path:
    """A hidden name beside ``path`` that no one mistakes for a result."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.{tag}")


@contextlib.contextmanager
def cleanup_on_failure(*paths: Path) -> Iterator[None]:
    """Remove ``paths`` (and GDAL side files) if the block raises, then re-raise."""
    try:
        yield
    except BaseException:
        for path in paths:
            for candidate in (
                path,
                path.with_name(path.name + ".aux.xml"),
                path.with_name(path.name + ".ovr"),
            ):
                with contextlib.suppress(FileNotFoundError):
                    candidate.unlink()
        raise


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


def publish_cog(source: Path, target: Path, overview_resampling: str) -> None:
    """Copy a finished GeoTIFF into a Cloud-Optimized GeoTIFF and rename it to ``target``.

    The rename is atomic; ``source`` is removed afterwards.

    Args:
        source: The finished temporary GeoTIFF.
        target: The final path (replaced if it exists).
        overview_resampling: ``"NEAREST"`` for classes, ``"AVERAGE"`` for probabilities.
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
        staged.replace(target)
    for leftover in (source, source.with_name(source.name + ".aux.xml")):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()


class BlockRowWriter:
    """Collects row chunks of a tiled GeoTIFF and writes whole block rows at once.

    Writing a chunk that covers only part of a block makes GDAL keep the half-filled
    block in its cache, or, once the cache is full, compress it, write it and read it
    back for the next chunk. Buffering until a block row is complete avoids both, so
    the block cache can stay small whatever the size of the scene.
    """

    def __init__(self, dataset: Any, block_rows: int | None = None) -> None:
        """Buffer rows for ``dataset`` (open for writing); blocks of ``block_rows`` rows."""
        self.dataset = dataset
        self.block_rows = block_rows or dataset.block_shapes[0][0]
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
        self.dataset.write(rows[:, :n], window=Window(0, self._first, self.dataset.width, n))
        rest = rows[:, n:]
        self._chunks = [rest] if rest.shape[1] else []
        self._first, self._buffered = complete, rest.shape[1]

    def close(self) -> None:
        """Check that every row was written."""
        if self._buffered or self._first != self.dataset.height:
            raise ValueError(f"only {self._first} of {self.dataset.height} rows were written")

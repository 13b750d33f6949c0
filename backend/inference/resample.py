"""Resampling between the input grid and the model grid, as pure numpy: no I/O, no models.

The model may run on a coarser grid than the input (``--resolution preview``): the
input is averaged down (NaN-aware block means for whole factors, as GDAL's average
resampling), and the blended probabilities come back by bilinear interpolation, block
row by block row, so memory does not grow with the scene.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..choices import resolution_choice
from ..errors import InputError


@dataclass(frozen=True)
class ModelGrid:
    """The grid the model runs on: the input grid scaled by ``factor`` (model px / input px)."""

    factor: float
    height: int
    width: int

    @classmethod
    def choose(
        cls,
        height: int,
        width: int,
        pixel_size_m: float | None,
        model_resolution_m: float,
        resolution: str,
        where: str = "the input",
    ) -> ModelGrid:
        """Choose the model grid for an input of ``height`` x ``width`` pixels.

        Args:
            height: Input rows.
            width: Input columns.
            pixel_size_m: The input's pixel size in metres (None where unknown).
            model_resolution_m: The model card's resolution.
            resolution: ``"native"`` (the input's grid) or ``"preview"`` (the card's).
            where: What to call the input in an error.

        Raises:
            InputError: If the card's resolution is asked for but the input's is unknown.
        """
        factor = 1.0
        if resolution_choice(resolution) == "preview":
            if pixel_size_m is None:
                raise InputError(
                    f"{where} has no projected CRS, so its pixel size in metres is "
                    f"unknown; georeference it or leave out --resolution preview"
                )
            factor = model_resolution_m / pixel_size_m
            if abs(factor - 1) < 0.02:
                factor = 1.0
        return cls(factor, math.ceil(height / factor), math.ceil(width / factor))

    def of_width(self, width: int) -> ModelGrid:
        """The same grid over ``width`` input columns (a column block of the scene)."""
        return ModelGrid(self.factor, self.height, math.ceil(width / self.factor))

    @property
    def block_factor(self) -> int | None:
        """The factor as a whole number when it is one above 1 (block means), else None."""
        k = round(self.factor)
        return k if self.factor > 1 and abs(self.factor - k) < 1e-9 else None


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


class RowMasks:
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


def normalized_entropy(probs: np.ndarray) -> np.ndarray:
    """The model's doubt per pixel: entropy of the class probabilities over its maximum.

    0 where one class has all the probability, 1 where every class is equally likely.

    Args:
        probs: ``(classes, rows, cols)`` probabilities (summing to 1 per pixel).

    Returns:
        ``(rows, cols)`` float32 in [0, 1].
    """
    p = np.clip(probs, 1e-7, 1.0)
    entropy = -(p * np.log(p)).sum(axis=0)
    return np.clip(entropy / np.log(probs.shape[0]), 0.0, 1.0).astype(np.float32)

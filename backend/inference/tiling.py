"""Tiling and blending as pure geometry and arithmetic: no I/O, no models.

Tiles cover the scene at a fixed stride, ``overlap`` pixels shared between neighbours,
from a mirrored margin of a fifth of a tile around the scene (:class:`TileLayout`);
the last tile of a row or column may reach past the margin into more mirrored padding.
Overlapping predictions are blended with weights that fall smoothly to a small
positive floor at tile edges and are divided by their sum, so a model that predicts
a constant gives exactly that constant, with no seam at tile edges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

#: Weight at the very edge of a tile, relative to 1 at its centre (never 0, so border
#: pixels of the scene, covered by one tile only, keep a defined value).
EDGE_WEIGHT = 1e-3


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles along one axis.

    Args:
        length: Pixels along the axis.
        tile: Tile size.
        overlap: Minimum pixels shared by neighbouring tiles (``< tile``).

    Returns:
        Offsets ``0, step, 2 * step...`` (``step = tile - overlap``); the last tile may
        reach past ``length`` (callers pad by mirroring), so the grid of tile positions
        does not depend on the scene's size.
    """
    if length <= tile:
        return [0]
    step = tile - overlap
    count = math.ceil((length - tile) / step) + 1
    return [i * step for i in range(count)]


def scene_margin(tile: int) -> int:
    """The mirrored margin around the scene: a fifth of a tile.

    Border pixels are then predicted with context, not at the weak edge of a tile (as
    ukis-csmask does).
    """
    return tile // 5


def padded_extent(length: int, margin: int, tile: int, overlap: int) -> int:
    """The extent tiles span along an axis of ``length`` with a mirrored ``margin`` each side.

    Tiles start at a fixed stride from the leading margin; a tile that would lie wholly in
    the trailing margin (possible when the overlap is smaller than the margin) adds
    nothing and is left out, and the extent ends with the last tile that touches the
    scene, or at the margin's end.
    """
    full = length + 2 * margin
    starts = [s for s in tile_starts(full, tile, overlap) if s < margin + length]
    return min(full, starts[-1] + tile)


def blend_weights(tile: int, overlap: int) -> np.ndarray:
    """Separable 2-D blending window, 1 in the centre.

    A raised-cosine ramp of width ``overlap`` at each edge falls to :data:`EDGE_WEIGHT`.

    Returns:
        float32 array of shape ``(tile, tile)``.
    """
    ramp = np.ones(tile, dtype=np.float64)
    if overlap > 0:
        x = (np.arange(overlap) + 0.5) / overlap
        taper = EDGE_WEIGHT + (1 - EDGE_WEIGHT) * 0.5 * (1 - np.cos(np.pi * x))
        ramp[:overlap] = taper
        ramp[-overlap:] = taper[::-1]
    return np.outer(ramp, ramp).astype(np.float32)


@dataclass(frozen=True)
class TileGrid:
    """The tiles covering a ``height`` x ``width`` grid, in row-major order."""

    height: int
    width: int
    tile: int
    overlap: int

    @property
    def rows(self) -> list[int]:
        """Start rows of the tile rows."""
        return tile_starts(self.height, self.tile, self.overlap)

    @property
    def cols(self) -> list[int]:
        """Start columns of the tiles in each row."""
        return tile_starts(self.width, self.tile, self.overlap)

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)


class RowBlender:
    """Blends tile predictions one tile row at a time in a buffer of ``tile`` rows.

    Feed each tile row with :meth:`add`, then :meth:`finish_row` returns the rows that
    no later tile touches (normalised by the summed weights) and shifts the buffer.
    Memory is ``channels x tile x width`` floats, whatever the scene's height.
    """

    def __init__(self, grid: TileGrid, channels: int) -> None:
        self.grid = grid
        self.channels = channels
        self.weights = blend_weights(grid.tile, grid.overlap)
        buffer_rows = grid.tile
        self._sum = np.zeros((channels, buffer_rows, grid.width), dtype=np.float32)
        self._wsum = np.zeros((buffer_rows, grid.width), dtype=np.float32)
        self._row_starts = grid.rows
        self._index = 0  # index of the tile row being filled
        self._base = 0  # grid row held in buffer row 0

    def add(self, col: int, prediction: np.ndarray) -> None:
        """Add one tile's prediction at column ``col`` of the current tile row.

        Args:
            col: Start column of the tile.
            prediction: ``(channels, tile, tile)`` probabilities; rows/cols past the
                grid (padding) are ignored.
        """
        y = self._row_starts[self._index] - self._base
        h = min(self.grid.tile, self.grid.height - self._row_starts[self._index])
        w = min(self.grid.tile, self.grid.width - col)
        weights = self.weights[:h, :w]
        self._sum[:, y : y + h, col : col + w] += prediction[:, :h, :w] * weights
        self._wsum[y : y + h, col : col + w] += weights

    def finish_row(self) -> tuple[int, np.ndarray]:
        """Close the current tile row.

        Returns:
            ``(first_row, blended)``: the grid row where the finished block starts and
            the ``(channels, rows, width)`` blended values of the rows now final.
        """
        last = self._index == len(self._row_starts) - 1
        end = self.grid.height if last else self._row_starts[self._index + 1]
        count = end - self._base
        blended = self._sum[:, :count] / self._wsum[:count]
        first = self._base
        # Shift the buffer up by `count` rows and clear what enters at the bottom.
        self._sum = np.roll(self._sum, -count, axis=1)
        self._wsum = np.roll(self._wsum, -count, axis=0)
        self._sum[:, -count:] = 0
        self._wsum[-count:] = 0
        self._base = end
        self._index += 1
        return first, blended


@dataclass(frozen=True)
class TileLayout:
    """Tiles over a ``height`` x ``width`` scene with a mirrored margin around it.

    Tile rows are fed to a :class:`RowBlender` over :attr:`grid` (the scene plus its
    margins); :meth:`rows_of` says which scene rows a tile row needs, :meth:`pad`
    mirrors a strip of them out to the tile row's full extent, and :meth:`crop` turns a
    finished block of blended rows back into scene rows and columns.
    """

    height: int
    width: int
    tile: int
    overlap: int

    @property
    def margin(self) -> int:
        """The mirrored margin on each side (:func:`scene_margin`)."""
        return scene_margin(self.tile)

    @cached_property
    def grid(self) -> TileGrid:
        """The tiles over the scene and its margins."""
        margin = self.margin
        return TileGrid(
            padded_extent(self.height, margin, self.tile, self.overlap),
            padded_extent(self.width, margin, self.tile, self.overlap),
            self.tile,
            self.overlap,
        )

    def rows_of(self, tile_row: int) -> tuple[int, int, int]:
        """Where a tile row (starting at grid row ``tile_row``) lies in the scene.

        Returns:
            ``(top, r0, r1)``: its first scene row (negative inside the top margin) and
            the scene rows ``r0..r1`` it covers.
        """
        top = tile_row - self.margin
        return top, max(top, 0), min(top + self.tile, self.height)

    def pad(self, strip: np.ndarray, top: int, r0: int, r1: int) -> np.ndarray:
        """Mirror a ``(bands, r1 - r0, width)`` strip out to its tile row's extent."""
        pad_right = self.grid.cols[-1] + self.tile - self.margin - self.width
        return np.pad(
            strip,
            ((0, 0), (r0 - top, top + self.tile - r1), (self.margin, pad_right)),
            mode="symmetric",
        )

    def crop(self, first: int, block: np.ndarray) -> tuple[int, np.ndarray] | None:
        """Scene rows of a blended block from grid row ``first``: ``(row, block)`` or None."""
        margin = self.margin
        lo, hi = max(first, margin), min(first + block.shape[1], margin + self.height)
        if hi <= lo:
            return None
        return lo - margin, block[:, lo - first : hi - first, margin : margin + self.width]


def column_blocks(
    width: int, interior: int, context: int, align: int
) -> list[tuple[int, int, int, int]]:
    """Split a scene too wide for memory into blocks of columns, each run on its own.

    Each block writes its interior columns ``c0..c1`` and reads ``b0..b1``: ``context``
    columns more on each side (clipped to the scene), with ``b0`` a multiple of
    ``align``. With ``context`` at least a tile and ``align`` the tile stride (both in
    input pixels), every interior pixel is covered by exactly the tiles, with the same
    data and weights, that cover it in a run over the whole width: the result is the same.

    Returns:
        ``(c0, c1, b0, b1)`` per block, left to right.
    """
    blocks = []
    for c0 in range(0, width, interior):
        c1 = min(c0 + interior, width)
        b0 = max(0, (c0 - context) // align * align)
        blocks.append((c0, c1, b0, min(width, c1 + context)))
    return blocks

"""Tiling geometry and blending: full coverage, and no seams."""

import numpy as np
import pytest

from cloudseg.backend.inference.tiling import (
    EDGE_WEIGHT,
    RowBlender,
    TileGrid,
    blend_weights,
    padded_extent,
    tile_starts,
)


@pytest.mark.parametrize("length", [1, 100, 256, 257, 461, 1000, 4096])
def test_tiles_cover_every_pixel_with_the_overlap(length):
    tile, overlap = 256, 51
    starts = tile_starts(length, tile, overlap)
    covered = np.zeros(starts[-1] + tile, dtype=int)
    for s in starts:
        covered[s : s + tile] += 1
    assert covered[:length].min() >= 1
    assert starts[0] == 0
    assert starts[-1] < length and (len(starts) == 1 or starts[-1] + tile - length < tile - overlap)
    assert (np.diff(starts) == tile - overlap).all()  # a fixed stride: neighbours share `overlap`


@pytest.mark.parametrize("overlap", [0, 16, 32, 52, 128])
@pytest.mark.parametrize("length", [1, 200, 384, 461, 512, 1000])
def test_no_tile_lies_wholly_in_the_trailing_margin(length, overlap):
    """With an overlap below the margin, a last tile could cover only mirrored pixels."""
    tile, margin = 256, 51
    extent = padded_extent(length, margin, tile, overlap)
    starts = tile_starts(extent, tile, overlap)
    assert all(s < margin + length for s in starts)  # every tile touches the scene
    assert starts[-1] + tile >= margin + length  # and together they cover all of it
    assert extent <= length + 2 * margin
    if overlap >= margin:  # the card's geometry: the full margin, as before
        assert extent == length + 2 * margin


def test_blend_weights_are_positive_and_peak_in_the_centre():
    w = blend_weights(256, 51)
    assert w.shape == (256, 256)
    assert w.min() >= EDGE_WEIGHT**2 * 0.99
    assert w[128, 128] == 1.0
    assert np.allclose(w, w.T) and np.allclose(w, w[::-1, ::-1])


@pytest.mark.parametrize(("height", "width"), [(700, 530), (256, 256), (300, 999), (90, 1200)])
def test_constant_predictions_blend_to_exactly_that_constant(height, width):
    grid = TileGrid(height, width, 256, 51)
    blender = RowBlender(grid, 3)
    constant = np.array([0.2, 0.5, 0.3], dtype=np.float32)[:, None, None]
    rows = []
    for _ in grid.rows:
        for col in grid.cols:
            blender.add(col, np.broadcast_to(constant, (3, 256, 256)).copy())
        first, block = blender.finish_row()
        assert first == sum(r.shape[1] for r in rows)
        rows.append(block)
    out = np.concatenate(rows, axis=1)
    assert out.shape == (3, height, width)
    np.testing.assert_allclose(out, np.broadcast_to(constant, out.shape), atol=1e-6)


def test_blending_is_a_weighted_average_of_overlapping_tiles():
    grid = TileGrid(256, 400, 256, 51)  # two tiles side by side, overlapping 112 px
    blender = RowBlender(grid, 1)
    blender.add(0, np.zeros((1, 256, 256), np.float32))
    blender.add(144, np.ones((1, 256, 256), np.float32))
    _, out = blender.finish_row()
    row = out[0, 128]
    assert row[:144].max() == 0 and row[256:].min() == 1  # only one tile there
    overlap = row[144:256]
    assert (np.diff(overlap) >= -1e-6).all()  # a smooth ramp from one tile to the other
    assert overlap[0] < 0.01 and overlap[-1] > 0.99

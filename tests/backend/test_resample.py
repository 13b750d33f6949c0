"""Resampling between the input grid and the model grid: pure numpy, no I/O."""

import numpy as np
import pytest

from cloudseg.backend.errors import InputError
from cloudseg.backend.inference.resample import ModelGrid, RowMasks, Upsampler, argmax_classes


def upsample(grid, out_shape, data, splits):
    upsampler, rows, first = Upsampler(grid, *out_shape), [], 0
    for n in splits:
        for row, block in upsampler.push(first, data[:, first : first + n]):
            assert row == sum(r.shape[1] for r in rows)  # contiguous, in order
            rows.append(block)
        first += n
    return np.concatenate(rows, axis=1)


@pytest.mark.parametrize(
    ("factor", "height", "width", "out_shape"),
    [
        (3.0, 171, 171, (512, 512)),
        (1.5, 60, 40, (90, 60)),
        (0.5, 80, 64, (40, 32)),
        (6.0, 9, 7, (50, 40)),
    ],
)
def test_result_does_not_depend_on_how_rows_arrive(factor, height, width, out_shape):
    grid = ModelGrid(factor, height, width)
    data = np.random.default_rng(0).random((2, height, width), dtype=np.float32)
    whole = upsample(grid, out_shape, data, [height])
    assert whole.shape == (2, *out_shape)
    for splits in ([1] * height, [2, 1, height - 3], [height // 2, height - height // 2]):
        np.testing.assert_array_equal(upsample(grid, out_shape, data, splits), whole)


def test_bilinear_reproduces_a_linear_ramp():
    grid = ModelGrid(3.0, 10, 10)
    ramp = np.broadcast_to(np.arange(10, dtype=np.float32)[None, :, None], (1, 10, 10)).copy()
    out = upsample(grid, (30, 30), ramp, [4, 6])
    rows = np.arange(30)
    expected = np.clip((rows + 0.5) / 3 - 0.5, 0, 9)
    np.testing.assert_allclose(out[0, :, 0], expected, atol=1e-6)


def test_argmax_classes_is_argmax_with_ties_to_the_lower_class():
    rng = np.random.default_rng(0)
    probs = rng.random((3, 64, 64), dtype=np.float32).round(1)  # many ties
    np.testing.assert_array_equal(argmax_classes(probs), probs.argmax(axis=0))


def test_model_grid_follows_the_resolution_choice():
    native = ModelGrid.choose(512, 500, 10.0, 30.0, "native")
    assert (native.factor, native.height, native.width, native.block_factor) == (1, 512, 500, None)
    preview = ModelGrid.choose(512, 500, 10.0, 30.0, "preview")
    assert (preview.factor, preview.height, preview.width, preview.block_factor) == (3, 171, 167, 3)
    uneven = ModelGrid.choose(100, 100, 20.0, 30.0, "preview")
    assert uneven.factor == 1.5 and uneven.block_factor is None
    assert ModelGrid.choose(100, 100, 29.9, 30.0, "preview").factor == 1  # within 2 %
    with pytest.raises(InputError, match="leave out --resolution preview"):
        ModelGrid.choose(100, 100, None, 30.0, "preview", "chip.tif")


def test_row_masks_come_back_in_order_without_duplicates():
    masks = RowMasks()
    rows = np.arange(10)[:, None] % 3 == 0
    masks.add(0, rows[:6])
    masks.add(4, rows[4:])  # overlapping rows are kept once
    np.testing.assert_array_equal(masks.take(0, 3), rows[:3])
    np.testing.assert_array_equal(masks.take(3, 7), rows[3:])

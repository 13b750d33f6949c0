"""Bringing model-grid probabilities back to the input grid, block row by block row."""

import numpy as np
import pytest

from cloudseg.backend.inference.resample import ModelGrid, Upsampler


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

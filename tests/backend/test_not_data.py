"""Values that are no pixel's data, extents that are not boxes, cards that lie: unit checks."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from cloudseg.backend.errors import InputError, ModelError
from cloudseg.backend.inference.engine import (
    BASE_MEMORY_MIB,
    GRADIENT_BASE_MIB,
    ArrayScene,
    gradient_memory_mib,
    memory_plan,
)
from cloudseg.backend.inference.options import RunOptions, memory_size
from cloudseg.backend.inference.resample import ModelGrid
from cloudseg.backend.models.cards import ClassInfo, ModelCard, check_network_shape
from cloudseg.backend.raster.reader import (
    MAX_REFLECTANCE,
    BandSource,
    _may_hold_not_data,
    check_extent,
    mark_not_data,
)

CARD = ModelCard(
    name="unit",
    version="1",
    bands=("B02", "B03", "B04", "B08"),
    product_level="L2A",
    resolution_m=10.0,
    tile_size=256,
    overlap=32,
    classes=(
        ClassInfo(0, "clear", "#000000"),
        ClassInfo(1, "cloud", "#ffffff"),
        ClassInfo(2, "cloud shadow", "#777777"),
    ),
    normalization={"mean": [0.1] * 4, "std": [0.05] * 4},
)


def test_inf_and_fill_values_become_nan_and_are_counted():
    values = np.array(
        [0.1, np.inf, -np.inf, np.nan, 3.4e38, -3.4e38, MAX_REFLECTANCE, 2.0], np.float32
    )
    assert mark_not_data(values) == 4  # NaN was nodata already
    assert np.isnan(values[1:6]).all()
    assert values[0] == np.float32(0.1) and values[6] == np.float32(MAX_REFLECTANCE)


def test_clean_integer_data_is_never_scanned_but_any_float_data_is():
    s2 = BandSource("b.tif", 1, 1e-4, -0.1)
    assert not _may_hold_not_data("uint16", s2) and not _may_hold_not_data("int16", s2)
    assert _may_hold_not_data("float32", s2) and _may_hold_not_data("float64", s2)
    assert _may_hold_not_data("uint32", BandSource("b.tif", 1, 1.0, 0.0))


def test_an_array_scene_reads_inf_as_nodata_without_changing_the_callers_array():
    image = np.full((4, 8, 8), 0.2, np.float32)
    image[1, 2, 3], image[0, 5, 5] = np.inf, -3.4e38
    scene = ArrayScene(image, list(CARD.bands))
    strip = scene.read_native(list(CARD.bands), 0, 8, 8)
    assert np.isnan(strip[1, 2, 3]) and np.isnan(strip[0, 5, 5])
    assert np.isfinite(strip).sum() == strip.size - 2
    assert np.isinf(image[1, 2, 3])  # the caller's array as it was


@pytest.mark.parametrize(
    "bounds",
    [(1, 0, 0, 1), (0, 1, 1, 0), (0, 0, 0, 1), (float("nan"), 0, 1, 1), (0, 0, float("inf"), 1)],
)
def test_an_extent_that_is_not_a_box_is_refused(bounds):
    with pytest.raises(InputError, match="extent") as caught:
        check_extent(bounds)
    assert "\n" not in str(caught.value)


def test_a_card_with_other_counts_than_its_network_is_refused():
    check_network_shape(CARD, 4, 3, "m.onnx")
    check_network_shape(CARD, None, None, "m.onnx")  # dynamic shapes: checked while running
    with pytest.raises(ModelError, match="returns 4 class channel"):
        check_network_shape(CARD, 4, 4, "m.onnx")
    with pytest.raises(ModelError, match="takes 6 band"):
        check_network_shape(CARD, 6, 3, "m.onnx")


def test_gradients_count_in_the_budget_and_huge_tiles_are_refused():
    grid = ModelGrid(1.0, 1000, 1000)
    cpu = RunOptions(device="cpu")
    extra = gradient_memory_mib(CARD, cpu)
    assert extra == GRADIENT_BASE_MIB + 256**2 * 6 * 1024 / 2**20
    assert gradient_memory_mib(CARD, replace(cpu, batch_size=4)) > 3 * extra - 2 * GRADIENT_BASE_MIB
    assert gradient_memory_mib(CARD, RunOptions(device="cuda")) == GRADIENT_BASE_MIB
    plain = memory_plan(1000, CARD, grid, cpu, 2048)
    explained = memory_plan(1000, CARD, grid, cpu, 2048, extra)
    assert explained.estimate_mib == pytest.approx(plain.estimate_mib + extra)
    assert plain.estimate_mib > BASE_MEMORY_MIB
    with pytest.raises(InputError, match="--tile-size") as caught:
        memory_plan(1000, replace(CARD, tile_size=10**9), grid, cpu, 2048)
    assert "\n" not in str(caught.value)


def test_a_memory_budget_is_a_positive_size():
    assert memory_size("2G") == 2048 and memory_size("1500M") == 1500
    assert memory_size("1.5GiB") == 1536
    for text in ("0", "-1G", "nan", "lots"):
        with pytest.raises(Exception, match="not a memory size"):
            memory_size(text)
    with pytest.raises(InputError, match="memory budget"):
        RunOptions(max_memory_mib=float("nan"))


def test_fill_values_do_not_decide_the_scale_of_float_data():
    from cloudseg.backend.raster.reader import guess_scale

    sample = np.linspace(0.0, 0.6, 1000)
    sample[:50] = 3.4e38  # 5 % undeclared fill values
    sample[50:60] = np.inf
    assert guess_scale("float32", sample)[0] == 1.0
    assert guess_scale("float32", sample * 10000)[0] == 1e-4

"""Memory bounded by design: scenes too wide for the budget run in column blocks."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from cloudseg.backend.errors import InputError
from cloudseg.backend.inference.engine import (
    BASE_MEMORY_MIB,
    EXTRA_OUTPUTS_MIB,
    bytes_per_column,
    memory_plan,
)
from cloudseg.backend.inference.resample import ModelGrid
from cloudseg.backend.inference.segment import SegmentOptions, segment
from cloudseg.backend.inference.tiling import column_blocks
from cloudseg.backend.models.registry import load_model

from .conftest import BANDS, stack_bands

MODEL = "ukis-csmask-4b-l2a"


def test_column_blocks_cover_the_scene_with_aligned_context():
    blocks = column_blocks(5000, 1024, 256, 204)
    assert [(c0, c1) for c0, c1, _, _ in blocks] == [
        (0, 1024), (1024, 2048), (2048, 3072), (3072, 4096), (4096, 5000)
    ]  # fmt: skip
    for c0, c1, b0, b1 in blocks:
        assert b0 % 204 == 0 and b0 <= max(c0 - 256, 0) and b1 == min(c1 + 256, 5000)


@pytest.fixture(scope="module")
def wide_scene(band_folder, tmp_path_factory):
    """The real chip mirrored side by side into a 4096 px wide, tiled GeoTIFF."""
    chip = stack_bands(band_folder, tmp_path_factory.mktemp("w") / "chip.tif", BANDS)
    with rasterio.open(chip) as src:
        profile, data = src.profile, src.read()
    wide = np.concatenate([data, data[:, :, ::-1]] * 4, axis=2)
    path = chip.with_name("wide.tif")
    profile.update(width=wide.shape[2], tiled=True, blockxsize=512, blockysize=512)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(wide)
        dst.descriptions = tuple(BANDS)
    return path


def _budget_for(columns: int, resolution: str) -> float:
    """A budget that leaves room for blocks of about ``columns`` input columns (with the
    probabilities written too)."""
    factor = 3.0 if resolution == "preview" else 1.0
    base = BASE_MEMORY_MIB + EXTRA_OUTPUTS_MIB
    return base + bytes_per_column(4, 3, 256, factor) * columns / 2**20


@pytest.mark.slow
@pytest.mark.real_data
@pytest.mark.parametrize(("resolution", "columns"), [("native", 1300), ("preview", 2700)])
def test_a_scene_run_in_column_blocks_gives_the_same_outputs(
    wide_scene, tmp_path, resolution, columns
):
    budget = _budget_for(columns, resolution)
    card = load_model(MODEL).card
    factor = 3.0 if resolution == "preview" else 1.0
    grid = ModelGrid(factor, 0, 0)
    options = SegmentOptions(model=MODEL, probabilities=tmp_path / "p.tif")
    plan = memory_plan(4096, card, grid, options, budget)
    assert len(plan.blocks) >= 2  # the budget does force blocks

    def run(name, budget_mib):
        options = SegmentOptions(
            model=MODEL,
            precision="fp32",
            resolution=resolution,
            probabilities=tmp_path / f"{name}_p.tif",
            max_memory_mib=budget_mib,
        )
        segment(wide_scene, tmp_path / f"{name}.tif", options)
        with (
            rasterio.open(tmp_path / f"{name}.tif") as m,
            rasterio.open(options.probabilities) as p,
        ):
            return m.read(), p.read()

    one_pass, blocked = run("one", 4096), run("blocks", budget)
    np.testing.assert_array_equal(one_pass[0], blocked[0])
    np.testing.assert_array_equal(one_pass[1], blocked[1])


def test_a_budget_too_small_is_refused_up_front_with_the_estimate(wide_scene, tmp_path):
    with pytest.raises(InputError, match=r"needs about .* GiB of memory.*--max-memory") as caught:
        segment(wide_scene, tmp_path / "m.tif", SegmentOptions(model=MODEL, max_memory_mib=700))
    assert "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []

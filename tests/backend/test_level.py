"""The product level is found where it is written down, or said to be a guess."""

from __future__ import annotations

import json

import pytest

from cloudseg.backend.inference.segment import SegmentOptions, segment
from cloudseg.backend.raster.level import DARK_BLUE_L2A
from cloudseg.backend.raster.reader import open_scene

from .conftest import BANDS, stack_bands

pytestmark = pytest.mark.real_data


def _stack(real_data, chip, path, **tags):
    stack_bands(real_data / "oncloudn_l2a" / chip, path, BANDS)
    if tags:
        import rasterio

        with rasterio.open(path, "r+") as ds:
            ds.update_tags(**tags)
    return path


def _level(path):
    with open_scene(path) as reader:
        return reader.level


def test_the_level_comes_from_names_metadata_and_stac(real_data, tmp_path):
    folder = _level(real_data / "oncloudn_l2a" / "adwp")  # its folder is oncloudn_l2a
    assert (folder.level, folder.how) == ("L2A", "the name oncloudn_l2a")
    named = _level(_stack(real_data, "adwp", tmp_path / "S2B_MSIL2A_20200101_stack.tif"))
    assert named.level == "L2A" and "S2B_MSIL2A" in named.how
    tagged = _level(_stack(real_data, "adwp", tmp_path / "t.tif", PROCESSING_LEVEL="Level-1C"))
    assert tagged.level == "L1C" and "PROCESSING_LEVEL=Level-1C" in tagged.how
    stac = _stack(real_data, "adwp", tmp_path / "s.tif")
    (tmp_path / "s.json").write_text(json.dumps({"properties": {"s2:product_type": "S2MSI2A"}}))
    found = _level(stac)
    assert found.level == "L2A" and found.how == "STAC s.json: s2:product_type=S2MSI2A"
    given = open_scene(stac, product_level="L1C")
    assert given.level.describe() == "L1C (given)"
    given.close()


def test_the_radiometry_tells_dark_surface_reflectance_and_never_calls_toa_l2a(real_data, tmp_path):
    from reference_scenes import labeled_scenes

    akny = _level(_stack(real_data, "akny", tmp_path / "a.tif"))  # dark land, corrected
    assert akny.level == "L2A" and akny.how.startswith("radiometry: ")
    adwp = _level(_stack(real_data, "adwp", tmp_path / "b.tif"))  # brighter: cannot tell
    assert adwp.level is None and adwp.describe().startswith("L1C (assumed: ")
    for scene in labeled_scenes(real_data, tmp_path / "labeled"):  # top of atmosphere
        with open_scene(scene.image) as reader:
            assert reader.level.level != "L2A", (scene.name, reader.level.how)
    assert 0.03 < DARK_BLUE_L2A < 0.06


@pytest.mark.slow
def test_a_guessed_level_is_a_warning_and_a_detected_one_picks_the_model(real_data, tmp_path):
    guessed = segment(_stack(real_data, "adwp", tmp_path / "b.tif"), tmp_path / "b_mask.tif")
    assert guessed.model == "ukis-csmask-4b-l1c"
    assert guessed.product_level.startswith("L1C (assumed: ")
    assert any(
        "product level unknown" in w and "--product-level L2A" in w for w in guessed.warnings
    )
    detected = segment(_stack(real_data, "akny", tmp_path / "a.tif"), tmp_path / "a_mask.tif")
    assert detected.model == "ukis-csmask-4b-l2a"
    assert not any("product level" in w for w in detected.warnings)
    # Asking for a model is not a guess.
    asked = segment(
        tmp_path / "b.tif", tmp_path / "c_mask.tif", SegmentOptions(model="ukis-csmask-4b-l2a")
    )
    assert not any("product level unknown" in w for w in asked.warnings)

"""Fixtures for engine tests: real chips in the forms users have them, and tiny real models."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import rasterio

CHIP = "oncloudn_l2a/adwp"
BANDS = ["B02", "B03", "B04", "B08"]


def load_script(name: str):
    path = Path(__file__).resolve().parents[1] / "data" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def band_folder(real_data) -> Path:
    """A real Sentinel-2 L2A chip as a folder of single-band files (B02.tif ...)."""
    return real_data / CHIP


def stack_bands(
    band_folder: Path, target: Path, order: list[str], describe: bool = True, **profile_changes
) -> Path:
    """Write the chip's bands into one multi-band GeoTIFF in ``order``."""
    arrays = []
    for band in order:
        with rasterio.open(band_folder / f"{band}.tif") as src:
            arrays.append(src.read(1))
            profile = src.profile
    profile.update(count=len(order), **profile_changes)
    with rasterio.open(target, "w", **profile) as dst:
        dst.write(np.stack(arrays))
        if describe:
            for i, band in enumerate(order, start=1):
                dst.set_band_description(i, band)
    return target


@pytest.fixture(scope="session")
def multiband(band_folder, tmp_path_factory) -> Path:
    """The same chip as one 4-band GeoTIFF whose band descriptions name the bands."""
    return stack_bands(band_folder, tmp_path_factory.mktemp("mb") / "chip.tif", BANDS)


@pytest.fixture(scope="session")
def make_safe():
    return load_script("make_safe").make_safe

"""The valid mask on ukis-csmask's own labeled test scenes meets their ``valid`` test."""

from __future__ import annotations

import subprocess

import pytest
import rasterio
from reference_scenes import labeled_scenes, on_grid, reference_valid
from sklearn.metrics import cohen_kappa_score

pytestmark = pytest.mark.real_data
#: ukis-csmask's buffer: 4 pixels, here 4 x 30 m.
BUFFER_M = 120


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ukis-s2-l1c", "ukis-landsat5", "ukis-landsat7"])
def test_the_valid_mask_agrees_with_the_reference_as_ukis_csmask_tests_it(
    name, real_data, tmp_path, venv_env
):
    scene = next(s for s in labeled_scenes(real_data, tmp_path / "s") if s.name == name)
    image = scene.image if scene.resolution_m else on_grid(scene, tmp_path)
    valid = tmp_path / "valid.tif"
    run = subprocess.run(
        ["cloudseg", "segment", str(image), str(tmp_path / "mask.tif"), "--model",
         "ukis-csmask-6b-l1c", "--valid", str(valid), "--buffer-cloud", str(BUFFER_M),
         "--buffer-shadow", str(BUFFER_M), "-q"],
        capture_output=True, text=True, env=venv_env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    with rasterio.open(valid) as ds:
        ours = ds.read(1)
    truth = reference_valid(scene.reference(), buffer_px=4)
    kappa = cohen_kappa_score(truth.ravel(), ours.ravel())
    assert kappa >= 0.60, f"{name}: kappa {kappa:.3f}"

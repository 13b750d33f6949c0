"""Class activation maps: right on a model whose answer is known, and on a real chip."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from cloudseg.backend.errors import CancelledError, InputError
from cloudseg.backend.inference.explain import CamRunner, explain


def _toy(masked: bool):
    """A two-class model: "cloud" where channel 0 is bright (masked: only in the region)."""
    import torch
    from torch import nn

    region = torch.zeros(32, 32)
    region[8:16, 20:28] = 1

    class Toy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Conv2d(2, 3, 1)
            with torch.no_grad():
                self.features.weight.fill_(0.5)
                self.features.bias.fill_(-0.5)  # dark input gives no activation

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = torch.relu(self.features(x))
            cloud = f.sum(dim=1) * (region if masked else 1)
            clear = torch.full_like(cloud, 0.2)
            return torch.stack([clear, cloud], dim=1)

    return Toy(), region.numpy().astype(bool)


@pytest.mark.parametrize("method", ["gradcam", "hirescam"])
def test_the_map_lies_where_the_cloud_score_comes_from(method):
    network, region = _toy(masked=False)
    tile = np.zeros((1, 2, 32, 32), np.float32)
    tile[:, :, region] = 2.0  # bright only in the region
    runner = CamRunner(network, network.features, [1], 2, method)
    cam = runner(tile)
    assert cam.shape == (1, 2, 32, 32) and not cam[:, 0].any()  # only the chosen class
    inside, outside = cam[0, 1][region].mean(), cam[0, 1][~region].mean()
    assert inside > 0 and outside < inside / 10


def test_hirescam_ignores_what_the_score_does_not_use():
    """Bright everywhere, but the cloud logit reads only the region: HiResCAM is 0 outside."""
    network, region = _toy(masked=True)
    tile = np.full((1, 2, 32, 32), 2.0, np.float32)
    cam = CamRunner(network, network.features, [1], 2, "hirescam")(tile)[0, 1]
    assert cam[region].min() > 0
    assert np.abs(cam[~region]).max() == 0  # the layer is at full resolution: no blur


def test_the_score_counts_the_pixels_the_class_decision_gives_the_class():
    """With a cloud threshold no pixel reaches, no pixel is cloud: nothing to explain."""
    from cloudseg.backend.models.cards import ClassInfo

    network, region = _toy(masked=False)
    tile = np.zeros((1, 2, 32, 32), np.float32)
    tile[:, :, region] = 2.0
    classes = [ClassInfo(0, "clear", "#000000"), ClassInfo(1, "cloud", "#ffffff")]
    maps = {
        threshold: CamRunner(
            network, network.features, [1], 2, card_classes=classes, cloud_threshold=threshold
        )(tile)[0, 1]
        for threshold in (None, 0.5, 1.0)
    }
    assert maps[None][region].mean() > 0
    np.testing.assert_array_equal(maps[0.5], maps[None])  # cloud wins where it is > 0.5
    assert not maps[1.0].any()


@pytest.fixture(scope="module")
def small_extent(multiband):
    """A 128 x 128 px extent of the real chip."""
    import rasterio

    with rasterio.open(multiband) as ds:
        t = ds.transform
        left, top = t * (64, 64)
        right, bottom = t * (192, 192)
    return (left, bottom, right, top)


@pytest.mark.slow
@pytest.mark.real_data
def test_a_real_chip_gets_a_georeferenced_map_that_cancel_never_leaves(
    multiband, small_extent, tmp_path
):
    import rasterio
    from rasterio.windows import from_bounds

    out = tmp_path / "cam.tif"
    with pytest.raises(CancelledError):
        explain(multiband, out, bounds=small_extent, product_level="L2A", cancelled=lambda: True)
    assert list(tmp_path.iterdir()) == []  # nothing, not even a temporary
    result = explain(
        multiband, out, ["cloud", "cloud shadow"], bounds=small_extent, product_level="L2A"
    )
    assert result.layer == "decoder.blocks.2" and result.model == "ukis-csmask-4b-l2a"
    with rasterio.open(out) as cam, rasterio.open(multiband) as src:
        window = from_bounds(*small_extent, transform=src.transform)
        assert cam.crs == src.crs
        assert cam.transform == src.window_transform(window)
        assert (cam.width, cam.height, cam.count) == (128, 128, 2)
        values = cam.read()
        tags = json.loads(cam.tags()["CLOUDSEG_EXPLAIN"])
        cost = json.loads(cam.tags()["CLOUDSEG_ACCOUNTING"])
    assert tags["method"] == "gradcam" and tags["classes"] == ["cloud", "cloud shadow"]
    assert cost["km2"] == pytest.approx(1.6384) and cost["energy_method"]
    for band, name in enumerate(["cloud", "cloud shadow"]):
        if result.maxima[name] > 0:
            assert np.nanmax(values[band]) == pytest.approx(1.0)
        assert np.nanmin(values[band]) >= 0
    with pytest.raises(InputError, match="has no class"):
        explain(multiband, tmp_path / "x.tif", ["haze"], bounds=small_extent)
    assert not (tmp_path / "x.tif").exists()


@pytest.mark.slow
@pytest.mark.real_data
def test_the_command_writes_hirescam_and_refuses_clearly(
    multiband, small_extent, tmp_path, venv_env
):
    out = tmp_path / "cam.tif"
    command = ["cloudseg", "explain", str(multiband), str(out), "--method", "hirescam"]
    command += ["--product-level", "l2a"]  # any case, as for segment
    extent = ["--extent", *map(str, small_extent)]
    run = subprocess.run(
        [*command, *extent, "--json"], capture_output=True, text=True, env=venv_env
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["method"] == "hirescam" and out.is_file()
    again = subprocess.run([*command, *extent], capture_output=True, text=True, env=venv_env)
    assert again.returncode == 1 and "exists" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1

"""The model factory and the import of the real ukis-csmask cloud models into smp."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import rasterio
import torch

from cloudseg.backend.errors import BandError, ModelError
from cloudseg.backend.inference.onnxgraph import onnx_as_float32
from cloudseg.backend.models.networks import ARCHITECTURES, create_network
from cloudseg.backend.models.registry import load_model
from cloudseg.training.models import import_onnx_unet


def _real_tile(real_data, card) -> np.ndarray:
    """A normalized 256 x 256 tile of real reflectance in the card's bands."""
    if len(card.bands) == 4:  # On Cloud N chip adwp: B02 B03 B04 B08, DN / 10000
        folder = real_data / "oncloudn_l2a" / "adwp"
        bands = []
        for band in card.bands:
            with rasterio.open(folder / f"{band}.tif") as ds:
                bands.append(ds.read(1, window=((128, 384), (128, 384))) / 10000.0)
        image = np.stack(bands)
    else:  # ukis-csmask's Landsat test chip: 6 bands of TOA reflectance 0-1
        image = np.load(real_data / "ukis_landsat" / "landsat7.npz")["img"][128:384, 128:384]
        image = image.transpose(2, 0, 1)
    mean = np.array(card.normalization["mean"])[:, None, None]
    std = np.array(card.normalization["std"])[:, None, None]
    return ((image - mean) / std)[None].astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    ["ukis-csmask-4b-l1c", "ukis-csmask-4b-l2a", "ukis-csmask-6b-l1c", "ukis-csmask-6b-l2a"],
)
def test_ukis_weights_reproduce_onnxruntime_on_real_inputs(real_data, name):
    network, card = import_onnx_unet(name)
    x = _real_tile(real_data, card)
    with torch.inference_mode():
        ours = network(torch.from_numpy(x)).numpy()
    path = load_model(name).path
    shipped = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (reference16,) = shipped.run(None, {"input": x})
    as32 = onnx_as_float32(onnx.load(str(path)))
    (reference32,) = ort.InferenceSession(
        as32.SerializeToString(), providers=["CPUExecutionProvider"]
    ).run(None, {"input": x})
    # Same graph and weights in float32: the import is exact to float rounding.
    assert np.abs(ours - reference32).max() <= 1e-3
    # The shipped graph computes in float16; we differ from it no more than it differs
    # from itself in float32, and the classes agree almost everywhere.
    own_rounding = np.abs(reference16 - reference32).max()
    assert np.abs(ours - reference16).max() <= 1.5 * own_rounding + 1e-3
    assert (ours.argmax(1) == reference16.argmax(1)).mean() >= 0.99


@pytest.mark.slow
def test_import_for_other_bands_and_classes_keeps_the_matching_weights():
    source, card = import_onnx_unet("ukis-csmask-4b-l1c")
    network, _ = import_onnx_unet("ukis-csmask-4b-l1c", bands=["B04", "B02", "B11"], classes=4)
    stem = source.encoder._conv_stem.weight.detach()
    new_stem = network.encoder._conv_stem.weight.detach()
    assert new_stem.shape == (48, 3, 3, 3)
    assert torch.equal(new_stem[:, 0], stem[:, 2])  # B04 keeps its kernel
    assert torch.equal(new_stem[:, 1], stem[:, 0])  # B02
    assert torch.allclose(new_stem[:, 2], stem.mean(dim=1))  # B11 is new: the mean kernel
    assert network.segmentation_head[0].out_channels == 4
    decoder = dict(source.decoder.named_parameters())
    for key, value in network.decoder.named_parameters():
        assert torch.equal(value, decoder[key])
    assert card.name == "ukis-csmask-4b-l1c"


def test_import_rejects_unknown_bands_and_non_onnx_models(tmp_path):
    with pytest.raises(BandError, match="B99"):
        import_onnx_unet("ukis-csmask-4b-l1c", bands=["B02", "B99"])
    with pytest.raises(ModelError, match="no model named"):
        import_onnx_unet("not-a-model")


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_factory_builds_every_architecture_for_any_band_count(architecture):
    network = create_network(architecture.lower(), in_channels=5, classes=3).eval()
    with torch.inference_mode():
        out = network(torch.zeros(2, 5, 64, 64))
    assert out.shape == (2, 3, 64, 64)


def test_unknown_architecture_lists_the_valid_ones():
    with pytest.raises(
        ModelError, match="Unet, UnetPlusPlus, FPN, DeepLabV3Plus, PSPNet, Segformer"
    ):
        create_network("TransUNet", 3, 2)
    with pytest.raises(ModelError, match="unknown encoder 'resnet9000'"):
        create_network("Unet", 3, 2, encoder="resnet9000")

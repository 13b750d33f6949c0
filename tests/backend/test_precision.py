"""Precision: bf16 where the hardware has it (OpenVINO on the CPU), float32 when asked."""

import json
import subprocess

import numpy as np
import pytest
import rasterio

from cloudseg.backend.inference.runners import openvino_bf16_problem
from cloudseg.backend.inference.segment import SegmentOptions, segment
from cloudseg.backend.models.registry import load_model

NO_BF16 = openvino_bf16_problem()
needs_bf16 = pytest.mark.skipif(NO_BF16 is not None, reason=f"no bf16 here: {NO_BF16}")


def _run(image, out, precision, **options):
    probs = out.with_suffix(".probs.tif")
    result = segment(
        image,
        out,
        SegmentOptions(precision=precision, probabilities=probs, product_level="L2A", **options),
    )
    with rasterio.open(out) as ds, rasterio.open(probs) as p:
        return result, ds.read(1), p.read().astype(int), ds.tags()


@pytest.mark.slow
@needs_bf16
def test_auto_runs_onnx_in_bf16_on_this_cpu_and_agrees_with_fp32(multiband, tmp_path):
    auto, mask16, probs16, tags = _run(multiband, tmp_path / "auto.tif", "auto")
    fp32, mask32, probs32, _ = _run(multiband, tmp_path / "fp32.tif", "fp32")

    assert auto.runner.startswith("openvino") and auto.runner.endswith("(bf16)")
    assert tags["CLOUDSEG_RUNNER"] == auto.runner  # the precision is in the provenance
    assert fp32.runner.startswith("onnxruntime")
    assert (mask16 == mask32).mean() >= 0.985  # 99.2 % on this chip
    # Probabilities (percent) differ by rounding, not by meaning.
    assert np.abs(probs16 - probs32).mean() < 1.0
    for name, share in fp32.class_percent.items():
        assert abs(auto.class_percent[name] - share) < 1.0


@pytest.mark.slow
@needs_bf16
def test_compiled_models_are_cached_and_reused(multiband, tmp_path, monkeypatch):
    monkeypatch.setenv("CLOUDSEG_CACHE_DIR", str(tmp_path / "cache"))
    _, first, _, _ = _run(multiband, tmp_path / "a.tif", "bf16")
    blobs = list((tmp_path / "cache" / "openvino").glob("*.blob"))
    assert len(blobs) == 1
    _, again, _, _ = _run(multiband, tmp_path / "b.tif", "bf16")
    assert (first == again).all()
    assert list((tmp_path / "cache" / "openvino").glob("*.blob")) == blobs


@pytest.mark.slow
def test_cli_precision_fp32_is_recorded_and_bad_values_fail(multiband, tmp_path, venv_env):
    out = tmp_path / "m.tif"
    args = ["cloudseg", "segment", str(multiband), str(out)]
    done = subprocess.run(
        [*args, "--precision", "fp32", "--product-level", "L2A", "--json"],
        capture_output=True,
        text=True,
        env=venv_env,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["runner"].startswith("onnxruntime")
    bad = subprocess.run(
        [*args, "--precision", "fp16", "--overwrite"], capture_output=True, text=True, env=venv_env
    )
    assert bad.returncode == 2 and "invalid choice: 'fp16'" in bad.stderr


@pytest.mark.slow
def test_torch_checkpoint_in_bf16_on_the_cpu_when_asked(multiband, tmp_path):
    import segmentation_models_pytorch as smp
    import torch

    torch.manual_seed(0)
    card = load_model("ukis-csmask-4b-l2a").card.to_dict() | {
        "name": "unet-r18-bf16",
        "format": "torch",
        "product_level": "any",
        "architecture": {"name": "Unet", "encoder": "resnet18"},
    }
    net = smp.create_model(
        "Unet", encoder_name="resnet18", encoder_weights=None, in_channels=4, classes=3
    )
    checkpoint = tmp_path / "unet.pt"
    torch.save({"card": card, "state_dict": net.state_dict()}, checkpoint)

    bf16, _, probs16, _ = _run(
        multiband, tmp_path / "b.tif", "bf16", model=str(checkpoint), device="cpu"
    )
    fp32, _, probs32, _ = _run(
        multiband, tmp_path / "f.tif", "auto", model=str(checkpoint), device="cpu"
    )
    assert bf16.runner.endswith("CPU (bf16 autocast)")
    assert fp32.runner.endswith("CPU (fp32)")  # auto stays float32 on the CPU with torch
    assert np.abs(probs16 - probs32).mean() < 2.0

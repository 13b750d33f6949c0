"""What runs a model: the plan (runtime, device, precision), and the runtimes themselves.

The GPU path of the built-in models (their ONNX weights imported into torch) is tested
here on the CPU: the same network, the same numbers, only the device differs.
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import onnx
import pytest
import rasterio

from cloudseg.backend.errors import InputError, ModelError
from cloudseg.backend.inference.onnxgraph import prepared_onnx
from cloudseg.backend.inference.runners import cuda_usable, openvino_bf16_problem, plan_runner
from cloudseg.backend.inference.segment import SegmentOptions, segment
from cloudseg.backend.models.registry import load_model

BUILTIN = "ukis-csmask-4b-l2a"
no_gpu = pytest.mark.skipif(cuda_usable(), reason="a CUDA GPU is usable here")


def _torch_card():
    return load_model(BUILTIN).card.__class__.from_dict(
        load_model(BUILTIN).card.to_dict() | {"name": "unet-r18", "format": "torch"}
    )


@no_gpu
def test_plan_on_a_cpu_machine_says_what_runs_and_refuses_what_cannot():
    card = load_model(BUILTIN).card
    plan = plan_runner(card)
    if openvino_bf16_problem() is None:
        assert (plan.runtime, plan.device, plan.precision) == ("openvino", "cpu", "bf16")
    else:
        assert (plan.runtime, plan.device, plan.precision) == ("onnxruntime", "cpu", "fp32")
    assert plan_runner(card, precision="fp32").runtime == "onnxruntime"
    torch_plan = plan_runner(card, runtime="torch")
    assert (torch_plan.runtime, torch_plan.device, torch_plan.precision) == (
        "torch",
        "cpu",
        "fp32",  # auto stays float32 on the CPU with torch
    )
    assert plan_runner(card, runtime="torch", precision="bf16").precision == "bf16"
    with pytest.raises(ModelError, match=r"--device cuda: no CUDA GPU.*use --device cpu"):
        plan_runner(card, device="cuda")
    with pytest.raises(ModelError, match="precision must be one of auto, fp32, bf16"):
        plan_runner(card, precision="fp16")
    with pytest.raises(ModelError, match="runtime must be one of"):
        plan_runner(card, runtime="tensorrt")
    with pytest.raises(ModelError, match=r"torch checkpoint; export it to ONNX"):
        plan_runner(_torch_card(), runtime="onnxruntime")


def test_torch_cannot_run_onnx_models_of_other_architectures():
    card = load_model(BUILTIN).card
    other = card.__class__.from_dict(
        card.to_dict() | {"architecture": {"name": "FPN", "encoder": "resnet34"}}
    )
    with pytest.raises(ModelError, match=r"--runtime torch: .* use --runtime onnxruntime"):
        plan_runner(other, runtime="torch")


def _classes_and_probs(image, out, **options):
    probs = out.with_suffix(".probs.tif")
    result = segment(
        image, out, SegmentOptions(product_level="L2A", probabilities=probs, **options)
    )
    with rasterio.open(out) as ds, rasterio.open(probs) as p:
        return result, ds.read(1), p.read().astype(int), ds.tags()


@pytest.mark.slow
@pytest.mark.real_data
def test_builtin_models_run_in_torch_with_the_same_mask(multiband, tmp_path):
    """The network a GPU runs, here on the CPU: it gives onnxruntime's mask."""
    torch_run, torch_mask, torch_probs, tags = _classes_and_probs(
        multiband, tmp_path / "t.tif", runtime="torch", device="cpu", precision="fp32"
    )
    ort_run, ort_mask, ort_probs, _ = _classes_and_probs(
        multiband, tmp_path / "o.tif", precision="fp32"
    )
    assert torch_run.runner.startswith("torch ") and torch_run.runner.endswith("CPU (fp32)")
    assert ort_run.runner.startswith("onnxruntime ") and ort_run.runner.endswith("CPU (fp32)")
    assert tags["CLOUDSEG_RUNNER"] == torch_run.runner
    assert (torch_mask == ort_mask).mean() > 0.9995
    assert np.abs(torch_probs - ort_probs).max() <= 1  # percent, rounding only


@pytest.mark.slow
@pytest.mark.real_data
def test_float16_graphs_are_widened_once_and_cached(tmp_path, monkeypatch, multiband):
    monkeypatch.setenv("CLOUDSEG_CACHE_DIR", str(tmp_path / "cache"))
    model = load_model(BUILTIN)
    shipped = onnx.load(str(model.path))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in shipped.graph.initializer)

    first = prepared_onnx(model)
    assert first.parent == tmp_path / "cache" / "onnx"
    widened = onnx.load(str(first))
    assert all(t.data_type != onnx.TensorProto.FLOAT16 for t in widened.graph.initializer)
    dims = widened.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims[2:]] == ["height", "width"]  # any tile size runs
    stamp = first.stat().st_mtime_ns
    assert prepared_onnx(model) == first and first.stat().st_mtime_ns == stamp
    _, cached_mask, _, _ = _classes_and_probs(multiband, tmp_path / "a.tif", precision="fp32")

    # Where no cache can be written the graph is converted in memory, with the same mask.
    blocked = tmp_path / "blocked"
    blocked.write_text("a file, not a folder")
    monkeypatch.setenv("CLOUDSEG_CACHE_DIR", str(blocked))
    assert isinstance(prepared_onnx(model), bytes)
    _, memory_mask, _, _ = _classes_and_probs(multiband, tmp_path / "b.tif", precision="fp32")
    assert (cached_mask == memory_mask).all()


@pytest.mark.slow
@pytest.mark.real_data
def test_tile_size_and_overlap_are_options_recorded_in_the_provenance(multiband, tmp_path):
    _, mask, _, tags = _classes_and_probs(
        multiband, tmp_path / "t.tif", precision="fp32", tile_size=384, overlap=64
    )
    assert json.loads(tags["CLOUDSEG_TILING"]) == {"tile_size": 384, "overlap": 64}
    _, default_mask, _, default_tags = _classes_and_probs(
        multiband, tmp_path / "d.tif", precision="fp32"
    )
    assert json.loads(default_tags["CLOUDSEG_TILING"]) == {"tile_size": 256, "overlap": 52}
    assert 0.9 < (mask == default_mask).mean() < 1.0  # another tiling, a close mask
    # A 384 px scene with an overlap below the margin: no tile lies wholly in the margin.
    with rasterio.open(multiband) as ds:
        left, _, right, top = ds.bounds
    crop = (left, top - 384 * 10, right, top)
    segment(multiband, tmp_path / "c.tif", SegmentOptions(bounds=crop, overlap=32))
    with rasterio.open(tmp_path / "c.tif") as ds:
        assert ds.shape == (384, 512) and (ds.read(1) != 255).all()
    for bad, message in (
        ({"tile_size": 100}, "tile size must be a multiple of 32"),
        ({"overlap": 200}, r"overlap must be between 0 and half the tile size \(128\)"),
    ):
        with pytest.raises(InputError, match=message):
            segment(multiband, tmp_path / "bad.tif", SegmentOptions(**bad))
        assert not (tmp_path / "bad.tif").exists()


@pytest.mark.slow
@pytest.mark.real_data
def test_resolution_default_is_native_and_model_means_preview(multiband, tmp_path, venv_env):
    native = segment(multiband, tmp_path / "n.tif", SegmentOptions(product_level="L2A"))
    with rasterio.open(tmp_path / "n.tif") as ds:
        assert ds.tags()["CLOUDSEG_RUN_RESOLUTION"] == "input grid"
        accuracy = ds.tags()["CLOUDSEG_MODEL_ACCURACY"]  # the card's measured IoU
        assert accuracy == load_model(native.model).card.headline()
        assert "cloud IoU" in accuracy
    assert SegmentOptions(resolution="model").resolution == "preview"
    with pytest.raises(InputError, match="resolution must be one of native, preview"):
        SegmentOptions(resolution="coarse")
    done = subprocess.run(
        [
            *("cloudseg", "segment", str(multiband), str(tmp_path / "p.tif"), "--json", "-q"),
            *("--resolution", "model", "--product-level", "L2A"),
        ],
        capture_output=True,
        text=True,
        env=venv_env,
    )
    assert done.returncode == 0, done.stderr
    with rasterio.open(tmp_path / "p.tif") as ds:
        assert ds.tags()["CLOUDSEG_RUN_RESOLUTION"] == "30 m (model card; preview)"


@pytest.mark.slow
def test_info_says_what_runs_the_builtin_models(venv_env):
    done = subprocess.run(
        ["cloudseg", "info", "--json"], capture_output=True, text=True, env=venv_env
    )
    report = json.loads(done.stdout)
    plan = plan_runner(load_model(BUILTIN).card)
    assert report["builtin_runner"] == f"{plan.summary()} ({plan.reason})"

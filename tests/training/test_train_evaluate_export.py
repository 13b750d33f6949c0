"""Real training runs on the ingested CloudSEN12 patches, evaluation and ONNX export."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import rasterio
import torch
import yaml

from cloudseg.backend.errors import CancelledError, InputError, OutputExistsError
from cloudseg.backend.inference.options import RunOptions
from cloudseg.backend.inference.runners import create_runner
from cloudseg.backend.models.registry import load_model
from cloudseg.training.config import Config
from cloudseg.training.evaluate import evaluate_rasters, evaluate_store
from cloudseg.training.export import load_checkpoint
from cloudseg.training.train import train

from .conftest import VAL_SCENES, tiny_config

PATCH = "ROI_2507/low-cloudy"
CS12_CLASSES = "clear,thick cloud,thin cloud,cloud shadow"
BANDS3 = ["B02", "B03", "B04"]


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "cloudseg.backend.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


@pytest.mark.slow
def test_short_real_training_lowers_the_loss_and_writes_a_run(trained_run):
    _config, result = trained_run
    out = result.model_path.parent
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    assert result.val_scenes == VAL_SCENES and VAL_SCENES[0] not in result.train_scenes
    assert result.best_checkpoint.name == "best.ckpt" and result.last_checkpoint.is_file()
    assert result.windows_per_second > 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["data"]["bands"] == ["B02", "B03", "B04"]
    assert len(saved["data"]["normalization"]["mean"]) == 3  # resolved from the store
    assert saved["data"]["resolution_m"] == 10.0
    log = (out / "logs" / "metrics.csv").read_text().splitlines()
    assert {"train_loss_epoch", "val_iou", "val_loss"} <= set(log[0].split(","))
    assert any((out / "tensorboard").glob("events.out.tfevents.*"))
    card = load_model(result.model_path).card
    assert card.bands == ("B02", "B03", "B04") and card.class_names() == [
        "clear",
        "cloud",
        "cloud shadow",
    ]
    entry = card.metrics[0]  # the evaluation on the validation scenes, as built-ins have
    assert entry["config"] == "validation" and VAL_SCENES[0] in entry["data"]
    assert entry["mean_iou"] == pytest.approx(result.best_val_iou, abs=1e-4)
    assert set(entry["iou"]) == {"clear", "cloud", "cloud shadow"}
    # What the training cost: km² of windows drawn (3 epochs x 24 windows of 128 px at 10 m).
    cost = card.source["training_cost"]
    assert cost == json.loads((out / "cost.json").read_text())
    assert cost["km2"] == pytest.approx(3 * 24 * (128 * 10) ** 2 / 1e6)
    assert cost["energy_method"] in ("rapl", "nvml", "not measured")
    assert result.accounting["seconds"] == cost["seconds"] > 0
    listed = _cli("models", result.model_path, "--json")
    assert listed.returncode == 0, listed.stderr
    mine = json.loads(listed.stdout)[-1]
    assert mine["name"] == card.name and mine["metrics"] == card.metrics
    assert mine["accuracy"] == card.headline() and mine["accuracy"].endswith("on validation")


@pytest.mark.slow
def test_checkpoint_reloads_to_identical_outputs(trained_run, cs12_store):
    _, result = trained_run
    network, _card = load_checkpoint(result.model_path)
    best = torch.load(result.best_checkpoint, map_location="cpu", weights_only=False)
    state = {k.removeprefix("network."): v for k, v in best["state_dict"].items()}
    state = {k: v for k, v in state.items() if not k.startswith("loss.")}
    from cloudseg.backend.models.networks import create_network

    again = create_network("Unet", 3, 3, "resnet18")
    again.load_state_dict(state)
    x = torch.randn(2, 3, 128, 128)
    with torch.inference_mode():
        assert torch.equal(network(x), again.eval()(x))
    runner = create_runner(load_model(result.model_path), device="cpu")
    probabilities = runner(x.numpy())
    assert np.allclose(probabilities, network(x).softmax(1).detach().numpy(), atol=1e-6)


@pytest.mark.slow
def test_export_parity_and_the_onnx_file_segments_like_the_checkpoint(
    trained_run, real_data, tmp_path
):
    _, result = trained_run
    onnx_path = tmp_path / "tiny.onnx"
    done = _cli("export", result.model_path, onnx_path, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["max_abs_diff"] <= 1e-3 and report["batch_sizes"] == [1, 3]
    card = load_model(onnx_path).card  # the card is embedded
    assert card.format == "onnx" and card.name == "tiny-rgb"
    again = _cli("export", result.model_path, onnx_path)
    assert again.returncode == 1 and "exists; pass --overwrite" in again.stderr
    image = real_data / "cloudsen12_figures" / PATCH / "S2L1C.tif"
    masks = {}
    for model in (result.model_path, onnx_path):
        out = tmp_path / f"{model.suffix[1:]}.tif"
        # Full precision on both sides: this checks the export, not bf16 rounding.
        seg = _cli(
            "segment",
            image,
            out,
            "--model",
            model,
            "--bands",
            "B02,B03,B04",
            "--precision",
            "fp32",
            "-q",
        )
        assert seg.returncode == 0, seg.stderr
        with rasterio.open(out) as ds:
            masks[model.suffix] = ds.read(1)
    assert (masks[".pt"] == masks[".onnx"]).mean() >= 0.999
    # Explanations need the torch form: the trained model.pt has one (an smp U-Net with a
    # ResNet encoder); its ONNX export does not, and says so in one line.
    from cloudseg.backend.errors import ModelError
    from cloudseg.backend.inference.explain import explain

    why = explain(image, tmp_path / "why.tif", model=str(result.model_path), bands=BANDS3)
    assert why.layer == "decoder.blocks.2" and why.model == "tiny-rgb"
    with rasterio.open(tmp_path / "why.tif") as cam, rasterio.open(image) as src:
        assert cam.transform == src.transform and cam.crs == src.crs
    with pytest.raises(ModelError, match="is ONNX only"):
        explain(image, tmp_path / "no.tif", model=str(onnx_path), bands=BANDS3)
    assert not (tmp_path / "no.tif").exists()


@pytest.mark.slow
def test_evaluation_on_a_store_matches_evaluation_on_the_rasters(
    trained_run, cs12_store, real_data, tmp_path
):
    _, result = trained_run
    on_store = evaluate_store(
        str(result.model_path), cs12_store, scenes=["ROI_2507-low-cloudy"], out=tmp_path / "s"
    )
    patch = real_data / "cloudsen12_figures" / PATCH
    label = next(p for p in (patch / "manual_hq.tif", patch / "manual_sc.tif") if p.is_file())
    on_rasters = evaluate_rasters(
        str(result.model_path),
        [patch / "S2L1C.tif"],
        [label],
        label_classes=CS12_CLASSES.split(","),
        options=RunOptions(precision="fp32", bands=["B02", "B03", "B04"]),
    )
    assert on_store.metrics["confusion_matrix"] == on_rasters.metrics["confusion_matrix"]
    with rasterio.open(label) as ds:
        values = ds.read(1, masked=True)
    labeled = int(((~np.ma.getmaskarray(values)) & (values.filled(255) <= 3)).sum())
    assert on_store.metrics["pixels"] == labeled
    assert on_store.class_map == {
        "clear": "clear",
        "thick cloud": "cloud",
        "thin cloud": "cloud",
        "cloud shadow": "cloud shadow",
    }
    saved = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert saved["mean_iou"] == pytest.approx(on_store.metrics["mean_iou"])
    # Both read the same patch: the same area scored, and the cost of it in the report.
    with rasterio.open(patch / "S2L1C.tif") as ds:
        km2 = ds.width * ds.height * abs(ds.transform.a * ds.transform.e) / 1e6
    assert on_store.accounting["km2"] == pytest.approx(km2, rel=1e-3)
    assert on_rasters.accounting["km2"] == pytest.approx(km2, rel=1e-3)
    assert saved["accounting"]["energy_method"] == on_store.accounting["energy_method"]
    assert saved["runner"] == on_store.runner
    assert saved["runner"].endswith("(fp32)")  # the model's own figures, by default
    assert (tmp_path / "s" / "confusion.png").stat().st_size > 1000


@pytest.mark.slow
def test_evaluate_cli_reports_metrics_and_refuses_missing_bands(cs12_store, trained_run, tmp_path):
    _, result = trained_run
    done = _cli(
        "evaluate",
        "--model",
        result.model_path,
        "--store",
        cs12_store,
        "--scenes",
        "ROI_2507-clear",
        "--out",
        tmp_path / "e",
        "--precision",
        "bf16",
    )
    assert done.returncode == 0, done.stderr
    assert "mIoU" in done.stdout
    assert "bf16" in json.loads((tmp_path / "e" / "metrics.json").read_text())["runner"]
    builtin = _cli("evaluate", "--model", "ukis-csmask-4b-l1c", "--store", cs12_store, "-q")
    assert builtin.returncode == 1
    assert builtin.stderr.strip().splitlines()[-1].startswith("cloudseg: error:")
    assert "B08" in builtin.stderr


@pytest.mark.slow
def test_rerun_refuses_resume_continues_and_cancel_leaves_no_model(cs12_store, tmp_path):
    config = Config.from_dict(tiny_config(cs12_store, tmp_path / "run", epochs=1))
    first = train(config)
    with pytest.raises(OutputExistsError, match="--resume"):
        train(config)
    longer = Config.from_dict(tiny_config(cs12_store, tmp_path / "run", epochs=2))
    resumed = train(longer, resume=True)
    assert resumed.epochs == 2 and len(resumed.epoch_losses) == 1  # only the new epoch ran
    assert resumed.model_path.stat().st_mtime_ns >= first.model_path.stat().st_mtime_ns
    logs = tmp_path / "run" / "logs"
    assert (logs / "metrics.csv").is_file()  # the first run's log survives the resume
    assert any(logs.glob("resumed-*/metrics.csv"))
    calls = []
    with pytest.raises(CancelledError, match="--resume"):
        train(
            config,
            overwrite=True,
            progress=lambda pct, msg: calls.append((pct, msg)),
            cancelled=lambda: len(calls) >= 2,
        )
    assert not (tmp_path / "run" / "model.pt").exists()
    assert calls[0][1].startswith("epoch 1/1") and 0 < calls[0][0] < 100
    with pytest.raises(InputError, match="nothing to resume"):
        train(Config.from_dict(tiny_config(cs12_store, tmp_path / "other")), resume=True)


@pytest.mark.slow
def test_fine_tune_the_real_cloud_model_with_three_bands(cs12_store, tmp_path):
    data = tiny_config(cs12_store, tmp_path / "ft", epochs=1)
    data["model"] = {"init": "ukis-csmask-4b-l1c"}
    data["data"] |= {"normalization": "card", "samples_per_epoch": 8}
    result = train(Config.from_dict(data))
    card = load_model(result.model_path).card
    assert card.architecture["encoder"] == "efficientnet-b4" and len(card.bands) == 3
    ukis = load_model("ukis-csmask-4b-l1c").card
    assert card.normalization["mean"] == ukis.normalization["mean"][:3]
    assert [c.color for c in card.classes] == [c.color for c in ukis.classes]
    assert card.license == "Apache-2.0" and np.isfinite(result.epoch_losses).all()


@pytest.mark.slow
def test_train_cli_tiny_config_and_bad_config(cs12_store, tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config(cs12_store, tmp_path / "cli")))
    done = _cli("train", "--config", path, "--set", "train.epochs=1", "--json", "-q")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["epochs"] == 1 and (tmp_path / "cli" / "model.pt").is_file()
    path.write_text("train:\n  epocs: 3\n")
    bad = _cli("train", "--config", path)
    assert bad.returncode == 1
    assert (
        bad.stderr.strip()
        == f"cloudseg: error: {path}: train: unknown key(s) epocs; valid: "
        + (
            "epochs, batch_size, lr, weight_decay, loss, focal_weight, dice_weight, class_weights, "
            "patience, augment, seed, num_workers, device, devices, num_nodes, strategy, "
            "precision, val_every"
        )
    )


@pytest.mark.slow
def test_training_reads_windows_from_s3(real_data, s3_bucket, tmp_path):
    from cloudseg.backend.store.ingest import ingest

    source = tmp_path / "src"
    for patch in ("ROI_1746/high/cloudy", "ROI_2507/low-cloudy"):
        target = source / patch.replace("/", "-")
        target.mkdir(parents=True)
        for f in (real_data / "cloudsen12_figures" / patch).iterdir():
            shutil.copy(f, target / f.name)
    store = f"s3://{s3_bucket}/cs12"
    ingest(source, store, layout="cloudsen12", env_file=None, report=False)
    data = tiny_config(store, tmp_path / "s3run", epochs=1, num_workers=2)
    data["data"]["split"] = {"val_scenes": ["ROI_2507-low-cloudy"]}
    result = train(Config.from_dict(data))  # two loader processes read the windows from S3
    assert result.model_path.is_file() and result.train_scenes == ["ROI_1746-high-cloudy"]
    assert result.val_metrics["pixels"] > 0


@pytest.mark.slow
def test_the_same_seed_gives_the_same_weights(cs12_store, tmp_path):
    data = tiny_config(cs12_store, tmp_path / "a", epochs=1)
    data["data"]["samples_per_epoch"] = 8
    first = train(Config.from_dict(data))
    second = train(Config.from_dict(data | {"output": str(tmp_path / "b")}))
    a = torch.load(first.model_path, weights_only=True)["state_dict"]
    b = torch.load(second.model_path, weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert first.epoch_losses == second.epoch_losses


@pytest.mark.slow
def test_training_continues_from_a_model_pt_with_the_same_bands(trained_run, cs12_store, tmp_path):
    _, result = trained_run
    data = tiny_config(cs12_store, tmp_path / "more", epochs=1)
    data["model"] = {"init": str(result.model_path)}
    data["data"]["samples_per_epoch"] = 8
    more = train(Config.from_dict(data))
    card = load_model(more.model_path).card
    assert card.architecture["encoder"] == "resnet18" and card.bands == ("B02", "B03", "B04")
    data["data"]["bands"] = ["B02", "B03"]
    data["output"] = str(tmp_path / "fewer")
    with pytest.raises(InputError, match="takes bands B02, B03, B04 and 3 classes"):
        train(Config.from_dict(data))

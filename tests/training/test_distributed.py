"""A real 2-process DDP training on the CPU (gloo) on the real CloudSEN12 store."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace

import numpy as np
import pytest
import rasterio
import yaml

from .conftest import VAL_SCENES, tiny_config

pytestmark = [pytest.mark.real_data, pytest.mark.slow]
PATCH = "ROI_2507/low-cloudy"


def test_two_processes_train_one_model_with_metrics_of_both(
    cs12_store, real_data, tmp_path, venv_env
):
    from cloudseg.backend.models.registry import load_model
    from cloudseg.backend.store.dataset import open_dataset
    from cloudseg.training.config import Config
    from cloudseg.training.data import WindowDataset

    data = tiny_config(cs12_store, tmp_path / "ddp", epochs=2, devices=2, strategy="ddp")
    config_path = tmp_path / "ddp.yaml"
    config_path.write_text(yaml.safe_dump(data))
    run = subprocess.run(
        ["cloudseg", "train", "--config", str(config_path), "--json", "-q"],
        capture_output=True, text=True, env=venv_env, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)  # one report: rank 0's (the other rank prints nothing)
    models = sorted(p.name for p in (tmp_path / "ddp").rglob("*.pt"))
    assert models == ["model.pt"]
    # Validation metrics are over both ranks' windows: the summed confusion matrix holds
    # every labeled pixel of the validation windows (one window more where the sampler
    # pads the ranks to equal shares).
    config = Config.from_dict(data)
    dataset = open_dataset(cs12_store)
    val_data = replace(config.data, stride=config.data.window)  # as training validates
    windows = WindowDataset(
        dataset, VAL_SCENES, val_data, config.data.classes, np.zeros(3), np.ones(3)
    )
    labeled = sum(int((windows[i][1] != 255).sum()) for i in range(len(windows)))
    pixels = result["val_metrics"]["pixels"]
    assert labeled <= pixels <= labeled + 128 * 128
    card = load_model(tmp_path / "ddp" / "model.pt").card
    validation = card.metrics[0]
    assert validation["pixels"] == pixels
    assert validation["mean_iou"] == pytest.approx(result["best_val_iou"], abs=1e-3)
    # The model segments a real patch.
    image = real_data / "cloudsen12_figures" / PATCH / "S2L1C.tif"
    seg = subprocess.run(
        ["cloudseg", "segment", str(image), str(tmp_path / "mask.tif"), "--model",
         str(tmp_path / "ddp" / "model.pt"), "--bands", "B02,B03,B04", "-q"],
        capture_output=True, text=True, env=venv_env,
    )  # fmt: skip
    assert seg.returncode == 0, seg.stderr
    with rasterio.open(tmp_path / "mask.tif") as ds:
        mask = ds.read(1)
    assert mask.shape == (509, 509) and set(np.unique(mask)) <= {0, 1, 2}

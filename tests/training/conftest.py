"""Fixtures of the training tests: a store of the real CloudSEN12 patches and a tiny run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cloudseg.backend.store.ingest import ingest

VAL_SCENES = ["ROI_2507-low-cloudy"]


def tiny_config(store: Path | str, output: Path, **train) -> dict:
    """A config that trains a small U-Net on 128-pixel windows for a few seconds."""
    return {
        "name": "tiny-rgb",
        "output": str(output),
        "data": {
            "store": str(store),
            "bands": ["B02", "B03", "B04"],
            "classes": ["clear", "cloud", "cloud shadow"],
            "window": 128,
            "samples_per_epoch": 24,
            "product_level": "L1C",
            "split": {"val_scenes": VAL_SCENES},
        },
        "model": {"architecture": "Unet", "encoder": "resnet18"},
        "train": {"epochs": 3, "batch_size": 4, "lr": 1e-3, "seed": 7} | train,
    }


@pytest.fixture(scope="session")
def cs12_store(real_data, tmp_path_factory) -> Path:
    """The 11 labeled CloudSEN12 patches ingested into a local store."""
    store = tmp_path_factory.mktemp("cs12") / "store"
    ingest(real_data / "cloudsen12_figures", store, env_file=None, report=False)
    return store


@pytest.fixture(scope="session")
def trained_run(cs12_store, tmp_path_factory):
    """One short real training run shared by the tests that inspect its results."""
    from cloudseg.training.config import Config
    from cloudseg.training.train import train

    out = tmp_path_factory.mktemp("run") / "tiny"
    config = Config.from_dict(tiny_config(cs12_store, out))
    result = train(config)
    yield config, result
    shutil.rmtree(out, ignore_errors=True)

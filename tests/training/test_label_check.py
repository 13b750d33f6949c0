"""Label issues: a chip whose label contradicts the image comes first; labels stay."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from browser import chromium, load

from cloudseg.backend.errors import CloudsegError


@pytest.mark.slow
@pytest.mark.real_data
def test_the_contradicted_chip_ranks_first_and_the_labels_stay(planted_store, tmp_path, venv_env):
    import rasterio

    from cloudseg.backend.store.dataset import open_dataset

    store, cloudiest, stored = planted_store
    run = subprocess.run(
        [
            "cloudseg",
            "labels",
            "check",
            str(store),
            "--model",
            "ukis-csmask-6b-l1c",
            "--out",
            str(tmp_path / "out"),
            "--json",
        ],
        capture_output=True,
        text=True,
        env=venv_env,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    first = result["scenes"][0]
    assert first["scene"] == cloudiest and first["rank"] == 1
    assert first["flagged_share"] > 0.2  # its cloud is flagged as "labeled clear"
    assert [e["score"] for e in result["scenes"]] == sorted(e["score"] for e in result["scenes"])
    assert next(iter(result["confusions"])) == "clear -> cloud"
    saved = json.loads((tmp_path / "out" / "label_issues.json").read_text())
    assert saved["scenes"] == result["scenes"]
    dataset = open_dataset(store)
    for name, mask in stored.items():
        np.testing.assert_array_equal(dataset.read(name)[1], mask)  # never changed
        quality = dataset.item(name).properties["cloudseg:label_quality"]
        entry = next(e for e in result["scenes"] if e["scene"] == name)
        assert quality["score"] == entry["score"] and quality["model"] == "ukis-csmask-6b-l1c"
    with rasterio.open(first["issue_raster"]) as issues:
        item = dataset.item(cloudiest).properties
        assert tuple(issues.transform)[:6] == tuple(item["proj:transform"][:6])
        flagged = issues.read(1)
    assert set(np.unique(flagged)) <= {0, 1, 255}
    assert (flagged == 1).mean() == pytest.approx(first["flagged_share"], abs=1e-3)


@pytest.mark.slow
@pytest.mark.real_data
def test_the_dashboard_renders_its_plots_in_chromium_without_errors(
    checked_store, tmp_path, venv_env
):
    store, cloudiest, _ = checked_store
    page = tmp_path / "dashboard.html"
    run = subprocess.run(
        ["cloudseg", "report", str(store), "--out", str(page), "--json"],
        capture_output=True, text=True, env=venv_env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["dashboard"] == str(page)
    assert "<script src=" not in page.read_text()  # self-contained: nothing fetched
    browser = chromium()
    try:
        errors = load(browser, page, plots=6)
        plots = browser.execute_script(
            "return Array.from(document.querySelectorAll('.plot')).map(p => "
            "[p.id, p.querySelectorAll('.main-svg').length, p.querySelectorAll('.point').length])"
        )
        images = browser.execute_script(
            "return Array.from(document.images).map(i => i.naturalWidth)"
        )
        rows = browser.execute_script(
            "return Array.from(document.querySelectorAll('#quality-table tr')).slice(1)"
            ".map(r => r.cells[0].textContent)"
        )
    finally:
        browser.quit()
    assert errors == []
    drawn = {name: (svgs, points) for name, svgs, points in plots}
    assert set(drawn) == {"balance", "fractions", "bands", "map", "months", "quality"}
    assert all(svgs > 0 for svgs, _ in drawn.values())
    assert drawn["balance"][1] == 3 and drawn["bands"][1] == 6  # one bar per class, per band
    assert drawn["quality"][1] == 4  # one bar per scene checked
    assert rows[0] == cloudiest and len(rows) == 4  # worst first
    assert images and all(width > 0 for width in images)  # the worst windows' thumbnails


@pytest.mark.real_data
def test_windows_and_flags_are_recorded_and_the_table_matches(checked_store):
    from cloudseg.backend.store.dataset import open_dataset

    store, cloudiest, result = checked_store
    assert [e["scene"] for e in result.flagged()] == [cloudiest]
    worst = result.scenes[0]
    assert worst["windows"][0]["flagged_share"] > 0.2 and len(worst["windows"][0]["window"]) == 4
    shares = [w["flagged_share"] for w in worst["windows"]]
    assert shares == sorted(shares, reverse=True) and len(shares) <= 4  # 128 px chip, 64 px grid
    table = (result.report.parent / "label_issues.csv").read_text().splitlines()
    assert table[0].startswith("rank,scene,score") and table[1].split(",")[1] == cloudiest
    quality = open_dataset(store).item(cloudiest).properties["cloudseg:label_quality"]
    assert quality["flagged"] is True and quality["windows"] == worst["windows"]


@pytest.mark.slow
@pytest.mark.real_data
def test_a_report_written_with_a_relative_out_opens_its_rasters_from_anywhere(
    real_data, tmp_path, monkeypatch
):
    """``--out check`` as the docs write it: the review finds the flags from any folder."""
    import rasterio
    from review_store import checked, mask_values_store

    from cloudseg.backend.active.review import open_window, review_queue

    store = mask_values_store(real_data, tmp_path)
    report = checked(store, tmp_path)  # run from tmp_path with out="check"
    entry = json.loads(report.read_text())["scenes"][0]
    assert Path(entry["issue_raster"]).is_absolute() and Path(entry["issue_raster"]).is_file()
    assert Path(entry["predicted_raster"]).is_absolute()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # QGIS runs from anywhere
    _, queue = review_queue(report)
    files = open_window(report, queue[0], tmp_path / "review")
    assert files.missing == [] and files.flagged is not None and files.model is not None
    with rasterio.open(files.flagged) as flagged:
        values = flagged.read(1)
    assert (values == 1).sum() / (values != 255).sum() == pytest.approx(
        queue[0].flagged_share, abs=1e-3
    )


@pytest.mark.real_data
def test_a_cancelled_check_leaves_the_earlier_report_and_creates_nothing(checked_store, tmp_path):
    import shutil

    from cloudseg.backend.errors import CancelledError
    from cloudseg.training.label_check import check_labels

    store, _, result = checked_store
    out = result.report.parent
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    calls = []

    def cancel_at_third_poll() -> bool:
        calls.append(1)
        return len(calls) >= 3

    with pytest.raises(CancelledError):
        check_labels(copy, "ukis-csmask-6b-l1c", out, cancelled=cancel_at_third_poll)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    with pytest.raises(CancelledError):
        check_labels(copy, "ukis-csmask-6b-l1c", tmp_path / "new" / "out", cancelled=lambda: True)
    assert not (tmp_path / "new").exists()
    with pytest.raises(CloudsegError, match="inside the store"):
        check_labels(copy, "ukis-csmask-6b-l1c", copy / "report")
    with pytest.raises(CloudsegError, match="--folds needs --config"):
        check_labels(copy, None, tmp_path / "x", folds=2)


@pytest.mark.slow
@pytest.mark.real_data
def test_cross_validated_folds_predict_each_scene_with_a_model_that_did_not_see_it(
    planted_store, tmp_path
):
    import shutil

    from cloudseg.backend.store.dataset import open_dataset
    from cloudseg.training.config import Config
    from cloudseg.training.label_check import check_labels

    store, _, _ = planted_store
    shutil.copytree(store, tmp_path / "store")
    config = Config.from_dict({
        "data": {"store": "unused", "window": 64, "samples_per_epoch": 8, "normalization": "store"},
        "model": {"architecture": "Unet", "encoder": "resnet18"},
        "train": {"epochs": 1, "batch_size": 4, "seed": 3},
    })  # fmt: skip
    result = check_labels(tmp_path / "store", None, tmp_path / "out", folds=2, config=config)
    assert result.model.startswith("cross-validated, 2 folds")
    folds = result.folds
    predicted = sorted(s for fold in folds.values() for s in fold["predicted"])
    assert predicted == sorted(open_dataset(tmp_path / "store").scenes())  # each scene once
    for fold in folds.values():  # its model never saw (trained or validated on) its scenes
        seen = set(fold["trained_on"]) | set(fold["validated_on"])
        assert seen and not seen & set(fold["predicted"])
    for entry in result.scenes:
        assert entry["scene"] in folds[entry["model"]]["predicted"]
    assert {e["rank"] for e in result.scenes} == {1, 2, 3, 4}
    assert json.loads(result.report.read_text())["folds"] == folds


def test_the_label_quality_policy_reads_flags_and_reviews():
    from cloudseg.training.config import LabelQualityConfig
    from cloudseg.training.data import scene_labels

    props = {
        "cloudseg:label_quality": {
            "flagged_share": 0.3,
            "windows": [
                {"window": [0, 0, 64, 64], "flagged_share": 0.5},
                {"window": [0, 64, 64, 64], "flagged_share": 0.05},
            ],
        },
        "cloudseg:label_review": [{"window": [64, 0, 64, 64], "decision": "dropped"}],
    }
    keep = scene_labels(props, LabelQualityConfig())
    assert keep.ignored == [(64, 0, 64, 64)] and not keep.excluded and keep.weight == 1
    assert scene_labels(props, LabelQualityConfig(action="exclude")).excluded
    down = scene_labels(props, LabelQualityConfig(action="down_weight", weight=0.1))
    assert down.weight == 0.1 and not down.excluded
    windows = scene_labels(props, LabelQualityConfig(action="exclude", level="window"))
    assert windows.ignored == [(64, 0, 64, 64), (0, 0, 64, 64)] and not windows.excluded
    # Once its flagged window is accepted in review, the scene is trusted again.
    accepted = props | {
        "cloudseg:label_review": [{"window": [0, 0, 64, 64], "decision": "accepted"}]
    }
    assert not scene_labels(accepted, LabelQualityConfig(action="exclude")).excluded
    with pytest.raises(CloudsegError, match=r"label_quality\.action"):
        scene_labels(props, LabelQualityConfig(action="drop"))


@pytest.mark.slow
@pytest.mark.real_data
def test_training_leaves_out_or_down_weights_what_was_flagged(checked_store, tmp_path):
    import shutil

    from cloudseg.backend.store.dataset import open_dataset
    from cloudseg.backend.store.keys import item_key
    from cloudseg.training.config import Config
    from cloudseg.training.data import WindowDataset, usable_scenes
    from cloudseg.training.train import train

    store, cloudiest, result = checked_store
    shutil.copytree(store, tmp_path / "store")
    store = tmp_path / "store"
    others = [e["scene"] for e in result.scenes if e["scene"] != cloudiest]

    def config(**quality: Any) -> Config:
        return Config.from_dict({
            "output": str(tmp_path / f"run-{len(quality)}-{quality.get('action', '')}"),
            "data": {"store": str(store), "window": 64, "samples_per_epoch": 8,
                     "split": {"val_scenes": [others[0]]}, "label_quality": quality},
            "model": {"architecture": "Unet", "encoder": "resnet18"},
            "train": {"epochs": 1, "batch_size": 4, "seed": 3},
        })  # fmt: skip

    kept = train(config())
    assert cloudiest in kept.train_scenes
    excluded = train(config(action="exclude"))
    assert cloudiest not in excluded.train_scenes and excluded.model_path.is_file()
    dataset = open_dataset(store)
    down = config(action="down_weight", weight=0.2).data
    scenes, labels = usable_scenes(dataset, down)
    windows = WindowDataset(dataset, scenes, down, ["clear", "cloud", "cloud shadow"],
                            np.zeros(6), np.ones(6), labels)  # fmt: skip
    weights = {w.scene: weight for w, weight in zip(windows.windows, windows.weights, strict=True)}
    assert weights[cloudiest] == pytest.approx(0.2) and weights[others[0]] == 1
    # A window dropped in review is not trained on: its pixels read as unlabeled.
    item = json.loads(dataset.storage.read_bytes(item_key(others[1])))
    item["properties"]["cloudseg:label_review"] = [
        {"window": [0, 0, 64, 64], "decision": "dropped"}
    ]
    dataset.storage.write_bytes(item_key(others[1]), json.dumps(item).encode())
    keep = config().data
    scenes, labels = usable_scenes(dataset, keep)
    windows = WindowDataset(dataset, scenes, keep, ["clear", "cloud", "cloud shadow"],
                            np.zeros(6), np.ones(6), labels)  # fmt: skip
    index = {(w.scene, w.row, w.col): i for i, w in enumerate(windows.windows)}
    assert (others[1], 0, 0) not in index  # no labeled pixel left in it
    _, mask = windows[index[(others[1], 32, 32)]]  # half-window overlap
    assert (mask[:32, :32] == 255).all() and (mask[32:, 32:] != 255).any()

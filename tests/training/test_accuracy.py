"""The default run is as accurate as ukis-csmask's own CSmask on every labeled real scene.

Each scene is written as a user would have it (see ``dev/reference_scenes.py``) and
segmented by ``cloudseg segment`` with no options at all; CSmask runs on the same
reflectance. Per class, our IoU may not fall more than 0.005 below CSmask's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from reference_scenes import CLASSES, csmask_classes, labeled_scenes, score

from cloudseg.backend.inference.options import RunOptions
from cloudseg.backend.inference.segment import SegmentOptions, segment
from cloudseg.backend.models.registry import builtin_models, load_model
from cloudseg.training.evaluate import evaluate_rasters

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 0.005


@pytest.fixture(scope="module")
def scenes(real_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("labeled")
    return {scene.name: scene for scene in labeled_scenes(real_data, folder)}


def _iou(scene, prediction: np.ndarray) -> dict[str, float]:
    return {name: m["iou"] for name, m in score(scene, prediction)["per_class"].items()}


def _segment(venv_env, image: Path, out: Path, *options: str) -> np.ndarray:
    done = subprocess.run(
        ["cloudseg", "segment", str(image), str(out), "-q", *options],
        capture_output=True,
        text=True,
        env=venv_env,
    )
    assert done.returncode == 0, done.stderr
    with rasterio.open(out) as ds:
        return ds.read(1)


@pytest.mark.real_data
@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    ["ukis-s2-l1c", "ukis-s2-l1c-as-10m", "ukis-landsat5", "ukis-landsat7", "38cloud-landsat8"],
)
def test_the_default_run_is_as_accurate_as_csmask(scenes, name, tmp_path, venv_env):
    scene = scenes[name]
    ours = _iou(scene, _segment(venv_env, scene.image, tmp_path / "m.tif"))
    # CSmask picks its 6-band model for 6 bands and its 4-band model for 4, as we do.
    theirs = _iou(scene, csmask_classes(scene, len(scene.bands)))
    for name in ("cloud", "cloud shadow"):
        if name in scene.scored:
            assert ours[name] >= theirs[name] - TOLERANCE, (name, ours, theirs)
    assert ours["cloud"] > 0.7  # a real mask, not a degenerate one


@pytest.mark.real_data
@pytest.mark.slow
def test_preview_on_10m_input_costs_accuracy_that_native_keeps(scenes, tmp_path, venv_env):
    """Why the default is the input's grid: a 3x coarser run loses clouds and shadows."""
    scene = scenes["ukis-s2-l1c-as-10m"]
    assert scene.scored == CLASSES
    native = _iou(scene, _segment(venv_env, scene.image, tmp_path / "n.tif"))
    preview = _iou(
        scene, _segment(venv_env, scene.image, tmp_path / "p.tif", "--resolution", "preview")
    )
    assert preview["cloud"] < native["cloud"] - 0.02
    assert preview["cloud shadow"] < native["cloud shadow"] - 0.02


@pytest.mark.slow
@pytest.mark.real_data
def test_evaluation_scores_the_mask_segment_writes_with_thresholds(scenes, tmp_path):
    """Cloud and shadow thresholds move the metrics exactly as they move the mask."""
    scene, model = scenes["ukis-s2-l1c"], "ukis-csmask-6b-l1c"
    thresholds = {"cloud_threshold": 0.25, "shadow_threshold": 0.2}
    options = SegmentOptions(model=model, precision="fp32", **thresholds)
    segment(scene.image, tmp_path / "m.tif", options)
    with rasterio.open(tmp_path / "m.tif") as ds:
        written = _iou(scene, ds.read(1))

    def evaluated(options: RunOptions | None) -> dict[str, float]:
        evaluation = evaluate_rasters(
            model, [scene.image], [scene.labels], label_classes=list(CLASSES), options=options
        )
        return {name: evaluation.metrics["per_class"][name]["iou"] for name in written}

    assert evaluated(RunOptions(precision="fp32", **thresholds)) == pytest.approx(written, abs=1e-9)
    argmax = evaluated(None)
    assert abs(argmax["cloud shadow"] - written["cloud shadow"]) > 0.005


def _card_rows(card, config: str) -> dict[str, dict]:
    return {m["dataset"]: m for m in card.metrics if m["config"] == config}


@pytest.mark.real_data
def test_every_builtin_card_carries_measured_metrics_with_their_data(venv_env):
    done = subprocess.run(
        ["cloudseg", "models", "--json"], capture_output=True, text=True, env=venv_env
    )
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert {m["name"] for m in listed} == {m.card.name for m in builtin_models()}
    benchmark = json.loads((ROOT / "dev" / "results" / "accuracy.json").read_text())
    for model in listed:
        defaults = [m for m in model["metrics"] if m["config"] == "default-fp32"]
        assert defaults, f"{model['name']} has no measured default"
        for entry in model["metrics"]:
            assert entry["data"] and entry["measured"] and entry["reference"]["tool"]
            assert set(entry["iou"]) == set(entry["scored"])
            # The card holds what the benchmark measured, not numbers typed in.
            row = next(
                r
                for r in benchmark["rows"]
                if (r["model"], r["dataset"], r["config"])
                == (model["name"], entry["dataset"], entry["config"])
            )
            assert entry["iou"] == row["iou"]
        assert "cloud IoU" in model["accuracy"] and "cloud shadow IoU" in model["accuracy"]
    text = subprocess.run(["cloudseg", "models"], capture_output=True, text=True, env=venv_env)
    assert text.stdout.count("accuracy: cloud IoU") == len(listed)


@pytest.mark.real_data
@pytest.mark.slow
def test_a_card_metric_is_what_the_engine_measures_today(scenes):
    """Re-measure one card entry: the cards are not stale."""
    scene = scenes["ukis-s2-l1c"]
    card = load_model("ukis-csmask-6b-l1c").card
    recorded = _card_rows(card, "default-fp32")[scene.name]
    evaluation = evaluate_rasters(
        card.name, [scene.image], [scene.labels], label_classes=list(CLASSES)
    )
    for name, value in recorded["iou"].items():
        assert evaluation.metrics["per_class"][name]["iou"] == pytest.approx(value, abs=1e-3)


@pytest.mark.real_data
@pytest.mark.slow
def test_the_accuracy_benchmark_writes_json_docs_and_leaves_cards_alone(real_data, tmp_path):
    cards_before = {p: p.read_bytes() for p in (ROOT / "resources" / "models").glob("*.json")}
    out, docs = tmp_path / "accuracy.json", tmp_path / "accuracy.md"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "dev" / "benchmark_accuracy.py"),
            "--data",
            str(real_data),
            "--out",
            str(out),
            "--docs",
            str(docs),
            "--models",
            "ukis-csmask-4b-l1c",
            "--configs",
            "default-fp32",
            "preview",
            "--no-offsets",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["machine"]["cpu_model"] and report["versions"]["ukis-csmask"]
    rows = {(r["dataset"], r["config"]): r for r in report["rows"]}
    # CSmask is a row of every scene the model runs on; the 4-band model fits all five.
    scenes = {r["dataset"] for r in report["rows"]}
    assert len(scenes) == 5
    for scene in scenes:
        csmask = rows[(scene, "CSmask (4-band model)")]
        default = rows[(scene, "default-fp32")]
        assert set(default["iou"]) == set(csmask["iou"])
        assert default["iou_minus_csmask"] == {
            k: round(default["iou"][k] - csmask["iou"][k], 4) for k in default["iou"]
        }
    # Preview runs only where the input is finer than the model's 30 m.
    assert {s for s, c in rows if c == "preview"} == {"ukis-s2-l1c-as-10m"}
    text = docs.read_text()
    assert "| ukis-csmask-4b-l1c | CSmask (4-band model) |" in text
    assert "| ukis-csmask-4b-l1c | `preview` |" in text
    assert cards_before == {
        p: p.read_bytes() for p in (ROOT / "resources" / "models").glob("*.json")
    }

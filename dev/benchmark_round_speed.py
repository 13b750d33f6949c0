#!/usr/bin/env python3
"""How long one active-learning round takes: 8 boxes of 128 px, from the CLI and inside QGIS.

The labeled ukis-csmask Sentinel-2 scene (512 x 512 px) gets 8 proposed boxes of 128 px,
labeled from its true labels (``label_box``) and marked done; then one round
(``fine_tune``: store, train, judge, register) runs from a fresh copy of that project:

- ``cli``: ``cloudseg fine-tune`` as a whole process on an otherwise idle machine;
- ``cli-while-qgis-renders``: the same while a QGIS process renders the scene's map
  over and over (as an analyst pans and zooms);
- ``qgis-task``: inside a QGIS process, the round as the label dock runs it (the
  plugin's ``BackendTask`` on QGIS's task manager) while the main thread renders.

Writes ``--out`` (each run's seconds, the round's own seconds, the machine, versions).

Usage: benchmark_round_speed.py --data ../shared/data/real --out dev/results/round_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmark_common import write_results

MODEL = "ukis-csmask-4b-l1c"

RENDER = r"""
import sys, time
from qgis.core import QgsApplication, QgsMapRendererSequentialJob, QgsMapSettings, QgsRasterLayer
from qgis.PyQt.QtCore import QSize
app = QgsApplication([], False); app.initQgis()
layer = QgsRasterLayer(sys.argv[1], "scene")
settings = QgsMapSettings(); settings.setLayers([layer]); settings.setOutputSize(QSize(1600, 1000))
extent = layer.extent()
end = time.time() + float(sys.argv[2]); frames = 0
while time.time() < end:
    extent.scale(0.9 if frames % 10 < 5 else 1 / 0.9)  # zoom in and out
    settings.setExtent(extent)
    job = QgsMapRendererSequentialJob(settings); job.start(); job.waitForFinished(); frames += 1
print(frames)
"""

IN_QGIS = r"""
import json, sys, time
from qgis.core import (QgsApplication, QgsMapRendererSequentialJob, QgsMapSettings,
    QgsRasterLayer)
from qgis.PyQt.QtCore import QSize
app = QgsApplication([], False); app.initQgis()
from cloudseg.cloudseg_plugin.tasks import BackendTask
from cloudseg.training.label_round import fine_tune
project, scene = sys.argv[1], sys.argv[2]
seen = {}
def work(progress, cancelled):
    return fine_tune(project, scene, progress=progress, cancelled=cancelled)
def done(task):
    seen["result"] = task.result
started = time.perf_counter()
task = BackendTask("round", work, done)
QgsApplication.taskManager().addTask(task)
layer = QgsRasterLayer(scene, "scene")
settings = QgsMapSettings(); settings.setLayers([layer]); settings.setOutputSize(QSize(1600, 1000))
extent = layer.extent(); frames = 0
while "result" not in seen and time.perf_counter() - started < 600:
    extent.scale(0.9 if frames % 10 < 5 else 1 / 0.9)
    settings.setExtent(extent)
    job = QgsMapRendererSequentialJob(settings); job.start(); job.waitForFinished(); frames += 1
    app.processEvents()
seconds = time.perf_counter() - started
result = seen.get("result")
print(json.dumps({"seconds": round(seconds, 1), "frames": frames,
                  "round_seconds": result.round.seconds if result else None,
                  "error": task.error}))
"""


def prepare(data: Path, work: Path) -> tuple[Path, Path]:
    """The scene file and a label project with 8 boxes of 128 px labeled from the truth."""
    from reference_scenes import labeled_scenes

    from cloudseg.backend.active.labels import label_box
    from cloudseg.backend.active.project import LabelProject
    from cloudseg.backend.active.propose import propose
    from cloudseg.backend.inference.segment import SegmentOptions, segment

    scene = next(labeled_scenes(data, work / "scenes"))
    doubt = work / "doubt.tif"
    segment(scene.image, work / "mask.tif", SegmentOptions(model=MODEL, uncertainty=doubt))
    project = work / "template.gpkg"
    propose(doubt, project, box=128, count=8, scene=scene.image.stem)
    boxes = LabelProject(project).read().proposals
    for box in boxes:
        label_box(project, box.fid, scene.labels)
    assert len(boxes) == 8
    return scene.image, project


def fresh(project: Path, work: Path, name: str) -> Path:
    """A copy of the labeled project with no store and no rounds yet."""
    copy = work / name / project.name
    copy.parent.mkdir()
    shutil.copy(project, copy)
    return copy


def main() -> int:
    """Time the rounds and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("dev/results/round_speed.json"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    python = Path(sys.executable)
    cloudseg = python.with_name("cloudseg")
    env = os.environ | {"QT_QPA_PLATFORM": "offscreen"}
    runs: dict[str, list[dict]] = {"cli": [], "cli-while-qgis-renders": [], "qgis-task": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env["CLOUDSEG_MODELS_DIR"] = os.environ["CLOUDSEG_MODELS_DIR"] = str(work / "models")
        scene, template = prepare(args.data, work)
        for i in range(args.repeats):
            for mode in runs:
                project = fresh(template, work, f"{mode}-{i}")
                render = None
                if mode == "cli-while-qgis-renders":
                    render = subprocess.Popen(
                        [python, "-c", RENDER, str(scene), "300"],
                        env=env,
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                    time.sleep(3)  # QGIS started and rendering
                started = time.perf_counter()
                if mode == "qgis-task":
                    done = subprocess.run(
                        [python, "-c", IN_QGIS, str(project), str(scene)],
                        env=env,
                        capture_output=True,
                        text=True,
                        cwd=root,
                    )
                    seconds = round(time.perf_counter() - started, 1)
                    line = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "{}"
                    runs[mode].append({"process_seconds": seconds} | json.loads(line))
                else:
                    done = subprocess.run(
                        [cloudseg, "fine-tune", project, scene, "--json", "--quiet"],
                        env=env,
                        capture_output=True,
                        text=True,
                    )
                    seconds = round(time.perf_counter() - started, 1)
                    result = json.loads(done.stdout) if done.returncode == 0 else {}
                    runs[mode].append(
                        {
                            "seconds": seconds,
                            "round_seconds": result.get("round", {}).get("seconds"),
                            "adopted": result.get("adopted"),
                            "error": done.stderr.strip()[-300:] if done.returncode else "",
                        }
                    )
                if render is not None:
                    render.terminate()
                    render.communicate()
                print(mode, runs[mode][-1], file=sys.stderr, flush=True)
    summary = {
        mode: {
            "median_seconds": sorted(r.get("seconds") or 0 for r in rows)[len(rows) // 2],
            "max_seconds": max(r.get("seconds") or 0 for r in rows),
        }
        for mode, rows in runs.items()
    }
    report = {
        "benchmark": "one active-learning round (8 boxes of 128 px labeled from the truth, "
        "ukis-csmask Sentinel-2 scene, default recipe) as a whole process",
        "model": MODEL,
        "summary": summary,
        "runs": runs,
    }
    write_results(report, ("cloudseg", "torch", "numpy"), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""No file a user may have been given runs code: every checkpoint is read weights-only.

Each test plants a checkpoint whose pickle would create a marker file when unpickled
(``os.system``, ``exec``, ``subprocess.call``, ``Path.touch``; in the state dict, deep in
Lightning's loop state, or as the whole file; torch's zip format, its legacy format, or
a bare pickle), runs a real ``cloudseg`` command on it, and checks that the marker never
appears, that the command says so in one line, and that no file changed. A control test
shows that the same files do run their code under ``torch.load(weights_only=False)``.
"""

from __future__ import annotations

import json
import os
import pickle
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import error_line, snapshot

pytestmark = pytest.mark.real_data

#: Words of the one line that refuses a checkpoint which would run code.
REFUSED = "is not a torch checkpoint cloudseg can load"


class _Call:
    """A pickle payload: unpickling it calls ``function(*args)``."""

    def __init__(self, function: Callable[..., Any], *args: Any) -> None:
        self.function, self.args = function, args

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return self.function, self.args


def payload(kind: str, marker: Path) -> _Call:
    """An object whose unpickling creates ``marker``, by one of several routes."""
    return {
        "os.system": _Call(os.system, f"touch {shlex.quote(str(marker))}"),
        "exec": _Call(exec, f"open({str(marker)!r}, 'w').close()"),
        "subprocess": _Call(subprocess.call, ["touch", str(marker)]),
        "Path.touch": _Call(Path.touch, Path(marker)),
    }[kind]


def write_payload(
    path: Path, marker: Path, kind: str = "os.system", where: str = "state_dict", form: str = "zip"
) -> Path:
    """Write a checkpoint at ``path`` that would create ``marker`` if unpickled.

    Args:
        path: The file to write.
        marker: The file the payload creates.
        kind: How the payload runs code (see :func:`payload`).
        where: ``state_dict`` (beside real weights), ``loops`` (deep in what Lightning
            stores besides them, next to every key a resume needs) or ``whole`` (the file
            is the payload).
        form: ``zip`` (torch.save), ``legacy`` (torch's pre-1.6 format) or ``pickle``.
    """
    import torch

    code = payload(kind, marker)
    weights = {"weight": torch.zeros(3, 3)}
    data: Any = {
        "state_dict": weights | {"bias": code},
        "loops": {"fit_loop": {"state_dict": {"epoch_progress": [code]}}},
        "whole": code,
    }[where]
    if where == "loops":
        data = {"state_dict": weights, "optimizer_states": [], "epoch": 0, "loops": data}
    if form == "pickle":
        path.write_bytes(pickle.dumps(data, protocol=2))
    else:
        torch.save(data, path, _use_new_zipfile_serialization=form == "zip")
    return path


@pytest.mark.slow
def test_the_planted_payloads_do_run_code_when_unpickled(tmp_path, venv_env):
    # The control: loading these files the unsafe way creates the markers; so a test
    # below in which the marker stays absent shows code was refused, not a dud payload.
    cases = [
        (kind, where, form)
        for kind in ("os.system", "exec", "subprocess", "Path.touch")
        for where, form in (("state_dict", "zip"), ("loops", "legacy"), ("whole", "pickle"))
    ]
    files = []
    for i, (kind, where, form) in enumerate(cases):
        marker = tmp_path / f"marker-{i}"
        files.append((write_payload(tmp_path / f"p{i}.ckpt", marker, kind, where, form), marker))
    script = (  # a bare pickle runs its code, then torch finds no magic number: go on
        "import contextlib, sys, torch\n"
        "for f in sys.argv[1:]:\n"
        "    with contextlib.suppress(RuntimeError):\n"
        "        torch.load(f, weights_only=False)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, *(str(f) for f, _ in files)],
        env=venv_env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert [m.exists() for _, m in files] == [True] * len(files)


# -- cloudseg train --resume ------------------------------------------------------------------
@pytest.fixture(scope="session")
def store(real_data, tmp_path_factory) -> Path:
    """The labeled CloudSEN12 patches ingested into a local store."""
    from cloudseg.backend.store.ingest import ingest

    path = tmp_path_factory.mktemp("security-store") / "store"
    ingest(real_data / "cloudsen12_figures", path, env_file=None, report=False)
    return path


def write_config(folder: Path, store: Path, epochs: int = 1, **model: str) -> Path:
    """A tiny training config whose run folder is ``folder/run``."""
    config = {
        "name": "tiny",
        "output": str(folder / "run"),
        "data": {
            "store": str(store),
            "bands": ["B02", "B03", "B04"],
            "classes": ["clear", "cloud", "cloud shadow"],
            "window": 128,
            "samples_per_epoch": 8,
            "product_level": "L1C",
            "split": {"val_scenes": ["ROI_2507-low-cloudy"]},
        },
        "model": {"architecture": "Unet", "encoder": "resnet18"} | model,
        "train": {"epochs": epochs, "batch_size": 4, "lr": 1e-3, "seed": 7},
    }
    path = folder / f"tiny-{epochs}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def resumable(path: Path) -> Path:
    """A checkpoint with every key a resume needs, and nothing that runs code."""
    import torch

    keys = {"optimizer_states": [], "loops": {}, "epoch": 0, "global_step": 0}
    torch.save({"state_dict": {"weight": torch.zeros(3)}} | keys, path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "kind", "where", "form"),
    [
        ("last.ckpt", "os.system", "loops", "zip"),
        ("last.ckpt", "exec", "state_dict", "legacy"),
        ("last.ckpt", "Path.touch", "whole", "pickle"),
        ("best.ckpt", "subprocess", "state_dict", "zip"),  # read again at the end of a run
    ],
)
def test_resume_from_a_checkpoint_that_would_run_code_is_refused(
    workspace, store, name, kind, where, form
):
    config = write_config(workspace.root, store, epochs=2)
    checkpoints = workspace.root / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    marker = workspace.root.parent / "marker"
    resumable(checkpoints / "last.ckpt")
    write_payload(checkpoints / name, marker, kind, where, form)
    (workspace.root / "run" / "config.yaml").write_text("name: tiny\n")
    before = workspace.snapshot()
    line = error_line(workspace.cli("train", "--config", config, "--resume", "-q"))
    assert f"{checkpoints / name} {REFUSED}" in line and "nothing in it was run" in line
    assert not marker.exists()
    assert workspace.snapshot() == before


@pytest.mark.slow
def test_resume_from_a_file_that_is_no_training_checkpoint_is_refused(workspace, store, unchanged):
    import torch

    config = write_config(workspace.root, store, epochs=2)
    checkpoints = workspace.root / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save({"weight": torch.zeros(3)}, checkpoints / "last.ckpt")  # weights only: no state
    before = workspace.snapshot()
    line = error_line(workspace.cli("train", "--config", config, "--resume", "-q"))
    assert "last.ckpt is not a training checkpoint to resume from" in line
    assert workspace.snapshot() == before


@pytest.mark.slow
def test_a_genuine_run_resumes_and_its_checkpoints_are_read_weights_only(workspace, store):
    # One epoch, then resumed to two: Lightning reads last.ckpt through the safe loader.
    import torch

    last = workspace.root / "run" / "checkpoints" / "last.ckpt"
    first = workspace.cli("train", "--config", write_config(workspace.root, store), "-q")
    assert first.returncode == 0, first.stderr
    first_epoch = torch.load(last, weights_only=True)["epoch"]  # plain data: loads safely
    config = write_config(workspace.root, store, epochs=2)
    resumed = workspace.cli("train", "--config", config, "--resume", "-q", "--json", timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout)
    assert result["epochs"] == 2 and len(result["epoch_losses"]) == 1
    assert "Restored all states from the checkpoint" in resumed.stderr
    assert torch.load(last, weights_only=True)["epoch"] > first_epoch
    logs = workspace.root / "run" / "logs"
    assert (logs / "metrics.csv").is_file() and any(logs.glob("resumed-*/metrics.csv"))


# -- every other command that takes a checkpoint ------------------------------------------------
@pytest.fixture(scope="session")
def card_json() -> str:
    """A real model card (the 4-band model's, as a torch model) to put beside a payload."""
    from cloudseg.backend.models.registry import load_model

    return replace(load_model("ukis-csmask-4b-l2a").card, name="planted", format="torch").to_json()


def _command(name: str, model: str) -> list[str]:
    return {
        "segment": ["segment", "scene.tif", "m.tif", "--model", model, "-q"],
        "explain": ["explain", "scene.tif", "e.tif", "--model", model, "-q"],
        "propose": ["propose", "scene.tif", "p.gpkg", "--model", model, "-q"],
        "segment-batch": ["segment-batch", "chip", "--out", "batch", "--model", model, "-q"],
        "evaluate": [
            *("evaluate", "--model", model, "--images", "scene.tif"),
            *("--labels", "out/mask.tif", "--out", "report", "-q"),
        ],
        "export": ["export", model, "m.onnx"],
    }[name]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "kind", "where", "form"),
    [
        ("segment", "os.system", "state_dict", "zip"),
        ("segment", "exec", "whole", "pickle"),
        ("explain", "subprocess", "state_dict", "legacy"),
        ("propose", "Path.touch", "state_dict", "zip"),
        ("segment-batch", "os.system", "loops", "zip"),
        ("evaluate", "exec", "state_dict", "zip"),
        ("export", "os.system", "whole", "legacy"),
    ],
)
def test_a_model_that_would_run_code_is_refused_by_every_command(
    workspace, command, kind, where, form
):
    # The run folder's best.ckpt, as a user would hand it to each command.
    marker = workspace.root.parent / "marker"
    model = workspace.root / "run" / "checkpoints" / "best.ckpt"
    model.parent.mkdir(parents=True)
    write_payload(model, marker, kind, where, form)
    before = workspace.snapshot()
    line = error_line(workspace.cli(*_command(command, "run/checkpoints/best.ckpt")))
    assert f"best.ckpt {REFUSED}" in line
    assert not marker.exists()
    assert workspace.snapshot() == before


@pytest.mark.slow
@pytest.mark.parametrize("command", ["segment", "explain", "export"])
def test_a_payload_with_a_valid_card_beside_it_is_refused_when_its_weights_are_read(
    workspace, card_json, command
):
    # The card is read from the JSON beside the file: the pickle is met only later.
    marker = workspace.root.parent / "marker"
    write_payload(workspace.root / "planted.pt", marker, "exec")
    (workspace.root / "planted.pt.card.json").write_text(card_json)
    before = workspace.snapshot()
    line = error_line(workspace.cli(*_command(command, "planted.pt")))
    assert f"planted.pt {REFUSED}" in line
    assert not marker.exists()
    assert workspace.snapshot() == before


@pytest.mark.slow
def test_a_registered_model_that_would_run_code_is_refused_by_name(workspace, card_json):
    models = workspace.root.parent / "models"
    models.mkdir()
    marker = workspace.root.parent / "marker"
    write_payload(models / "planted.pt", marker, "os.system", "loops")
    (models / "planted.pt.card.json").write_text(card_json)
    workspace.env["CLOUDSEG_MODELS_DIR"] = str(models)
    before = workspace.snapshot() | {f"models/{k}": v for k, v in snapshot(models).items()}
    line = error_line(workspace.cli("segment", "scene.tif", "m.tif", "--model", "planted", "-q"))
    assert f"planted.pt {REFUSED}" in line
    assert not marker.exists()
    assert workspace.snapshot() | {f"models/{k}": v for k, v in snapshot(models).items()} == before


@pytest.mark.slow
def test_a_starting_model_that_would_run_code_is_refused_by_train(workspace, store):
    marker = workspace.root.parent / "marker"
    write_payload(workspace.root / "start.pt", marker, "subprocess")
    config = write_config(workspace.root, store, init=str(workspace.root / "start.pt"))
    before = workspace.snapshot()
    line = error_line(workspace.cli("train", "--config", config, "-q"))
    assert f"start.pt {REFUSED}" in line
    assert not marker.exists()
    assert workspace.snapshot() == before  # no run folder either


@pytest.mark.slow
def test_label_check_refuses_a_model_that_would_run_code_and_leaves_the_store(workspace, store):
    stored = workspace.root / "store"
    shutil.copytree(store, stored)
    marker = workspace.root.parent / "marker"
    write_payload(workspace.root / "planted.pt", marker, "Path.touch")
    before = workspace.snapshot()
    args = ["labels", "check", "store", "--model", "planted.pt", "--out", "check", "-q"]
    line = error_line(workspace.cli(*args))
    assert f"planted.pt {REFUSED}" in line
    assert not marker.exists()
    assert workspace.snapshot() == before  # the Items are not annotated


@pytest.fixture
def label_project(workspace, labeled_s2) -> tuple[Path, Path]:
    """A label project in the workspace with two boxes labeled, and its scene."""
    from cloudseg.backend.active.labels import label_box
    from cloudseg.backend.active.project import LabelProject
    from cloudseg.backend.active.propose import propose

    scene, doubt = labeled_s2
    project = workspace.root / "coast.gpkg"
    propose(doubt, project, box=64, count=4, scene=scene.image.stem)
    for proposal in LabelProject(project).read().proposals[:2]:
        label_box(project, proposal.fid, scene.labels)
    return project, scene.image


@pytest.mark.slow
@pytest.mark.parametrize("command", ["fine-tune", "labels-to-store"])
def test_the_label_loop_refuses_a_model_that_would_run_code(workspace, label_project, command):
    project, scene = label_project
    marker = workspace.root.parent / "marker"
    write_payload(workspace.root / "planted.pt", marker, "os.system")
    args = {
        "fine-tune": ["fine-tune", project, scene, "--model", "planted.pt", "-q"],
        "labels-to-store": ["labels-to-store", project, scene, "lstore", "--model", "planted.pt"],
    }[command]
    before = workspace.snapshot()
    line = error_line(workspace.cli(*args))
    assert f"planted.pt {REFUSED}" in line
    assert not marker.exists()
    assert workspace.snapshot() == before


@pytest.mark.slow
@pytest.mark.real_data
@pytest.mark.parametrize(
    "item_id", ["../../../../{victim}/victim", "/{victim}/victim", "a/../../b"]
)
def test_a_stac_item_id_never_becomes_a_path(real_data, tmp_path, venv_env, item_id):
    """Issue 39, item 2: an Item's id names the run's own VRT, made safe, inside its folder."""
    victim = tmp_path / "elsewhere"
    victim.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    chip = real_data / "oncloudn_l2a" / "adwp"
    item = {
        "type": "Feature", "stac_version": "1.0.0", "id": item_id.format(victim=victim),
        "geometry": None, "properties": {"datetime": "2020-01-01T00:00:00Z"}, "links": [],
        "assets": {b: {"href": str(chip / f"{b}.tif"), "type": "image/tiff"}
                   for b in ("B02", "B03", "B04", "B08")},
    }  # fmt: skip
    (work / "item.json").write_text(json.dumps(item))
    done = subprocess.run(
        ["cloudseg", "segment", "item.json", "m.tif", "--product-level", "L2A", "-q"],
        cwd=work, env=venv_env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert list(victim.iterdir()) == []
    assert sorted(p.name for p in work.iterdir()) == ["item.json", "m.tif"]
    assert not list(tmp_path.glob("*.vrt")) and not Path("/victim.vrt").exists()

"""The wheel built from the checkout: every package of the tree in it, and a label round installed.

The wheel (built once, in ``conftest.py``) is installed (not editable) into a fresh
virtual environment that sees the project's dependencies through a ``.pth`` line to
``.venv``'s site-packages, so torch is not downloaded again; ``.venv``'s editable
``cloudseg`` is never what gets imported.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import sysconfig
import zipfile
from contextlib import closing
from pathlib import Path

import pytest
from package_tree import tree_data, tree_modules, tree_packages

pytestmark = pytest.mark.slow

BASE = "ukis-csmask-4b-l1c"
OFFLINE = ("--no-deps", "--no-index", "-q")  # nothing downloaded, dependencies aside
_WHERE = """
import importlib, importlib.metadata, importlib.util, json, sys
import cloudseg
origins = {name: importlib.util.find_spec(name).origin for name in sys.argv[1:]}
dist = importlib.metadata.distribution("cloudseg")
print(json.dumps({
    "file": cloudseg.__file__,
    "origins": origins,
    "dist": str(dist.locate_file("")),
    "direct_url": dist.read_text("direct_url.json"),
}))
"""


def _pip(*args: str) -> None:
    """Run .venv's pip; fail with its error output."""
    run = subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> dict[str, Path]:
    """A fresh virtualenv with the wheel installed in it: its folder, python and site-packages."""
    env_dir = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(env_dir)],
        check=True,
        timeout=120,
    )
    python = env_dir / "bin" / "python"
    # Installed before the dependencies are visible: pip then sees no other cloudseg.
    _pip("--python", str(python), "install", *OFFLINE, str(wheel))
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # .venv's site-packages as a plain path entry: its own .pth files (the editable
    # cloudseg finder among them) are not run from there.
    dependencies = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (site / "cloudseg-test-dependencies.pth").write_text("\n".join(dependencies) + "\n")
    return {"env": env_dir, "python": python, "site": site}


def _env(installed: dict[str, Path], models: Path) -> dict[str, str]:
    """The environment of a user who activated the fresh virtualenv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join([str(installed["env"] / "bin"), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(installed["env"])
    env["CLOUDSEG_MODELS_DIR"] = str(models)
    return env


def test_the_wheel_holds_every_package_module_and_data_file_of_the_tree(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = tree_packages()
    assert {"cloudseg", "cloudseg.backend", "cloudseg.training"} <= set(packages)
    missing = [p for p in packages if p.replace(".", "/") + "/__init__.py" not in names]
    assert missing == [], f"packages of the tree not in the wheel: {missing}"
    missing = [m for m in tree_modules() if f"cloudseg/{m}" not in names]
    assert missing == [], f"modules of the tree not in the wheel: {missing}"
    data = tree_data()
    assert "metadata.txt" in data and "resources/icons/cloudseg.svg" in data
    missing = [d for d in data if f"cloudseg/{d}" not in names]
    assert missing == [], f"package data not in the wheel: {missing}"
    top = {name.split("/")[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"cloudseg"}
    for name in names:
        assert not name.endswith((".pyc", "/setup.py")), name
        assert not {"tests", "scripts", "dev", "docs"} & set(name.split("/")), name
    (entry_points,) = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "cloudseg = cloudseg.backend.cli:main" in text


def test_the_installed_package_is_the_wheel_not_the_checkout(installed, tmp_path):
    packages = tree_packages()
    where = subprocess.run(
        [str(installed["python"]), "-c", _WHERE, *packages],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(installed, tmp_path),
        timeout=120,
    )
    assert where.returncode == 0, where.stderr
    found = json.loads(where.stdout)
    site = installed["site"]
    assert Path(found["file"]) == site / "cloudseg" / "__init__.py"
    for name, origin in found["origins"].items():
        assert Path(origin).is_relative_to(site), (name, origin)
    assert Path(found["dist"]) == site
    assert '"editable": true' not in (found["direct_url"] or "")


@pytest.mark.real_data
def test_the_installed_command_runs_a_label_round_outside_the_checkout(
    installed, real_data, tmp_path
):
    """Segment, propose, label 3 boxes from the truth, store them, fine-tune, use the version."""
    import rasterio
    from reference_scenes import labeled_scenes

    scene = next(labeled_scenes(real_data, tmp_path / "scene"))  # ukis Sentinel-2, labeled
    work, models = tmp_path / "work", tmp_path / "models"
    work.mkdir()
    env = _env(installed, models)
    command = installed["env"] / "bin" / "cloudseg"
    assert command.is_file()

    def cloudseg(*args: object) -> subprocess.CompletedProcess[str]:
        run = subprocess.run(
            [str(command), *map(str, args)],
            capture_output=True,
            text=True,
            cwd=work,
            env=env,
            timeout=300,
        )
        assert run.returncode == 0, f"cloudseg {args[0]}: {run.stderr}"
        return run

    cloudseg("segment", scene.image, "mask.tif", "--model", BASE, "--uncertainty", "doubt.tif")
    # The shadow geometry step from the installed package: the sun estimated from the scene.
    said = cloudseg("segment", scene.image, "mask-sg.tif", "--model", BASE, "--shadow-geometry")
    assert "(estimated from the scene, confidence" in said.stdout
    options = ("--box", 64, "--count", 4, "--scene", scene.image.stem, "--json")
    proposed = json.loads(cloudseg("propose", "doubt.tif", "coast.gpkg", *options).stdout)
    assert len(proposed) == 4
    boxes = json.loads(cloudseg("labels", "boxes", "coast.gpkg", "--json").stdout)
    for box in boxes[:3]:
        added = cloudseg("labels", "add", "coast.gpkg", "--box", box["fid"], "--from", scene.labels)
        assert "marked done" in added.stdout
    statuses = [
        b["status"] for b in json.loads(cloudseg("labels", "boxes", "coast.gpkg", "--json").stdout)
    ]
    assert statuses.count("labeled") == 3
    stored = json.loads(
        cloudseg("labels-to-store", "coast.gpkg", scene.image, "store", "--json").stdout
    )
    assert len(stored["ingested"]) == 3 and stored["failed"] == []
    tuned = cloudseg(
        "fine-tune", "coast.gpkg", scene.image, "--store", "store", "--steps", "5", "-q"
    ).stdout
    # The round is recorded in the project (its `rounds` table), with the verdict printed,
    # and the new version is a model file in the user's model folder.
    with closing(sqlite3.connect(work / "coast.gpkg")) as project:
        rounds = project.execute(
            "SELECT round, model, model_path, boxes, train_boxes, held_out_boxes, adopted,"
            " verdict FROM rounds"
        ).fetchall()
    ((number, name, path, done, trained, held_out, adopted, verdict),) = rounds
    assert (number, name, done, trained, held_out) == (1, "coast-r1", 3, 2, 1)
    assert verdict in tuned
    assert ("coast-r1 adopted" if adopted else f"kept {BASE}") in verdict
    assert Path(path) == models / "coast-r1.pt" and Path(path).is_file()
    # The new version segments the scene by name, from anywhere.
    cloudseg("segment", scene.image, "mask-r1.tif", "--model", "coast-r1")
    with rasterio.open(work / "mask-r1.tif") as mask:
        assert mask.tags()["CLOUDSEG_MODEL"] == "coast-r1"
        assert mask.shape == (512, 512)


def test_the_installed_command_serves_the_page_and_the_ogc_api(installed, tmp_path):
    """pygeoapi finds cloudseg's process manager and processes in the installed package."""
    import urllib.request

    from ..serving import start_server

    server = start_server(_env(installed, tmp_path / "models"), tmp_path / "work")
    try:
        with urllib.request.urlopen(f"{server.url}/ogc/processes?f=json", timeout=30) as answer:
            listed = json.load(answer)
        assert {p["id"] for p in listed["processes"]} == {"segment", "explain"}
        with urllib.request.urlopen(f"{server.url}/", timeout=30) as page:
            assert page.status == 200 and b"cloudseg" in page.read()
    finally:
        server.stop()

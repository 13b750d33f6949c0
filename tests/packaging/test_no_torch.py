"""Segmentation and the server without torch: a real venv from ``resources/locks/serve.txt``.

The venv is made from Debian's Python with its system site packages (QGIS's GDAL and
rasterio), the core and the server installed from the lock (``--require-hashes
--no-deps``) and this checkout in editable mode: no torch, no smp, no Lightning. The
segment command (valid mask, thresholds, polygons) and ``cloudseg serve`` run there and
give the project venv's masks; what needs torch says so in one line.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio
import requests

from cloudseg.backend.locks import lock_file

from ..conftest import BANDS, stack_bands
from ..serving import start_server

pytestmark = [pytest.mark.slow, pytest.mark.real_data]

ROOT = Path(__file__).resolve().parents[2]
FLAGS = ("--product-level", "L2A", "--cloud-threshold", "0.6", "--shadow-threshold", "0.4")


@pytest.fixture(scope="module")
def no_torch(tmp_path_factory) -> dict[str, str]:
    """The environment of a venv with the core and the server, without torch."""
    venv = tmp_path_factory.mktemp("no-torch") / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)],
                   check=True)  # fmt: skip
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q", "--no-deps"]
    subprocess.run([*pip, "--require-hashes", "-r", str(lock_file("serve"))], check=True)
    subprocess.run([*pip, "--no-build-isolation", "-e", str(ROOT)], check=True)
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(venv.parent), "LANG": "C.UTF-8"}
    env["VIRTUAL_ENV"] = str(venv)
    return env


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["cloudseg", *args], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def test_torch_is_absent_there(no_torch):
    done = subprocess.run(["python", "-c", "import torch"], env=no_torch, capture_output=True)
    assert done.returncode != 0
    info = run(no_torch, "info")
    assert info.returncode == 0 and info.stderr == ""
    assert "missing for training: torch" in info.stdout


def test_segment_with_valid_mask_thresholds_and_polygons(no_torch, venv_env, real_data, tmp_path):
    chip = real_data / "oncloudn_l2a" / "adwp"
    out = tmp_path / "no-torch.tif"
    done = run(no_torch, "segment", str(chip), str(out), "--valid", str(tmp_path / "valid.tif"),
               "--polygons", str(tmp_path / "clouds.gpkg"), *FLAGS)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "valid.tif").is_file() and (tmp_path / "clouds.gpkg").is_file()
    reference = tmp_path / "venv.tif"
    subprocess.run(["cloudseg", "segment", str(chip), str(reference), "-q", *FLAGS],
                   env=venv_env, check=True)  # fmt: skip
    with rasterio.open(out) as a, rasterio.open(reference) as b:
        assert np.array_equal(a.read(1), b.read(1))


def test_what_needs_torch_says_so_in_one_line(no_torch, real_data, tmp_path):
    chip = real_data / "oncloudn_l2a" / "adwp"
    done = run(no_torch, "explain", str(chip), str(tmp_path / "cam.tif"), "--product-level", "L2A")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert 'pip install "cloudseg[training]"' in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_server_segments_without_torch(no_torch, venv_env, real_data, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    stack_bands(real_data / "oncloudn_l2a" / "adwp", root / "chip.tif", BANDS)
    server = start_server(no_torch, tmp_path / "work", "--root", str(root),
                          command=Path(no_torch["VIRTUAL_ENV"]) / "bin" / "cloudseg")  # fmt: skip
    try:
        response = requests.post(
            f"{server.url}/ogc/processes/segment/execution",
            json={"inputs": {"input": str(root / "chip.tif"), "product_level": "L2A"}},
            timeout=300,
        )
        assert response.status_code == 200, response.text
        mask = requests.get(response.json()["mask"]["href"], timeout=60)
        (tmp_path / "served.tif").write_bytes(mask.content)
    finally:
        server.stop()
    reference = tmp_path / "cli.tif"
    subprocess.run(["cloudseg", "segment", str(root / "chip.tif"), str(reference), "-q",
                    "--product-level", "L2A"], env=venv_env, check=True)  # fmt: skip
    with rasterio.open(tmp_path / "served.tif") as a, rasterio.open(reference) as b:
        assert np.array_equal(a.read(1), b.read(1))

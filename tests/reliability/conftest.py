"""The reliability suite: every way a user's data could be lost, run against the real CLI.

Each test runs ``cloudseg`` in its own process on real data and checks what a user
relies on: the exit status, a one-line message, inputs and earlier outputs left
byte for byte as they were, and no stray files.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from ..conftest import BANDS, CHIP

#: Every output of a full run, by flag.
OUTPUTS = {
    "mask": "mask.tif",
    "--probabilities": "probs.tif",
    "--stats": "stats.json",
    "--polygons": "clouds.gpkg",
}


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones included) and its SHA-256."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


class Workspace:
    """A folder with a real scene in the forms users have it, and earlier outputs.

    - ``scene.tif``: a 256 x 256 crop of a real L2A chip, 4 named bands (uint16 DN);
    - ``chip/``: the same crop as a folder of band files;
    - ``out/``: the outputs of an earlier run (preview resolution, so that a new
      native run gives different bytes).
    """

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env = root, dict(env)  # a test may add variables
        self.scene, self.chip, self.out = root / "scene.tif", root / "chip", root / "out"

    def cli(self, *args: str | Path, timeout: float = 180) -> subprocess.CompletedProcess:
        """Run ``cloudseg`` here; return the finished process (text output)."""
        return subprocess.run(
            ["cloudseg", *map(str, args)],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.root,
            timeout=timeout,
        )

    def segment_args(self, output: str | Path = "out/mask.tif") -> list[str]:
        """``segment`` with every output of :data:`OUTPUTS` in ``out/``."""
        args = ["segment", "scene.tif", str(output), "-q", "--product-level", "L2A"]
        for flag, name in OUTPUTS.items():
            if flag.startswith("--"):
                args += [flag, f"out/{name}"]
        return args

    def snapshot(self) -> dict[str, str]:
        """Every file of the workspace and its hash."""
        return snapshot(self.root)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one line a failed run printed; fails the test unless it is exactly one line."""
    assert result.returncode != 0, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cloudseg: error: "), lines[0]
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture(scope="session")
def workspace_template(real_data, tmp_path_factory, venv_env) -> Path:
    """The workspace, built once: the crop in both forms and an earlier run's outputs."""
    root = tmp_path_factory.mktemp("workspace")
    (root / "chip").mkdir()
    (root / "out").mkdir()
    arrays = []
    for band in BANDS:
        with rasterio.open(real_data / CHIP / f"{band}.tif") as src:
            window = Window(128, 128, 256, 256)
            data = src.read(1, window=window)
            profile = src.profile | {
                "width": 256,
                "height": 256,
                "transform": src.window_transform(window),
            }
        with rasterio.open(root / "chip" / f"{band}.tif", "w", **profile) as dst:
            dst.write(data, 1)
        arrays.append(data)
    with rasterio.open(root / "scene.tif", "w", **(profile | {"count": 4})) as dst:
        dst.write(np.stack(arrays))
        dst.descriptions = tuple(BANDS)
    work = Workspace(root, venv_env)
    earlier = work.cli(*work.segment_args(), "--resolution", "preview")
    assert earlier.returncode == 0, earlier.stderr
    return root


@pytest.fixture
def workspace(workspace_template, tmp_path, venv_env) -> Workspace:
    """A fresh copy of the workspace for one test."""
    root = tmp_path / "ws"
    shutil.copytree(workspace_template, root)
    return Workspace(root, venv_env)


@pytest.fixture
def unchanged(workspace) -> Callable[[], None]:
    """A check that nothing in the workspace changed since the test began."""
    before = workspace.snapshot()

    def check() -> None:
        assert workspace.snapshot() == before

    return check


@pytest.fixture(scope="session")
def make_safe():
    """``make_safe(band_dir, out_dir)``: a SAFE product from real band files."""
    path = Path(__file__).resolve().parents[1] / "data" / "make_safe.py"
    spec = importlib.util.spec_from_file_location("make_safe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_safe


@pytest.fixture
def silent_server() -> Iterator[str]:
    """``http://127.0.0.1:PORT``: a server that accepts connections and never answers.

    A hung S3 endpoint or asset server: every read from it must time out.
    """
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(server.accept()[0])  # open, and silent
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    server.close()

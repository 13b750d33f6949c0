"""The server client runs in QGIS's own Python: it needs none of cloudseg's packages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def test_the_server_client_imports_nothing_beyond_the_standard_library():
    code = (
        "import sys, cloudseg.backend.remote, cloudseg.backend.raster.sources\n"
        "cloudseg.backend.remote.server_inputs({'bands': ['B02'], 'tta': True})\n"
        "heavy = {'numpy', 'rasterio', 'requests', 'onnxruntime', 'torch', 'pydantic'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_a_runs_options_become_a_jobs_inputs():
    from cloudseg.backend.remote import server_inputs

    inputs = server_inputs({
        "model": None, "bands": ["B02", "B03", "B04", "B08"], "product_level": "L2A",
        "tta": True, "tile_size": 512, "max_memory_mib": 512.0, "min_polygon_area_m2": 1000.0,
        "extent": (1.0, 2.0, 3.0, 4.0), "classes": ["cloud", "cloud shadow"],
    })  # fmt: skip
    assert inputs == {
        "bands": "B02,B03,B04,B08",
        "product_level": "L2A",
        "tta": True,
        "tile_size": 512,
        "min_polygon_area_m2": 1000.0,
        "extent": [1.0, 2.0, 3.0, 4.0],
        "classes": ["cloud", "cloud shadow"],  # a list input stays a list
    }  # max_memory_mib is this computer's own limit: not sent


@pytest.mark.parametrize("model", [Path("/models/mine.onnx"), "mine.pt"])
def test_a_model_file_here_cannot_run_on_a_server(model):
    from cloudseg.backend.remote import RemoteError, server_inputs

    with pytest.raises(RemoteError, match=r"model file on this computer \(mine\.(onnx|pt)\)"):
        server_inputs({"model": model})


def test_a_target_that_is_the_scene_is_refused_before_anything_is_sent(tmp_path):
    """A server run never overwrites its input: refused before the server is asked."""
    from cloudseg.backend.errors import OutputConflictError
    from cloudseg.backend.remote import ServerClient, run_on_server

    scene = tmp_path / "scene.tif"
    scene.write_bytes(b"the analyst's scene")
    nowhere = ServerClient("http://127.0.0.1:9", timeout=1)  # never reached
    with pytest.raises(OutputConflictError, match="is an input of this run"):
        run_on_server(nowhere, "segment", scene, {}, {"mask": scene})
    with pytest.raises(OutputConflictError, match="are the same file"):
        run_on_server(nowhere, "segment", scene, {},
                      {"mask": tmp_path / "m.tif", "valid": tmp_path / "m.tif"})  # fmt: skip
    bands = tmp_path / "bands"
    bands.mkdir()
    (bands / "B04.tif").write_bytes(b"a band")
    with pytest.raises(OutputConflictError, match="would become a band of the input folder"):
        run_on_server(nowhere, "segment", bands, {}, {"mask": bands / "B02.tif"})
    assert scene.read_bytes() == b"the analyst's scene"

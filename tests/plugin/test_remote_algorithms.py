"""*Run on: a cloudseg server* for the Processing algorithms (issue 42).

cloudseg:segment, cloudseg:explain and cloudseg:segment_batch with ``SERVER`` and
``SERVER_AUTH`` against a real ``cloudseg serve --token`` on loopback (scenes reach it
as uploads): the same files, layers and outputs as a run here; Cancel dismisses the
server's job; a wrong token and an unreachable server are one line, quickly, with no
output left; and qgis_process runs on the server in a QGIS without onnxruntime/torch.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import processing
import pytest
import rasterio
from qgis.core import (
    QgsApplication,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def chip_layer(multiband):
    layer = QgsRasterLayer(str(multiband), "chip")
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    yield layer
    QgsProject.instance().removeAllMapLayers()
    QgsProject.instance().layerTreeRoot().removeAllChildren()


def _on(server: Any, authcfg: str) -> dict[str, str]:
    return {"SERVER": server.url, "SERVER_AUTH": authcfg}


def _loaded() -> dict[str, Any]:
    """The result layers in the results group, by name: (renderer type, classes)."""
    group = QgsProject.instance().layerTreeRoot().findGroup("Cloud segmentation")
    assert group is not None
    found = {}
    for node in group.findLayers():
        layer = node.layer()
        renderer = layer.renderer()
        if hasattr(renderer, "classes"):  # paletted raster
            drawn = sorted((c.value, c.label, c.color.name(), c.color.alpha())
                           for c in renderer.classes())  # fmt: skip
        elif hasattr(renderer, "categories"):  # the polygons
            drawn = sorted((str(c.value()), c.label(), c.symbol().color().name())
                           for c in renderer.categories())  # fmt: skip
        else:
            drawn = []
        found[layer.name()] = (type(renderer).__name__, drawn)
    return found


def _clear_results() -> None:
    project = QgsProject.instance()
    group = project.layerTreeRoot().findGroup("Cloud segmentation")
    if group is not None:
        for node in group.findLayers():
            project.removeMapLayer(node.layer().id())
        project.layerTreeRoot().removeChildNode(group)


def test_segment_on_the_server_gives_the_local_files_layers_and_outputs(
    plugin, chip_layer, token_server, server_auth, tmp_path
):
    parameters = {"INPUT": chip_layer, "PRODUCT_LEVEL": "L2A", "MIN_AREA": 0,
                  "BUFFER_CLOUD": 60}  # fmt: skip
    here, there = tmp_path / "here", tmp_path / "there"
    runs = {}
    for folder, extra in ((here, {}), (there, _on(token_server, server_auth))):
        folder.mkdir()
        runs[folder] = processing.runAndLoadResults(
            "cloudseg:segment",
            parameters | extra | {
                "OUTPUT": str(folder / "mask.tif"),
                "VALID": str(folder / "valid.tif"),
                "VECTOR": str(folder / "polygons.gpkg"),
            },
        )  # fmt: skip
        runs[folder, "layers"] = _loaded()
        _clear_results()
    local, remote = runs[here], runs[there]
    for name in ("mask.tif", "valid.tif"):
        with rasterio.open(here / name) as want, rasterio.open(there / name) as got:
            np.testing.assert_array_equal(got.read(), want.read())
            assert got.crs == want.crs and got.transform == want.transform
    polygons = [QgsVectorLayer(str(f / "polygons.gpkg"), "p", "ogr") for f in (here, there)]
    areas = [sorted((f["name"], round(f["area_m2"], 3)) for f in p.getFeatures())
             for p in polygons]  # fmt: skip
    assert areas[0] == areas[1] and areas[0]
    assert set(remote) == set(local)
    assert remote["OUTPUT"] == str(there / "mask.tif")
    for key in ("CLOUD_PERCENT", "SHADOW_PERCENT", "CLEAR_PERCENT", "USABLE_PERCENT", "KM2"):
        assert remote[key] == pytest.approx(local[key]), key
    assert remote["MODEL_USED"] == local["MODEL_USED"] == "ukis-csmask-4b-l2a"
    host = token_server.url.split("//", 1)[1]
    assert remote["RUNNER"].startswith(f"server {host} (") and local["RUNNER"] in remote["RUNNER"]
    # The same layers, named and styled as a run here.
    assert runs[there, "layers"] == runs[here, "layers"]
    assert set(runs[there, "layers"]) == {
        "chip - clouds", "chip - valid pixels", "chip - cloud and shadow polygons"}  # fmt: skip
    assert runs[there, "layers"]["chip - clouds"][0] == "QgsPalettedRasterRenderer"
    assert not list(there.glob(".*"))  # no partial download left


def test_polygons_in_another_format_are_converted(
    plugin, chip_layer, token_server, server_auth, tmp_path
):
    feedback = LogFeedback()
    result = processing.run(
        "cloudseg:segment",
        {"INPUT": chip_layer, "PRODUCT_LEVEL": "L2A", "MIN_AREA": 0,
         "OUTPUT": str(tmp_path / "mask.tif"), "VECTOR": str(tmp_path / "polygons.shp")}
        | _on(token_server, server_auth),
        feedback=feedback,
    )  # fmt: skip
    assert result["VECTOR"] == str(tmp_path / "polygons.shp")
    layer = QgsVectorLayer(result["VECTOR"], "p", "ogr")
    assert layer.isValid() and layer.storageType() == "ESRI Shapefile"
    names = {f["name"] for f in layer.getFeatures()}
    assert "cloud" in names and names <= {"cloud", "cloud shadow"}
    with rasterio.open(result["OUTPUT"]) as ds:
        cloud_pixels = int((ds.read(1) == 1).sum()) * abs(ds.transform.a * ds.transform.e)
    area = sum(f["area_m2"] for f in layer.getFeatures() if f["name"] == "cloud")
    assert area == pytest.approx(cloud_pixels)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".gpkg") == []
    assert any(line.startswith("Ran on server ") for line in feedback.infos)
    assert any(line.startswith("Cloud ") and " % in " in line for line in feedback.infos)
    assert any(line.startswith("Cost: ") for line in feedback.infos)


class LogFeedback(QgsProcessingFeedback):
    """Keeps what an algorithm writes to the log; cancels once the server has the job."""

    def __init__(self, cancel_at: float | None = None) -> None:
        super().__init__()
        self.infos: list[str] = []
        self.cancel_at = cancel_at
        self.progressChanged.connect(self._progress)

    def pushInfo(self, info: str) -> None:
        self.infos.append(info)

    def _progress(self, percent: float) -> None:
        if self.cancel_at is not None and percent >= self.cancel_at and not self.isCanceled():
            self.cancel()


def _mosaic(chip: Path, target: Path) -> Path:
    """The chip tiled 3 x 3: a scene that runs long enough to cancel mid-run."""
    with rasterio.open(chip) as src:
        data, profile, names = src.read(), src.profile, src.descriptions
    profile.update(width=data.shape[2] * 3, height=data.shape[1] * 3)
    with rasterio.open(target, "w", **profile) as dst:
        dst.write(np.tile(data, (1, 3, 3)))
        for i, name in enumerate(names, start=1):
            dst.set_band_description(i, name)
    return target


def _jobs(server: Any) -> list[dict[str, Any]]:
    request = urllib.request.Request(f"{server.url}/ogc/jobs?f=json", headers=server.headers())
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())["jobs"]


def test_cancel_dismisses_the_servers_job_and_leaves_no_output(
    plugin, multiband, token_server, server_auth, tmp_path
):
    scene = _mosaic(multiband, tmp_path / "mosaic.tif")
    layer = QgsRasterLayer(str(scene), "mosaic")
    before = {job["jobID"] for job in _jobs(token_server)}
    out = tmp_path / "out"
    out.mkdir()
    feedback = LogFeedback(cancel_at=20.0)  # 20 %: the scene is on the server, the job started
    with pytest.raises(QgsProcessingException, match="cancelled") as failed:
        processing.run(
            "cloudseg:segment",
            {"INPUT": layer, "PRODUCT_LEVEL": "L2A", "OUTPUT": str(out / "mask.tif"),
             "VECTOR": str(out / "polygons.gpkg")} | _on(token_server, server_auth),
            feedback=feedback,
        )  # fmt: skip
    assert "\n" not in str(failed.value)
    assert list(out.iterdir()) == []
    new = [job for job in _jobs(token_server) if job["jobID"] not in before]
    assert all(job["status"] == "dismissed" for job in new), new
    for job in new:  # dismissed: its folder is gone with its files
        assert not any(token_server.work.rglob(job["jobID"])), job


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_wrong_token_is_one_line_quickly_and_leaves_nothing(
    plugin, chip_layer, token_server, tmp_path
):
    from cloudseg.cloudseg_plugin.servers import store_token

    from .conftest import MASTER_PASSWORD

    assert QgsApplication.authManager().setMasterPassword(MASTER_PASSWORD, True)
    other = store_token(token_server.url, "not-the-servers-token")
    try:
        started = time.monotonic()
        with pytest.raises(QgsProcessingException, match=r"check the server's token") as failed:
            processing.run(
                "cloudseg:segment",
                {"INPUT": chip_layer, "OUTPUT": str(tmp_path / "mask.tif"),
                 "SERVER": token_server.url, "SERVER_AUTH": other},
            )  # fmt: skip
    finally:
        QgsApplication.authManager().removeAuthenticationConfig(other)
    assert time.monotonic() - started < 10
    assert "\n" not in str(failed.value) and "not-the-servers-token" not in str(failed.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("silent", [False, True], ids=["closed port", "silent server"])
def test_an_unreachable_server_is_one_line_within_the_timeout(
    plugin, chip_layer, tmp_path, monkeypatch, silent
):
    monkeypatch.setenv("CLOUDSEG_CONNECT_TIMEOUT", "2")
    monkeypatch.setenv("CLOUDSEG_READ_TIMEOUT", "2")
    listener = socket.socket()
    if silent:  # accepts connections and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
    else:
        port = _free_port()
    try:
        started = time.monotonic()
        with pytest.raises(QgsProcessingException, match="cannot reach the cloudseg server"):
            processing.run(
                "cloudseg:segment",
                {"INPUT": chip_layer, "OUTPUT": str(tmp_path / "mask.tif"),
                 "SERVER": f"http://127.0.0.1:{port}"},
            )  # fmt: skip
        assert time.monotonic() - started < 2 + 3
    finally:
        listener.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.real_data
def test_explain_on_the_server_gives_the_local_maps_and_layers(
    plugin, chip_layer, token_server, server_auth, tmp_path
):
    from qgis.core import QgsRectangle

    full = chip_layer.extent()
    view = QgsRectangle(
        full.xMinimum(), full.yMaximum() - 960, full.xMinimum() + 960, full.yMaximum()
    )  # 96 x 96 px at 10 m
    parameters = {"INPUT": chip_layer, "CLASSES": "cloud,cloud shadow", "METHOD": 1,
                  "MODEL": "ukis-csmask-4b-l2a", "EXTENT": view}  # fmt: skip
    results, layers = {}, {}
    for where, extra in (("here", {}), ("there", _on(token_server, server_auth))):
        results[where] = processing.runAndLoadResults(
            "cloudseg:explain", parameters | extra | {"OUTPUT": str(tmp_path / f"{where}.tif")}
        )
        layers[where] = {
            name: (renderer, layer_band(name)) for name, (renderer, _) in _loaded().items()
        }
        _clear_results()
    with rasterio.open(tmp_path / "here.tif") as want, rasterio.open(tmp_path / "there.tif") as got:
        assert got.count == want.count == 2
        np.testing.assert_allclose(got.read(), want.read(), atol=1e-4)
        assert got.transform == want.transform
    assert set(results["there"]) == set(results["here"])
    assert results["there"]["MODEL_USED"] == results["here"]["MODEL_USED"]
    assert results["there"]["KM2"] == pytest.approx(results["here"]["KM2"])
    assert (
        layers["there"]
        == layers["here"]
        == {
            "chip - why cloud (hirescam)": ("QgsSingleBandPseudoColorRenderer", 1),
            "chip - why cloud shadow (hirescam)": ("QgsSingleBandPseudoColorRenderer", 2),
        }
    )


def layer_band(name: str) -> int:
    """The band a loaded result layer draws."""
    layer = QgsProject.instance().mapLayersByName(name)[0]
    return layer.renderer().band()


QGIS_PROCESS = shutil.which("qgis_process.bin") or "/usr/bin/qgis_process.bin"


@pytest.fixture
def qgis_without_runtime(server_auth: str, tmp_path: Path) -> dict[str, str]:
    """qgis_process's environment in a QGIS whose Python has no onnxruntime, no torch.

    Without this venv (QGIS's Python sees it only through the python3 on PATH), an
    empty profile, the plugin linked in, and the tests' auth DB (holding the server's
    token) with its master password in a file.
    """
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p) != Path(venv_bin)
    )
    env.setdefault("QT_QPA_PLATFORM", "offscreen")
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "cloudseg").symlink_to(ROOT, target_is_directory=True)
    env["QGIS_PLUGINPATH"] = str(plugins)
    env["QGIS_CUSTOM_CONFIG_PATH"] = str(tmp_path / "profile")
    auth = tmp_path / "auth"
    auth.mkdir()
    shutil.copy(QgsApplication.qgisAuthDatabaseFilePath(), auth / "qgis-auth.db")
    password = tmp_path / "master-password"
    from .conftest import MASTER_PASSWORD

    password.write_text(MASTER_PASSWORD)
    env["QGIS_AUTH_DB_DIR_PATH"] = str(auth)
    env["QGIS_AUTH_PASSWORD_FILE"] = str(password)
    return env


def _qgis_process(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([QGIS_PROCESS, *args], capture_output=True, text=True, env=env,
                          timeout=300)  # fmt: skip


def test_qgis_process_runs_on_the_server_in_a_qgis_without_the_runtime(
    qgis_without_runtime, server_auth, token_server, multiband, tmp_path
):
    from cloudseg.backend.inference.segment import SegmentOptions, segment

    env = qgis_without_runtime
    for module in ("onnxruntime", "torch"):
        probe = subprocess.run(["python3", "-c", f"import {module}"], env=env,
                               capture_output=True, text=True)  # fmt: skip
        assert probe.returncode != 0 and "No module named" in probe.stderr, module
    assert _qgis_process("plugins", "enable", "cloudseg", env=env).returncode == 0
    report = _qgis_process("--json", "run", "cloudseg:environment", "--",
                           f"OUTPUT={tmp_path / 'env.json'}", env=env)  # fmt: skip
    assert report.returncode == 0, report.stderr
    missing = json.loads(report.stdout)["results"]["MISSING"]
    assert "onnxruntime" in missing and "torch" in missing

    here = tmp_path / "here.tif"
    segment(multiband, here, SegmentOptions(product_level="L2A"))
    out = tmp_path / "there.tif"
    run = _qgis_process(
        "--json", "run", "cloudseg:segment", "--", f"INPUT={multiband}", "PRODUCT_LEVEL=L2A",
        f"SERVER={token_server.url}", f"SERVER_AUTH={server_auth}", f"OUTPUT={out}", env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    results = json.loads(run.stdout)["results"]
    assert results["OUTPUT"] == str(out)
    assert results["RUNNER"].startswith("server 127.0.0.1:")
    assert results["MODEL_USED"] == "ukis-csmask-4b-l2a"
    with rasterio.open(out) as got, rasterio.open(here) as want:
        np.testing.assert_array_equal(got.read(1), want.read(1))
    assert token_server.token not in run.stdout + run.stderr

    local = _qgis_process("run", "cloudseg:segment", "--", f"INPUT={multiband}",
                          f"OUTPUT={tmp_path / 'local.tif'}", env=env)  # fmt: skip
    assert local.returncode != 0 and "onnxruntime" in local.stdout + local.stderr
    assert not (tmp_path / "local.tif").exists()

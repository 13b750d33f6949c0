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
import urllib.error
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
    QgsVectorLayer,
)

from ..conftest import tiled_scene

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


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
    """Keeps what an algorithm writes to the log; cancels once the server has the job.

    ``cancel_at``: cancel at the first progress report from a job on the server (not
    the upload's) at or past this percentage, noting the server's job folders then.
    """

    def __init__(self, cancel_at: float | None = None, server: Any = None) -> None:
        super().__init__()
        self.infos: list[str] = []
        self.cancel_at = cancel_at
        self.server = server
        self.jobs_at_cancel: set[str] = set()

    def pushInfo(self, info: str) -> None:
        self.infos.append(info)

    def setProgressText(self, text: str) -> None:
        super().setProgressText(text)
        if self.cancel_at is None or self.isCanceled() or self.progress() < self.cancel_at:
            return
        if "uploading" in text or "zipping" in text:  # (a batch's have the scene first)
            return
        self.jobs_at_cancel = _job_folders(self.server)
        self.cancel()


def _job_folders(server: Any) -> set[str]:
    """The server's job folders (a job's is made when it is accepted)."""
    return {p.name for p in (server.work / "jobs").iterdir()} if server is not None else set()


def _status(server: Any, job: str) -> str:
    """A job's status on the server; "gone" when it has none (dismissed: 404)."""
    request = urllib.request.Request(f"{server.url}/ogc/jobs/{job}?f=json",
                                     headers=server.headers())  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())["status"]
    except urllib.error.HTTPError as exc:
        assert exc.code == 404, exc
        return "gone"


def test_cancel_dismisses_the_servers_job_and_leaves_no_output(
    plugin, multiband, token_server, server_auth, tmp_path
):
    scene = tiled_scene(multiband, tmp_path / "mosaic.tif")
    before = _job_folders(token_server)
    out = tmp_path / "out"
    out.mkdir()
    feedback = LogFeedback(cancel_at=20.0, server=token_server)  # the job's first report
    with pytest.raises(QgsProcessingException, match="cancelled") as failed:
        processing.run(
            "cloudseg:segment",
            {"INPUT": str(scene), "PRODUCT_LEVEL": "L2A", "OUTPUT": str(out / "mask.tif"),
             "VECTOR": str(out / "polygons.gpkg")} | _on(token_server, server_auth),
            feedback=feedback,
        )  # fmt: skip
    assert "\n" not in str(failed.value)
    assert list(out.iterdir()) == []
    cancelled = feedback.jobs_at_cancel - before
    assert len(cancelled) == 1  # the job was on the server when Cancel was pressed
    job = cancelled.pop()
    assert _status(token_server, job) == "gone"  # dismissed, its folder with it
    assert not (token_server.work / "jobs" / job).exists()


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
    # rasterio and pystac are Debian packages of QGIS's Python here; a server run must not
    # need them either (nor scipy), so they fail to import as onnxruntime and torch do.
    blocked = tmp_path / "blocked"
    for module in ("rasterio", "pystac", "scipy"):
        (blocked / module).mkdir(parents=True)
        (blocked / module / "__init__.py").write_text(
            f"raise ModuleNotFoundError(\"No module named '{module}'\", name={module!r})"
        )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(blocked), env.get("PYTHONPATH")]))
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
    for module in ("onnxruntime", "torch", "rasterio", "pystac"):
        probe = subprocess.run(["python3", "-c", f"import {module}"], env=env,
                               capture_output=True, text=True)  # fmt: skip
        assert probe.returncode != 0, module
        assert f"No module named '{module}'" in probe.stderr
    assert _qgis_process("plugins", "enable", "cloudseg", env=env).returncode == 0
    # Its environment report says what a local run lacks (with rasterio there: the
    # report itself needs it).
    unblocked = dict(env)
    unblocked["PYTHONPATH"] = os.pathsep.join(
        p for p in env["PYTHONPATH"].split(os.pathsep) if Path(p).name != "blocked"
    )
    report = _qgis_process("--json", "run", "cloudseg:environment", "--",
                           f"OUTPUT={tmp_path / 'env.json'}", env=unblocked)  # fmt: skip
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

    scenes = tmp_path / "scenes"  # the batch on the server, in the same QGIS
    scenes.mkdir()
    shutil.copy(multiband, scenes / "chip.tif")
    batch = _qgis_process(
        "--json", "run", "cloudseg:segment_batch", "--", f"INPUT={scenes}", "PRODUCT_LEVEL=L2A",
        f"SERVER={token_server.url}", f"SERVER_AUTH={server_auth}",
        f"OUTPUT_FOLDER={tmp_path / 'masks'}", env=env,
    )  # fmt: skip
    assert batch.returncode == 0, batch.stdout + batch.stderr
    assert json.loads(batch.stdout)["results"]["DONE"] == 1
    with rasterio.open(tmp_path / "masks" / "chip.tif") as got, rasterio.open(here) as want:
        np.testing.assert_array_equal(got.read(1), want.read(1))
    written = sorted(p.name for p in (tmp_path / "masks").iterdir())
    assert written == ["chip.json", "chip.stac.json", "chip.tif", "manifest.json"]  # no pystac

    local = _qgis_process("run", "cloudseg:segment", "--", f"INPUT={multiband}",
                          f"OUTPUT={tmp_path / 'local.tif'}", env=env)  # fmt: skip
    assert local.returncode != 0 and "onnxruntime" in local.stdout + local.stderr
    assert not (tmp_path / "local.tif").exists()


@pytest.mark.real_data
def test_segment_batch_on_the_server_writes_the_local_masks_and_records(
    plugin, batch_scenes, token_server, server_auth, tmp_path
):
    scenes = tmp_path / "in"
    scenes.mkdir()
    for name in ("adwp-top", "adwu-bottom", "broken"):
        shutil.copy(batch_scenes / f"{name}.tif", scenes / f"{name}.tif")
    parameters = {"INPUT": str(scenes), "PRODUCT_LEVEL": "L2A"}
    here = processing.run(
        "cloudseg:segment_batch", parameters | {"OUTPUT_FOLDER": str(tmp_path / "here")}
    )
    feedback = LogFeedback()
    there = processing.run(
        "cloudseg:segment_batch",
        parameters | _on(token_server, server_auth) | {"OUTPUT_FOLDER": str(tmp_path / "there")},
        feedback=feedback,
    )
    assert (there["DONE"], there["SKIPPED"], there["FAILED"]) == (2, 0, 1)
    assert (here["DONE"], here["FAILED"]) == (2, 1)
    for scene in ("adwp-top", "adwu-bottom"):
        with rasterio.open(tmp_path / "here" / f"{scene}.tif") as want, \
                rasterio.open(tmp_path / "there" / f"{scene}.tif") as got:  # fmt: skip
            np.testing.assert_array_equal(got.read(1), want.read(1))
        record = json.loads((tmp_path / "there" / f"{scene}.json").read_text())
        local = json.loads((tmp_path / "here" / f"{scene}.json").read_text())
        assert record["status"] == "done" and record["runner"].startswith("server 127.0.0.1:")
        assert record["cloud_percent"] == pytest.approx(local["cloud_percent"])
        item = json.loads((tmp_path / "there" / f"{scene}.stac.json").read_text())
        assert item["id"] == scene and item["assets"]["mask"]["href"] == f"./{scene}.tif"
        assert item["bbox"] == pytest.approx(local["bbox"])
    broken = json.loads((tmp_path / "there" / "broken.json").read_text())
    assert broken["status"] == "failed" and "\n" not in broken["error"]
    assert not (tmp_path / "there" / "broken.tif").exists()
    manifest = json.loads(Path(there["MANIFEST"]).read_text())
    assert manifest["complete"] and [r["scene"] for r in manifest["records"]] == [
        "adwp-top", "adwu-bottom", "broken"]  # fmt: skip
    assert sum(line.endswith(": done") for line in feedback.infos) == 2
    collection = json.loads((tmp_path / "there" / "collection.json").read_text())
    items = sorted(link["href"] for link in collection["links"] if link["rel"] == "item")
    assert items == ["./adwp-top.stac.json", "./adwu-bottom.stac.json"]
    assert not [p for p in (tmp_path / "there").iterdir() if p.name.startswith(".")]
    again = processing.run(
        "cloudseg:segment_batch",
        parameters | _on(token_server, server_auth) | {"OUTPUT_FOLDER": str(tmp_path / "there")},
    )
    assert (again["DONE"], again["SKIPPED"], again["FAILED"]) == (0, 2, 1)


@pytest.mark.real_data
def test_cancel_stops_a_server_batch_dismissing_its_job(
    plugin, batch_scenes, token_server, server_auth, tmp_path
):
    scenes = tmp_path / "in"
    scenes.mkdir()
    for name in ("adwp-top", "adwu-bottom"):
        shutil.copy(batch_scenes / f"{name}.tif", scenes / f"{name}.tif")
    before = _job_folders(token_server)
    out = tmp_path / "out"
    feedback = LogFeedback(cancel_at=55.0, server=token_server)  # the second scene's job
    with pytest.raises(QgsProcessingException, match="batch cancelled after 1 of 2") as failed:
        processing.run(
            "cloudseg:segment_batch",
            {"INPUT": str(scenes), "PRODUCT_LEVEL": "L2A", "OUTPUT_FOLDER": str(out)}
            | _on(token_server, server_auth),
            feedback=feedback,
        )
    assert "\n" not in str(failed.value)
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["complete"] and [r["scene"] for r in manifest["records"]] == ["adwp-top"]
    assert sorted(p.name for p in out.iterdir()) == [
        "adwp-top.json", "adwp-top.stac.json", "adwp-top.tif",
        "collection.json", "manifest.json"]  # fmt: skip
    jobs = feedback.jobs_at_cancel - before
    assert sorted(_status(token_server, job) for job in jobs) == ["gone", "successful"]
    assert _job_folders(token_server) - before == {
        job for job in jobs if _status(token_server, job) == "successful"}  # fmt: skip


def test_a_refused_request_and_a_failed_job_are_one_line_with_no_output(
    plugin, multiband, token_server, server_auth, tmp_path
):
    unnamed = tmp_path / "unnamed.tif"  # the chip's bands without their names
    with rasterio.open(multiband) as src:
        profile, data = src.profile, src.read()
    with rasterio.open(unnamed, "w", **profile) as dst:
        dst.write(data)
    out = tmp_path / "out"
    out.mkdir()
    model = tmp_path / "mine.onnx"
    model.write_bytes(b"not a model")
    cases = [  # a model file here: refused before anything is sent; unnamed bands: the job fails
        ({"MODEL_FILE": str(model)}, r"model file on this computer \(mine\.onnx\) cannot run"),
        ({}, r"the job failed on the server: .*band"),
    ]
    for extra, message in cases:
        with pytest.raises(QgsProcessingException, match=message) as failed:
            processing.run(
                "cloudseg:segment",
                {"INPUT": str(unnamed), "OUTPUT": str(out / "mask.tif"),
                 "VECTOR": str(out / "polygons.shp")} | extra | _on(token_server, server_auth),
            )  # fmt: skip
        assert "\n" not in str(failed.value)
        assert list(out.iterdir()) == []


class StopServerFeedback(QgsProcessingFeedback):
    """Stops the server at the job's first progress report: a connection lost mid-job."""

    def __init__(self, server: Any) -> None:
        super().__init__()
        self.server = server
        self.stopped = False

    def setProgressText(self, text: str) -> None:
        super().setProgressText(text)
        if not self.stopped and self.progress() >= 20 and "uploading" not in text:
            self.stopped = True
            self.server.proc.kill()
            self.server.proc.wait()


def test_a_connection_lost_during_the_job_is_one_line_with_no_output(
    plugin, multiband, tmp_path, monkeypatch
):
    from serving import start_server

    monkeypatch.setenv("CLOUDSEG_CONNECT_TIMEOUT", "2")
    monkeypatch.setenv("CLOUDSEG_READ_TIMEOUT", "2")
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    server = start_server(env, tmp_path / "work")  # no token: a loopback server of one's own
    scene = tiled_scene(multiband, tmp_path / "mosaic.tif")
    out = tmp_path / "out"
    out.mkdir()
    feedback = StopServerFeedback(server)
    try:
        started = time.monotonic()
        with pytest.raises(QgsProcessingException, match="lost the connection during the job"):
            processing.run(
                "cloudseg:segment",
                {"INPUT": str(scene), "PRODUCT_LEVEL": "L2A", "OUTPUT": str(out / "mask.tif"),
                 "SERVER": server.url},
                feedback=feedback,
            )  # fmt: skip
        assert feedback.stopped and time.monotonic() - started < 30
    finally:
        server.stop()
    assert list(out.iterdir()) == []

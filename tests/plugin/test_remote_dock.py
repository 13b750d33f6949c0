"""*Run on: a cloudseg server* in the dock: the same run, the same layers, real server.

The server is a real ``cloudseg serve --token`` (``token_server``) reading no folder:
the chip reaches it as an upload, as from an analyst's laptop.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from qgis.core import QgsApplication, QgsProject, QgsRasterLayer, QgsSettings
from qgis.PyQt.QtWidgets import QDockWidget

from cloudseg.cloudseg_plugin.servers import ServerChoice, save_server


@pytest.fixture
def chip(multiband, qgis_iface):
    """The 4-band chip as the active raster layer; the project emptied after."""
    project = QgsProject.instance()
    layer = QgsRasterLayer(str(multiband), "chip")
    assert layer.isValid()
    project.addMapLayer(layer)
    qgis_iface.setActiveLayer(layer)
    yield layer
    project.removeAllMapLayers()
    project.layerTreeRoot().removeAllChildren()


@pytest.fixture
def dock(plugin, tmp_path):
    """The plugin's dock writing to ``tmp_path/runs``; runs go back to this computer after."""
    save_server(ServerChoice())  # whatever an earlier test chose: start on this computer
    plugin.panel_action.setChecked(True)
    widget = plugin.dock
    assert isinstance(widget, QDockWidget) and not widget.on_server
    widget.output_dir.setFilePath(str(tmp_path / "runs"))
    yield widget
    save_server(ServerChoice())  # the next dock opens on this computer


def on_server(dock, url: str, authcfg: str = "") -> None:
    """Set *Run on* to the server at ``url`` with the token of ``authcfg``."""
    dock.run_on_combo.setCurrentIndex(dock.run_on_combo.findData("server"))
    dock.server_edit.setText(url)
    dock.server_edit.editingFinished.emit()
    dock.token_select.setConfigId(authcfg)
    assert dock.server_edit.isVisibleTo(dock) and dock.token_select.isVisibleTo(dock)


def results(model_group_name: str | None = None) -> list[dict]:
    """The result layers of the dock's runs: name, renderer, class colours, source."""
    group = QgsProject.instance().layerTreeRoot().findGroup("Cloud segmentation")
    assert group is not None
    described = []
    for node in group.findLayers():
        layer = node.layer()
        renderer = layer.renderer()
        classes = getattr(renderer, "classes", lambda: [])()
        described.append({
            "name": layer.name(),
            "group": node.parent().name(),
            "renderer": type(renderer).__name__,
            "colours": [(c.value, c.color.name(), c.label) for c in classes],
            "source": layer.source(),
        })  # fmt: skip
    return described


def clear_results() -> None:
    project = QgsProject.instance()
    group = project.layerTreeRoot().findGroup("Cloud segmentation")
    project.removeMapLayers([node.layerId() for node in group.findLayers()])
    project.layerTreeRoot().removeChildNode(group)


def free_port() -> int:
    """A loopback port nobody listens on (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_a_server_run_loads_what_a_local_run_loads(
    dock, chip, token_server, server_auth, tmp_path, wait_for
):
    dock.polygons_check.setChecked(True)
    dock.level_combo.setCurrentIndex(dock.level_combo.findData("L2A"))
    local = dock.run_active_layer()
    wait_for(local)
    assert dock.runs[0].status == "done", dock.runs[0].message
    here = results()
    clear_results()

    on_server(dock, token_server.url, server_auth)
    assert dock.device_label.text().startswith("runs go to the server")
    remote = dock.run_active_layer()
    assert remote is not None and remote.client is not None
    wait_for(remote)
    assert dock.runs[0].status == "done", dock.runs[0].message
    there = results()

    with rasterio.open(local.outputs["mask"]) as a, rasterio.open(remote.outputs["mask"]) as b:
        assert np.array_equal(a.read(), b.read())
        assert a.tags()["CLOUDSEG_MODEL"] == b.tags()["CLOUDSEG_MODEL"]
    assert remote.outputs["mask"] != local.outputs["mask"] and remote.outputs["polygons"]
    assert [s["source"] for s in there if s["source"].endswith(".tif")] == [
        str(remote.outputs["mask"])
    ]

    def style(layers: list[dict]) -> list[tuple]:
        return [(s["name"], s["group"], s["renderer"], s["colours"]) for s in layers]

    assert style(there) == style(here) and len(here) == 2  # classes and polygons
    assert here[-1]["renderer"] == "QgsPalettedRasterRenderer" and here[-1]["colours"]

    server_host = token_server.url.split("://")[1]
    ran_on = dock.runs_table.item(0, 5)
    assert ran_on.text() == server_host
    assert ran_on.toolTip() == f"ran on {remote.result.where}"
    assert dock.runs[0].where == remote.result.where
    assert remote.result.where.startswith(f"server {server_host} (")
    assert "this computer" not in ran_on.toolTip()
    assert dock.runs_table.item(1, 5).text() == "this computer"
    assert dock.runs_table.item(1, 5).toolTip().startswith("ran on this computer (")
    assert dock.runs[1].where.startswith("this computer (")
    assert f"server {server_host}" in dock.status_label.text()
    assert dock.device_label.text() == f"runs go to {remote.result.where}"
    assert dock.runs[0].model == dock.runs[1].model == "ukis-csmask-4b-l2a"

    settings = QgsSettings()
    kept = {key: str(settings.value(key)) for key in settings.allKeys()}
    assert not [key for key, value in kept.items() if token_server.token in value]
    assert kept["cloudseg/server/url"] == token_server.url
    assert kept["cloudseg/server/authcfg"] == server_auth


@pytest.mark.slow
def test_cancel_dismisses_the_server_job_and_leaves_nothing(
    dock, chip, token_server, server_auth, tmp_path, wait_for
):
    jobs = token_server.work / "jobs"
    before = set(jobs.iterdir()) if jobs.exists() else set()
    layers_before = set(QgsProject.instance().mapLayers())
    on_server(dock, token_server.url, server_auth)
    dock.probabilities_check.setChecked(True)
    task = dock.run_active_layer()
    on_server_now: list[Path] = []

    def cancel_once_submitted(value: float) -> None:
        if value >= 20 and not on_server_now:  # 0-20: the upload; then the job runs
            on_server_now.extend(set(jobs.iterdir()) - before)
            dock.cancel_button.click()

    task.progressChanged.connect(cancel_once_submitted)
    wait_for(task)
    assert len(on_server_now) == 1, "the job was not on the server when cancelled"
    assert not on_server_now[0].exists()  # dismissed: its folder removed
    assert set(jobs.iterdir()) == before
    status = dock.runs[0]
    assert status.status == "cancelled" and task.result is None and not task.error
    assert status.where == f"server {token_server.url.split('://')[1]}"
    assert "cancelled" in dock.status_label.text()
    assert list((tmp_path / "runs").iterdir()) == []
    assert set(QgsProject.instance().mapLayers()) == layers_before
    assert QgsProject.instance().layerTreeRoot().findGroup("Cloud segmentation") is None
    assert dock.run_button.isEnabled()


@pytest.mark.slow
@pytest.mark.real_data
def test_explain_view_on_the_server_loads_the_heat_map(
    dock, chip, qgis_iface, token_server, server_auth, tmp_path, wait_for
):
    from qgis.core import QgsRectangle, QgsSingleBandPseudoColorRenderer

    dock.model_combo.setCurrentIndex(dock.model_combo.findData("ukis-csmask-4b-l2a"))
    canvas = qgis_iface.mapCanvas()
    canvas.setDestinationCrs(chip.crs())
    full = chip.extent()
    canvas.setExtent(
        QgsRectangle(full.xMinimum(), full.yMaximum() - 960, full.xMinimum() + 960, full.yMaximum())
    )  # 96 x 96 px at 10 m
    on_server(dock, token_server.url, server_auth)
    task = dock.explain_view()
    assert task is not None, dock.status_label.text()
    wait_for(task)
    assert task.error == "", task.error
    group = QgsProject.instance().layerTreeRoot().findGroup("Cloud segmentation")
    (layer,) = [node.layer() for node in group.findLayers()]
    assert layer.name() == "chip - why cloud (gradcam)"
    assert isinstance(layer.renderer(), QgsSingleBandPseudoColorRenderer)
    assert Path(layer.source()).parent == tmp_path / "runs" and layer.width() < 512
    assert f"on server {token_server.url.split('://')[1]} (" in dock.status_label.text()


def assert_failed_in_one_line(dock, task, tmp_path, wait_for, said: str) -> None:
    started = time.monotonic()
    wait_for(task)
    assert time.monotonic() - started < task.client.timeout + 5
    assert dock.runs[0].status == "failed"
    text = dock.status_label.text()
    assert said in text and "\n" not in text and "Traceback" not in text, text
    assert text.startswith("Segment clouds in chip: ")
    assert list((tmp_path / "runs").iterdir()) == []
    assert QgsProject.instance().layerTreeRoot().findGroup("Cloud segmentation") is None
    assert len(QgsProject.instance().mapLayers()) == 1  # the chip only


@pytest.mark.slow
def test_a_wrong_token_is_one_line_and_nothing_loaded(
    dock, chip, token_server, server_auth, tmp_path, wait_for
):
    from cloudseg.cloudseg_plugin.servers import store_token

    wrong = store_token(token_server.url, "not-the-servers-token")
    try:
        on_server(dock, token_server.url, wrong)
        task = dock.run_active_layer()
        assert_failed_in_one_line(dock, task, tmp_path, wait_for, "needs its token")
    finally:
        QgsApplication.authManager().removeAuthenticationConfig(wrong)


@pytest.mark.slow
def test_a_scene_the_server_cannot_take_is_one_line_and_nothing_loaded(
    dock, chip, band_folder, qgis_iface, token_server, server_auth, tmp_path, wait_for
):
    band = QgsRasterLayer(str(band_folder / "B04.tif"), "B04")
    QgsProject.instance().addMapLayer(band)
    qgis_iface.setActiveLayer(band)  # a folder of band files: the server reads no folder
    on_server(dock, token_server.url, server_auth)
    task = dock.run_active_layer()
    started = time.monotonic()
    wait_for(task)
    assert time.monotonic() - started < task.client.timeout
    assert dock.runs[0].status == "failed"
    text = dock.status_label.text()
    assert "is a folder of band files, which the server reads by path only" in text, text
    assert "\n" not in text and text.startswith("Segment clouds in ")
    assert list((tmp_path / "runs").iterdir()) == []
    assert QgsProject.instance().layerTreeRoot().findGroup("Cloud segmentation") is None


def test_an_unreachable_server_is_one_line_and_nothing_loaded(dock, chip, tmp_path, wait_for):
    url = f"http://127.0.0.1:{free_port()}"
    on_server(dock, url)
    task = dock.run_active_layer()
    assert task is not None
    assert_failed_in_one_line(dock, task, tmp_path, wait_for, "cannot reach the cloudseg server")
    assert dock.runs_table.item(0, 5).text() == url.split("://")[1]


def test_run_on_a_server_without_a_url_is_refused(dock, chip):
    on_server(dock, "")
    assert dock.run_active_layer() is None
    assert "enter its URL" in dock.status_label.text()


def test_run_on_is_remembered_without_the_token(dock, qgis_iface, server_auth):
    from cloudseg.cloudseg_plugin.dock import CloudSegDock
    from cloudseg.cloudseg_plugin.servers import saved_server

    on_server(dock, "http://cloudseg.example:8000", server_auth)
    assert saved_server() == ServerChoice("http://cloudseg.example:8000", server_auth)
    again = CloudSegDock(qgis_iface)
    try:
        assert again.on_server and again.server_edit.text() == "http://cloudseg.example:8000"
        assert again.token_select.configId() == server_auth
        assert again.device_label.text() == "runs go to the server http://cloudseg.example:8000"
        dock.run_on_combo.setCurrentIndex(0)  # back to this computer: the URL is kept
        assert saved_server() == ServerChoice("", server_auth)
        third = CloudSegDock(qgis_iface)
        assert not third.on_server and not third.server_edit.isVisibleTo(third)
        assert third.server_edit.text() == "http://cloudseg.example:8000"
        third.detach()
    finally:
        again.detach()


#: Imported on a server run's path; none may need cloudseg's runtime packages.
SERVER_PATH = (
    "cloudseg.cloudseg_plugin.dock",
    "cloudseg.cloudseg_plugin.runs",
    "cloudseg.cloudseg_plugin.servers",
    "cloudseg.cloudseg_plugin.styling",
    "cloudseg.backend.remote",
    "cloudseg.backend.raster.sources",
    "cloudseg.backend.raster.bands",
    "cloudseg.backend.inference.shadow",
)


def test_the_server_path_imports_no_runtime_package():
    """In a fresh interpreter where rasterio, onnxruntime and torch cannot be imported."""
    plugins = Path(QgsApplication.pkgDataPath()) / "python" / "plugins"
    code = f"""
import importlib.abc, sys
sys.path.insert(0, {str(plugins)!r})
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("rasterio", "onnxruntime", "torch"):
            raise ImportError("not installed: " + name)
sys.meta_path.insert(0, Refuse())
for module in {SERVER_PATH!r}:
    __import__(module)
print("imported", len({SERVER_PATH!r}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=None)
    assert done.returncode == 0, done.stderr
    assert f"imported {len(SERVER_PATH)}" in done.stdout


@pytest.mark.slow
def test_a_server_run_needs_no_runtime_package_here(
    plugin, qgis_iface, chip, token_server, server_auth, tmp_path, wait_for, monkeypatch
):
    from cloudseg.backend.dependencies import SEGMENT, missing_requirements
    from cloudseg.cloudseg_plugin.dock import CloudSegDock

    for name in ("rasterio", "onnxruntime", "torch"):
        monkeypatch.setitem(sys.modules, name, None)  # `import name` fails
    assert missing_requirements(SEGMENT)  # as in a QGIS with nothing installed
    dock = CloudSegDock(qgis_iface)
    try:
        dock.output_dir.setFilePath(str(tmp_path / "runs"))
        on_server(dock, token_server.url, server_auth)
        task = dock.run_active_layer()
        assert task is not None, dock.status_label.text()
        wait_for(task)
        assert dock.runs[0].status == "done", dock.runs[0].message
        assert task.outputs["mask"].is_file()
        names = [s["name"] for s in results()]
        assert names == ["chip - clouds"], names
    finally:
        dock.detach()
        save_server(ServerChoice())


@pytest.mark.slow
def test_the_device_line_says_what_runs_on_the_server_before_a_run(
    dock, token_server, server_auth, wait_for
):
    """Picking the server asks it what runs its models; a wrong token is said at once."""
    from cloudseg.backend.remote import ServerClient

    on_server(dock, token_server.url, server_auth)
    probe = dock.probe_server()
    wait_for(probe)
    deadline = time.monotonic() + 60  # the server reads its runtime after its start
    runner = None
    while runner is None and time.monotonic() < deadline:
        runner = (ServerClient(token_server.url, token_server.token).capabilities()["device"]
                  or {}).get("runner")  # fmt: skip
        time.sleep(0.2)
    wait_for(dock.probe_server())
    host = token_server.url.split("://", 1)[1]
    assert dock.device_label.text() == f"runs go to server {host} ({runner})"

    from cloudseg.cloudseg_plugin.servers import store_token

    wrong = store_token("http://127.0.0.1", "not-the-token")
    try:
        dock.token_select.setConfigId(wrong)  # asks again, with the wrong token
        wait_for(dock._probe_task)
        line = dock.device_label.text()
        assert "cannot be used now" in line and "token" in line and "\n" not in line
        assert "not-the-token" not in line
    finally:
        QgsApplication.authManager().removeAuthenticationConfig(wrong)

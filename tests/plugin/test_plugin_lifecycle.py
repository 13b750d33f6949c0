"""The plugin loads, registers its provider and actions, and unload removes them all."""

import json
import logging

import processing
import torch
from qgis.core import Qgis, QgsApplication
from qgis.PyQt.QtCore import QCoreApplication, QEvent
from qgis.PyQt.QtWidgets import QAction, QPushButton

import cloudseg
from cloudseg.backend.dependencies import SEGMENT, Group, Requirement
from cloudseg.cloudseg_plugin import packages


def cloudseg_actions(iface):
    return [
        a for a in iface.mainWindow().findChildren(QAction) if a.objectName().startswith("cloudseg")
    ]


def test_init_gui_registers_provider_and_actions(plugin, qgis_iface):
    provider = QgsApplication.processingRegistry().providerById("cloudseg")
    assert provider is not None
    assert provider.name() == "Cloud segmentation (cloudseg)"
    assert not provider.icon().isNull()
    ids = [a.id() for a in provider.algorithms()]
    assert "cloudseg:environment" in ids and "cloudseg:segment" in ids
    assert sorted(a.objectName() for a in cloudseg_actions(qgis_iface)) == [
        "cloudsegCheckEnvironment",
        "cloudsegInstallPackages",
        "cloudsegSegmentLayer",
        "cloudsegSegmentMenu",
        "cloudsegShowLabelDock",
        "cloudsegShowPanel",
    ]


def test_unload_leaves_nothing_behind(qgis_iface, qgis_processing):
    instance = cloudseg.classFactory(qgis_iface)
    for _ in range(2):  # the plugin reloader loads and unloads repeatedly
        instance.initGui()
        instance.unload()
        QCoreApplication.sendPostedEvents(None, QEvent.DeferredDelete)
        assert QgsApplication.processingRegistry().providerById("cloudseg") is None
        assert cloudseg_actions(qgis_iface) == []
        handlers = logging.getLogger("cloudseg").handlers
        assert not [h for h in handlers if type(h).__name__ == "QgsMessageLogHandler"]


def test_backend_log_records_reach_the_qgis_message_log(plugin):
    received = []

    def on_message(message, tag, level):
        received.append((message, tag, level))

    QgsApplication.messageLog().messageReceived.connect(on_message)
    try:
        logging.getLogger("cloudseg.backend.test").warning("tile 3 of 9 failed")
    finally:
        QgsApplication.messageLog().messageReceived.disconnect(on_message)
    assert ("cloudseg.backend.test: tile 3 of 9 failed", "cloudseg", Qgis.Warning) in received


def test_missing_packages_offer_the_installer_in_one_warning(plugin, qgis_iface):
    bar = qgis_iface.messageBar()
    bar.clearWidgets()
    absent = Requirement("cloudseg-absent-dist", "", "cloudseg_absent_module", "testing")
    step = Group("segment", SEGMENT.title, (*SEGMENT.requirements, absent), plugin_step=True)
    message = plugin.report_missing_dependencies(step)
    assert "\n" not in message and "cloudseg_absent_module" in message
    assert "pip" not in message and "Install packages..." in message
    items = bar.items()
    assert len(items) == 1 and items[0].level() == Qgis.Warning
    assert "cloudseg_absent_module" in items[0].text()
    button = items[0].findChild(QPushButton, "cloudsegInstallFromBar")
    button.click()  # the analyst's one click: the dialog, the step in bold
    dialog = packages._dialog
    assert dialog is not None and dialog.isVisible()
    assert dialog.focus is step
    QCoreApplication.processEvents()  # the message goes once the click is handled
    assert bar.items() == []
    packages.close_dialog()


def test_runs_on_a_server_need_no_install_warning(plugin, qgis_iface):
    """An analyst whose runs go to the team's server is not asked to install packages."""
    from cloudseg.cloudseg_plugin.servers import ServerChoice, save_server

    bar = qgis_iface.messageBar()
    bar.clearWidgets()
    absent = Requirement("cloudseg-absent-dist", "", "cloudseg_absent_module", "testing")
    step = Group("segment", SEGMENT.title, (*SEGMENT.requirements, absent), plugin_step=True)
    logged: list[tuple[str, Qgis.MessageLevel]] = []

    def on_message(text: str, tag: str, level: Qgis.MessageLevel) -> None:
        if tag == "cloudseg":
            logged.append((text, level))

    QgsApplication.messageLog().messageReceived.connect(on_message)
    save_server(ServerChoice("https://cloudseg.example.org"))
    try:
        assert plugin.report_missing_dependencies(step) == ""
    finally:
        save_server(ServerChoice())
        QgsApplication.messageLog().messageReceived.disconnect(on_message)
    assert bar.items() == []
    said = [text for text, level in logged if level == Qgis.Info]
    assert any("cloudseg.example.org" in t and "cloudseg_absent_module" in t for t in said)


def test_complete_environment_shows_no_warning(plugin, qgis_iface):
    qgis_iface.messageBar().clearWidgets()
    assert plugin.report_missing_dependencies() == ""
    assert qgis_iface.messageBar().items() == []


def test_environment_algorithm_reports_device_and_writes_json(plugin, tmp_path):
    target = tmp_path / "env.json"
    result = processing.run("cloudseg:environment", {"OUTPUT": str(target)})
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert result["DEVICE"] == expected
    assert result["CUDA_AVAILABLE"] is torch.cuda.is_available()
    assert result["MISSING"] == ""
    report = json.loads(target.read_text())
    assert report["device"] == expected
    assert report["packages"]["torch"] == torch.__version__.split("+")[0]

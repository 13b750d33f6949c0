"""The plugin loads, registers its provider and actions, and unload removes them all."""

import json
import logging

import processing
import torch
from qgis.core import Qgis, QgsApplication
from qgis.PyQt.QtCore import QCoreApplication, QEvent
from qgis.PyQt.QtWidgets import QAction

import cloudseg
from cloudseg.backend.dependencies import REQUIREMENTS, Requirement


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


def test_missing_packages_show_one_actionable_warning(plugin, qgis_iface):
    qgis_iface.messageBar().clear_messages()
    absent = Requirement("cloudseg_absent_module", "cloudseg-absent-dist", "testing")
    message = plugin.report_missing_dependencies((*REQUIREMENTS, absent))
    warnings = qgis_iface.messageBar().get_messages(Qgis.Warning)
    assert len(warnings) == 1
    assert "cloudseg_absent_module" in warnings[0]
    assert '-m pip install "cloudseg-absent-dist"' in message


def test_complete_environment_shows_no_warning(plugin, qgis_iface):
    qgis_iface.messageBar().clear_messages()
    assert plugin.report_missing_dependencies() == ""
    assert qgis_iface.messageBar().get_messages(Qgis.Warning) == []


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

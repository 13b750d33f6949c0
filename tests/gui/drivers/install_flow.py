"""A new analyst's path: the plugin zip, one button, a first mask; later torch and a round.

Run in a fresh HOME with nothing of the project's venv visible (no PYTHONPATH): QGIS's
own Python as Debian ships it. ``CLOUDSEG_GUI_PHASE`` says which part:

- ``segment``: the zip is installed by QGIS's own *Install from ZIP* code; the message bar
  offers the installer; its button opens the dialog (saved as a picture); *Install* on
  the segmentation step; then a chip layer's right-click *Segment clouds...* runs and
  its mask layer appears. QGIS's numpy and GDAL are recorded before and after.
- ``training``: QGIS starts again with the plugin (and its packages) as left; opening the
  label dock offers the training step; *Install*; one fine-tune round; explain; then
  *Uninstall* removes every package.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.environ["CLOUDSEG_GUI_DRIVERS"])  # run by exec: no __file__

import processing
import qgis.utils
from _driver import REAL_DATA, WORK, finish, seen, step
from osgeo import gdal
from qgis.core import QgsProject, QgsRasterLayer
from qgis.PyQt.QtWidgets import QPushButton

PHASE = os.environ["CLOUDSEG_GUI_PHASE"]
ZIP = os.environ.get("CLOUDSEG_GUI_ZIP", "")
STARTED = time.monotonic()


def python_state() -> dict[str, str]:
    """QGIS's numpy and GDAL: versions and where they load from."""
    import numpy

    return {"numpy": numpy.__version__, "numpy_file": numpy.__file__, "gdal": gdal.__version__}


def plugin_packages() -> object:
    return sys.modules["cloudseg.cloudseg_plugin.packages"]


def wait_for(condition, then, tries: int = 1800) -> None:
    """Poll ``condition`` every half second (QGIS stays live); then ``then()``."""
    if condition() or tries <= 0:
        step(then, 500)
        return
    step(lambda: wait_for(condition, then, tries - 1), 500)


def dialog_idle(then) -> None:
    wait_for(lambda: not plugin_packages()._dialog.runner.busy, then)


# -- phase segment ---------------------------------------------------------------------------
def install_zip() -> None:
    seen["before"] = python_state()
    seen["importable_before"] = "cloudseg" in sys.modules
    import pyplugin_installer

    pyplugin_installer.instance().installFromZipFile(ZIP)
    plugin = qgis.utils.plugins.get("cloudseg")
    seen["plugin_started"] = plugin is not None
    bar = qgis.utils.iface.messageBar()
    buttons = [
        item.findChild(QPushButton, "cloudsegInstallFromBar")
        for item in bar.items()
        if item.findChild(QPushButton, "cloudsegInstallFromBar") is not None
    ]
    seen["bar"] = [item.text() for item in bar.items()]
    seen["clicks"] = 0
    seen["clicked_s"] = time.monotonic() - STARTED  # QGIS's own zip install before it
    buttons[0].click()  # click 1: the message bar's Install packages...
    seen["clicks"] += 1
    dialog_idle(planned)


def planned() -> None:
    dialog = plugin_packages()._dialog
    seen["plan_text"] = dialog.status.text()
    seen["segment_state_before"] = dialog.boxes["segment"][0].text()
    dialog.grab().save(str(WORK / "install-dialog.png"))
    seen["install_started_s"] = time.monotonic() - STARTED
    dialog.boxes["segment"][1].click()  # click 2: Install
    seen["clicks"] += 1
    dialog_idle(installed)


def installed() -> None:
    dialog = plugin_packages()._dialog
    seen["install_s"] = time.monotonic() - STARTED - seen["install_started_s"]
    seen["after_install"] = dialog.status.text()
    seen["segment_state"] = dialog.boxes["segment"][0].text()
    dialog.close()
    seen["clicks"] += 1  # click 3: Close
    folder = REAL_DATA / "oncloudn_l2a" / "adwp"
    layer = QgsRasterLayer(str(folder / "B04.tif"), "adwp B04")
    QgsProject.instance().addMapLayer(layer)
    qgis.utils.iface.setActiveLayer(layer)
    plugin = qgis.utils.plugins["cloudseg"]
    plugin.layer_action.trigger()  # clicks 4-5: right-click the layer, Segment clouds...
    seen["clicks"] += 2
    segment_dialog = plugin.dialog
    segment_dialog.runAlgorithm()  # click 6: Run
    seen["clicks"] += 1
    wait_for(lambda: mask_layers(), segmented, tries=600)


def mask_layers() -> list[str]:
    return [
        n.layer().name()
        for n in QgsProject.instance().layerTreeRoot().findLayers()
        if n.layer().name().endswith("clouds")
    ]


def segmented() -> None:
    seen["mask_layers"] = mask_layers()
    seen["first_mask_s"] = time.monotonic() - STARTED
    seen["after"] = python_state()
    seen["paths"] = [p for p in sys.path if "cloudseg" in p and "plugins" not in p]
    seen["torch"] = "torch" in sys.modules
    seen["packages_root"] = str(plugin_packages().packages_root())
    environment = processing.run("cloudseg:environment", {})  # Check environment
    seen["environment_missing"] = environment["MISSING"]
    finish()


# -- phase training --------------------------------------------------------------------------
def open_label_dock() -> None:
    seen["before"] = python_state()
    plugin = qgis.utils.plugins["cloudseg"]
    seen["segment_ready"] = "cloudseg" in str(sys.path)
    plugin.label_action.setChecked(True)  # the first open offers the training step
    dialog = plugin_packages()._dialog
    seen["offered"] = dialog is not None and dialog.isVisible()
    seen["focus"] = dialog.focus.name if dialog is not None and dialog.focus else None
    dialog_idle(install_training)


def install_training() -> None:
    dialog = plugin_packages()._dialog
    seen["training_plan"] = dialog.status.text()
    seen["install_started_s"] = time.monotonic() - STARTED
    dialog.boxes["training"][1].click()
    dialog_idle(trained)


def trained() -> None:
    from _label import start_round

    dialog = plugin_packages()._dialog
    seen["install_s"] = time.monotonic() - STARTED - seen["install_started_s"]
    seen["after_install"] = dialog.status.text()
    dialog.close()
    plugin = qgis.utils.plugins["cloudseg"]
    plugin.label_action.setChecked(False)
    plugin.label_action.setChecked(True)
    start_round(fine_tuned)


def fine_tuned(dock: object) -> None:
    seen["after_fine_tune"] = dock.status_label.text()
    seen["rounds"] = dock.history_table.rowCount()
    seen["first_fine_tune_s"] = time.monotonic() - STARTED
    layer = QgsProject.instance().mapLayersByName(seen["scene_layer"])[0]  # the dock's scene
    full = layer.extent()
    left, top = full.xMinimum(), full.yMaximum()
    result = processing.run(
        "cloudseg:explain",
        {
            "INPUT": layer,
            "CLASSES": "cloud",
            "METHOD": 0,
            "MODEL": "ukis-csmask-4b-l2a",
            "EXTENT": f"{left},{left + 960},{top - 960},{top} [{layer.crs().authid()}]",
            "OUTPUT": str(WORK / "explain.tif"),
        },
    )
    seen["explain"] = result.get("OUTPUT")
    seen["after"] = python_state()
    freed = plugin_packages().open_dialog().uninstall_now()
    root = plugin_packages().packages_root()
    seen["uninstalled_mb"] = round(freed / 2**20)
    seen["left_after_uninstall"] = root.exists() and [str(p) for p in root.rglob("*")][:5]
    QgsProject.instance().clear()
    finish()


if PHASE == "segment":
    step(install_zip, 1500)
else:
    step(open_label_dock, 1500)

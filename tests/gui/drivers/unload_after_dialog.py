"""Right-click > Segment clouds..., close the dialog, unload and reload the plugin.

The Plugin Manager's own calls (``qgis.utils.unloadPlugin``, ``loadPlugin``,
``startPlugin``) are used: they return False, and show an error, when ``unload`` fails.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.environ["CLOUDSEG_GUI_DRIVERS"])  # run by exec: no __file__

import qgis.utils
from _driver import REAL_DATA, finish, seen, step
from qgis.core import QgsApplication, QgsProject, QgsRasterLayer
from qgis.PyQt.QtCore import QCoreApplication, QEvent
from qgis.PyQt.QtWidgets import QAction
from qgis.utils import iface


def leftovers() -> dict:
    """What of the plugin is still in QGIS."""
    window = iface.mainWindow()
    return {
        "provider": QgsApplication.processingRegistry().providerById("cloudseg") is not None,
        "actions": sorted(
            a.objectName()
            for a in window.findChildren(QAction)
            if a.objectName().startswith("cloudseg")
        ),
    }


def open_and_close() -> None:
    layer = QgsRasterLayer(str(REAL_DATA / "oncloudn_l2a" / "adwp" / "B04.tif"), "adwp B04")
    QgsProject.instance().addMapLayer(layer)
    iface.setActiveLayer(layer)
    plugin = qgis.utils.plugins["cloudseg"]
    action = next(
        a
        for a in iface.mainWindow().findChildren(QAction)
        if a.objectName() == "cloudsegSegmentLayer"
    )
    action.trigger()  # what the layer's context menu entry does
    dialog = plugin.dialog
    seen["dialog_opened"] = dialog is not None and dialog.isVisible()
    dialog.close()
    QCoreApplication.sendPostedEvents(None, QEvent.DeferredDelete)
    step(unload_and_reload)


def unload_and_reload() -> None:
    seen["loaded_before"] = leftovers()
    seen["first_unload_ok"] = qgis.utils.unloadPlugin("cloudseg")
    QCoreApplication.sendPostedEvents(None, QEvent.DeferredDelete)
    seen["after_first_unload"] = leftovers()
    seen["reload_ok"] = qgis.utils.loadPlugin("cloudseg") and qgis.utils.startPlugin("cloudseg")
    seen["after_reload"] = leftovers()
    plugin = qgis.utils.plugins["cloudseg"]
    plugin.open_segment_dialog(iface.activeLayer())  # left open this time
    seen["second_unload_ok"] = qgis.utils.unloadPlugin("cloudseg")
    QCoreApplication.sendPostedEvents(None, QEvent.DeferredDelete)
    seen["after_second_unload"] = leftovers()
    finish()


step(open_and_close, 1500)

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
from qgis.PyQt.QtWidgets import QAction, QScrollArea
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
    step(lambda: close_then_check_others(dialog), 1000)


def horizontal_scrollbars(dialog) -> list[bool]:
    """Whether each scroll area of a dialog shows a horizontal scrollbar (controls cut)."""
    return [area.horizontalScrollBar().isVisible() for area in dialog.findChildren(QScrollArea)]


def close_then_check_others(dialog) -> None:
    import processing

    seen["scrollbars"] = {"segment": horizontal_scrollbars(dialog)}
    dialog.close()
    QCoreApplication.sendPostedEvents(None, QEvent.DeferredDelete)
    others = {
        name: processing.createAlgorithmDialog(f"cloudseg:{name}")
        for name in ("evaluate", "train", "ingest", "export")
    }
    for other in others.values():
        other.show()

    def check() -> None:
        for name, other in others.items():
            seen["scrollbars"][name] = horizontal_scrollbars(other)
            other.close()
        QCoreApplication.sendPostedEvents(None, QEvent.DeferredDelete)
        step(unload_and_reload)

    step(check, 1000)


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

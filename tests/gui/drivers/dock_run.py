"""The dock, as an analyst uses it: an unnamed-band L2A stack, then the results.

1. A band stack of the real L2A chip adwp without band names or level metadata is the
   active layer; the Bands note says the bands have no names.
2. Run: the error names the dock's Bands field (not a command-line flag).
3. Type the bands, run again: the run finishes; the level could not be detected, so
   the dock warns that L1C was assumed and names the dock's Product level.
4. The results: a group named by the input first, expanded, layers named
   "adwp_stack - clouds"... and the legend in words.
5. The layer run on stays the active (selected) layer: "Run on active layer" right
   after the run starts a run on it again (cancelled here).

With CLOUDSEG_GUI_SCREENSHOTS set, the window is saved there (dock.png, results.png).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, os.environ["CLOUDSEG_GUI_DRIVERS"])  # run by exec: no __file__

import numpy as np
import qgis.utils
import rasterio
from _driver import REAL_DATA, WORK, finish, seen, step
from qgis.core import QgsProject, QgsRasterLayer
from qgis.PyQt.QtCore import QSize
from qgis.utils import iface

SHOTS = os.environ.get("CLOUDSEG_GUI_SCREENSHOTS")


def stack() -> str:
    """adwp's four bands in one GeoTIFF, with no band names and no level anywhere."""
    chip = REAL_DATA / "oncloudn_l2a" / "adwp"
    arrays = []
    for band in ("B02", "B03", "B04", "B08"):
        with rasterio.open(chip / f"{band}.tif") as src:
            arrays.append(src.read(1))
            profile = src.profile
    path = WORK / "adwp_stack.tif"
    with rasterio.open(path, "w", **(profile | {"count": 4})) as dst:
        dst.write(np.stack(arrays))
    return str(path)


def grab(name: str) -> None:
    if SHOTS:
        iface.mainWindow().grab().scaledToWidth(1100).save(str(Path(SHOTS) / name))


def start() -> None:
    layer = QgsRasterLayer(stack(), "adwp_stack")
    QgsProject.instance().addMapLayer(layer)
    iface.mainWindow().resize(QSize(1500, 900))
    plugin = qgis.utils.plugins["cloudseg"]
    plugin.panel_action.setChecked(True)
    dock = plugin.dock
    dock.output_dir.setFilePath(str(WORK / "runs"))
    iface.setActiveLayer(layer)
    seen["bands_note"] = dock.bands_note.text()
    seen["first_task"] = dock.run_active_layer() is not None
    step(lambda: wait(dock, after_unnamed), 500)


def wait(dock, then) -> None:
    if dock.task is not None:
        step(lambda: wait(dock, then), 300)
        return
    then(dock)


def after_unnamed(dock) -> None:
    seen["unnamed_status"] = dock.status_label.text()
    seen["unnamed_run"] = dock.runs[0].status
    dock.bands_edit.setText("B02,B03,B04,B08")
    dock.probabilities_check.setChecked(True)
    seen["second_task"] = dock.run_active_layer() is not None
    step(lambda: wait(dock, after_named), 500)


def after_named(dock) -> None:
    seen["named_run"] = dock.runs[0].status
    seen["named_status"] = dock.status_label.text()
    root = QgsProject.instance().layerTreeRoot()
    results = root.findGroup("Cloud segmentation")
    group = results.children()[0]
    seen["results_expanded"] = results.isExpanded()
    seen["group"] = group.name()
    seen["group_expanded"] = group.isExpanded()
    seen["layers"] = [child.name() for child in group.children()]
    view = iface.layerTreeView()
    current = view.currentNode()
    seen["selected"] = current.name() if current is not None else None
    probability = next(c.layer() for c in group.children() if "probability" in c.name())
    seen["probability_legend"] = [
        label for label, _ in probability.renderer().legendSymbologyItems()
    ]
    active = iface.activeLayer()
    seen["active_after_run"] = active.name() if active is not None else None
    iface.mapCanvas().setExtent(iface.mapCanvas().fullExtent())
    iface.mapCanvas().refresh()
    step(lambda: (grab("dock.png"), run_again(dock)), 2500)


def run_again(dock) -> None:
    """Run on the active layer once more, as the analyst would next; cancel it."""
    task = dock.run_active_layer()
    seen["third_task"] = task is not None
    seen["third_status"] = dock.status_label.text()
    if task is not None:
        dock.cancel()
    step(lambda: wait(dock, lambda _: finish()), 300)


step(start, 1500)

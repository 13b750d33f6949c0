"""One active-learning round in the label dock of the real QGIS desktop.

The analyst opens the label dock on the real L2A chip adwp, proposes boxes, labels
three from the model's mask (Start from the model, Done), fine-tunes, and re-runs with
the new version. Training runs inside the QGIS process here, as it does for users
(torch, Lightning and smp loaded next to QGIS's own libraries).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.environ["CLOUDSEG_GUI_DRIVERS"])  # run by exec: no __file__

from _driver import finish, seen, step
from _label import start_round, when_idle
from qgis.core import QgsProject


def rerun(dock: object) -> None:
    """What the judge decided is shown; the analyst picks the new version and re-runs."""
    seen["after_fine_tune"] = dock.status_label.text()
    seen["model"] = dock.model_combo.currentData()
    dock.model_combo.setCurrentIndex(dock.model_combo.findData("coast-r1"))
    seen["rounds"] = dock.history_table.rowCount()
    seen["triton"] = repr(sys.modules.get("triton", "absent"))
    seen["rerun_started"] = dock.rerun() is not None
    when_idle(dock, lambda: end(dock))


def end(dock: object) -> None:
    """Record the layers, close the project as QGIS does on close, and quit."""
    seen["after_rerun"] = dock.status_label.text()
    seen["layers"] = sorted(layer.name() for layer in QgsProject.instance().mapLayers().values())
    QgsProject.instance().clear()
    finish()


step(lambda: start_round(rerun), 1000)

"""The label dock's "Suspicious labels" tab, as an analyst uses it, on a store with mask_values.

The store is the labeled Sentinel-2 scene ingested from a raw source whose data.json
maps raw mask values to classes, three windows with a missed cloud, checked with a
relative --out (tests/review_store.py).

1. The analyst types a wrong report path by hand, then the right one, key by key: no
   message while typing; one for the wrong path once typing is done; the right one
   opens the queue.
2. Opens the worst window, another, and the worst again: one ``corrections`` layer.
3. At the worst window (cloud and shadow in its label): the corrections and the stored
   label are drawn in the project's colours (cyan cloud, purple shadow), on the map.
4. Correct: the correction is stored in the store (no "other bands or classes").

With CLOUDSEG_GUI_SCREENSHOTS set, the window is saved there (review.png).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, os.environ["CLOUDSEG_GUI_DRIVERS"])  # run by exec: no __file__
sys.path.insert(0, str(Path(os.environ["CLOUDSEG_GUI_DRIVERS"]).parents[1]))  # tests/

import numpy as np
import qgis.utils
from _driver import REAL_DATA, WORK, finish, seen, step
from qgis.core import (
    QgsMapRendererSequentialJob,
    QgsMapSettings,
    QgsProject,
    QgsRasterLayer,
)
from qgis.gui import QgsMessageBarItem
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QSize, Qt
from qgis.PyQt.QtGui import QColor
from qgis.PyQt.QtTest import QTest
from qgis.utils import iface
from review_store import checked, mask_values_store

SHOTS = os.environ.get("CLOUDSEG_GUI_SCREENSHOTS")
CYAN, PURPLE = "#00e5ff", "#7b1fa2"
messages: list[str] = []


def count(item) -> None:
    """Note a message pushed to the message bar."""
    try:
        messages.append(sip.cast(item, QgsMessageBarItem).text())
    except Exception as exc:  # a slot must not raise: QGIS would open a modal dialog
        messages.append(f"{type(item).__name__}: {exc}")


def start() -> None:
    store = mask_values_store(REAL_DATA, WORK)
    report = checked(store, WORK)
    iface.mainWindow().resize(QSize(1500, 900))
    iface.messageBar().widgetAdded.connect(count)
    plugin = qgis.utils.plugins["cloudseg"]
    plugin.label_action.setChecked(True)
    dock = plugin.label_dock
    dock.tabs.setCurrentWidget(dock.review)
    panel = dock.review
    panel.show_dashboard = False
    line = panel.report_widget.lineEdit()
    line.setFocus()
    QTest.keyClicks(line, str(WORK / "nowhere" / "label_issues.json"))
    seen["messages_typing_wrong"] = list(messages)
    QTest.keyClick(line, Qt.Key_Return)
    seen["messages_after_wrong"] = list(messages)
    line.selectAll()
    QTest.keyClicks(line, str(report))
    seen["messages_typing_right"] = list(messages)
    QTest.keyClick(line, Qt.Key_Return)
    seen["messages_after_right"] = list(messages)
    seen["queue"] = [[s.key, s.flagged_share] for s in panel.queue]
    order = [0, len(panel.queue) - 1, 0]  # the worst, another, the worst again
    seen["opened"] = []
    open_next(panel, order)


def when_idle(panel, then) -> None:
    step(lambda: then() if panel.task is None else when_idle(panel, then), 300)


def open_next(panel, order: list[int]) -> None:
    """Open the windows of ``order`` one after the other; then look at the last."""
    if not order:
        step(lambda: look(panel), 1500)
        return
    panel.table.selectRow(order[0])
    task = panel.open_selected()
    seen["opened"].append(panel.current.key if task is not None else None)
    when_idle(panel, lambda: open_next(panel, order[1:]))


def rendered(layer, extent) -> np.ndarray:
    """The layer alone rendered over white, 400 x 400 px, as RGB."""
    settings = QgsMapSettings()
    settings.setLayers([layer])
    settings.setDestinationCrs(layer.crs())
    settings.setExtent(extent)
    settings.setOutputSize(QSize(400, 400))
    settings.setBackgroundColor(QColor("white"))
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    image = job.renderedImage().convertToFormat(4)  # QImage.Format_RGB32
    data = image.constBits().asstring(image.sizeInBytes())
    bgra = np.frombuffer(data, np.uint8).reshape(image.height(), image.width(), 4)
    return bgra[..., 2::-1]


def share(rgb: np.ndarray, colour: str, over_white: float = 1.0, tolerance: int = 6) -> float:
    """Share of pixels of ``colour`` drawn at opacity ``over_white`` over white."""
    target = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)], float)
    target = over_white * target + (1 - over_white) * 255
    return float((np.abs(rgb.astype(float) - target).max(axis=-1) <= tolerance).mean())


def look(panel) -> None:
    project = QgsProject.instance()
    seen["corrections_layers"] = len(project.mapLayersByName("corrections"))
    seen["layers"] = sorted(layer.name() for layer in project.mapLayers().values())
    corrections = panel.corrections
    categories = {c.value(): c.symbol().symbolLayer(0).strokeColor().name()
                  for c in corrections.renderer().categories()}  # fmt: skip
    seen["outline_colours"] = {str(k): v for k, v in categories.items()}
    label = next(
        layer
        for layer in project.mapLayers().values()
        if isinstance(layer, QgsRasterLayer) and layer.name().endswith("stored label")
    )
    seen["label_colours"] = {
        str(c.value): c.color.name() for c in label.renderer().classes() if c.value in (1, 2)
    }
    extent = label.extent()
    drawn = rendered(corrections, extent)
    seen["corrections_drawn"] = {"cloud": share(drawn, CYAN), "shadow": share(drawn, PURPLE)}
    opacity = label.renderer().opacity()
    drawn = rendered(label, extent)
    seen["label_drawn"] = {
        "cloud": share(drawn, CYAN, opacity),
        "shadow": share(drawn, PURPLE, opacity),
    }
    if SHOTS:
        iface.mainWindow().grab().scaledToWidth(1100).save(str(Path(SHOTS) / "review.png"))
    corrections.startEditing()
    before = len(messages)
    task = panel.decide("corrected")
    seen["correct_started"] = task is not None
    when_idle(panel, lambda: corrected(panel, before))


def corrected(panel, before: int) -> None:
    from cloudseg.backend.store.dataset import open_dataset

    seen["after_correct"] = messages[before:]
    seen["stored"] = [s for s in open_dataset(WORK / "store").scenes() if "-fix-" in s]
    QgsProject.instance().clear()
    step(finish, 500)


step(start, 1500)

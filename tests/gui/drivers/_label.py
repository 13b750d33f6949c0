"""One active-learning round in the label dock, for the drivers that need one.

The analyst opens the label dock on the real L2A chip adwp, proposes boxes, labels
three from the model's mask (Start from the model, Done) and fine-tunes.
"""

from __future__ import annotations

from collections.abc import Callable

import qgis.utils
from _driver import REAL_DATA, WORK, seen, step
from qgis.core import QgsProject


def when_idle(dock: object, then: object) -> None:
    """Run ``then`` once the dock's task has finished."""
    step(lambda: then() if dock.task is None else when_idle(dock, then), 500)


def start_round(then: Callable[[object], None]) -> None:
    """Open the dock on the chip, propose boxes, label three, fine-tune; then ``then(dock)``."""
    plugin = qgis.utils.plugins["cloudseg"]
    # As Layer > Add Raster Layer opens a band file: QGIS names the layer "B04".
    band = qgis.utils.iface.addRasterLayer(str(REAL_DATA / "oncloudn_l2a" / "adwp" / "B04.tif"))
    seen["scene_layer"] = band.name()
    plugin.label_action.setChecked(True)
    dock = plugin.label_dock
    dock.scene_combo.setLayer(band)
    dock.model_combo.setCurrentIndex(dock.model_combo.findData("ukis-csmask-4b-l2a"))
    dock.box_spin.setValue(64)
    dock.count_spin.setValue(4)
    dock.steps_spin.setValue(5)
    dock.project_widget.setFilePath(str(WORK / "coast.gpkg"))
    seen["propose_started"] = dock.propose() is not None
    when_idle(dock, lambda: label(dock, then))


def outline(dock: object) -> None:
    """The box's outline with the project's group unticked, the dock closed, both back."""
    plugin = qgis.utils.plugins["cloudseg"]
    group = QgsProject.instance().layerTreeRoot().findGroup(f"Labels - {dock.project.name}")
    shown = {"at_box": dock.highlight.isVisible()}
    group.setItemVisibilityChecked(False)
    shown["group_hidden"] = dock.highlight.isVisible()
    group.setItemVisibilityChecked(True)
    dock.close()  # its close button
    shown["dock_closed"] = dock.highlight.isVisible()
    plugin.label_action.setChecked(True)  # opened again from the menu
    shown["both_back"] = dock.highlight.isVisible()
    seen["outline"] = shown


def label(dock: object, then: Callable[[object], None]) -> None:
    """Next to box 1, three boxes from the model's mask, marked Done; then Fine-tune."""
    seen["proposed"] = dock.proposals.featureCount() if dock.proposals else 0
    seen["after_propose"] = dock.status_label.text()
    combo = dock.scene_combo
    seen["scenes"] = sorted(combo.layer(index).name() for index in range(combo.count()))
    seen["key_hint"] = dock.class_buttons.hint.text()
    seen["class_buttons"] = len(dock.class_buttons.group.buttons())
    seen["first_rank"] = dock.proposals.getFeature(dock.next_box())["rank"]
    # At the first box: what the analyst sees (the layer tree) and edits (the active layer).
    root = QgsProject.instance().layerTreeRoot()
    seen["shown_at_box"] = sorted(
        node.layer().name() for node in root.findLayers() if node.isVisible()
    )
    seen["active_at_box"] = qgis.utils.iface.activeLayer().name()
    canvas = qgis.utils.iface.mapCanvas()
    canvas.refresh()
    canvas.waitWhileRendering()
    image = canvas.grab().toImage()
    # Inside the box, away from its outline and from the rank written at its centre.
    points = [(0.3, 0.3), (0.7, 0.3), (0.3, 0.7), (0.7, 0.7)]
    colours = [image.pixelColor(int(x * image.width()), int(y * image.height())) for x, y in points]
    seen["box_colours"] = [[c.red(), c.green(), c.blue()] for c in colours]
    outline(dock)
    seen["added"] = []
    for _ in range(3):
        seen["added"].append(dock.start_from_model())
        dock.mark("labeled")
    seen["progress"] = dock.progress_label.text()
    seen["fine_tune_started"] = dock.fine_tune() is not None
    when_idle(dock, lambda: then(dock))

"""The label dock in a real QGIS (offscreen) on a real chip: the whole active-learning loop.

One analyst session, in order: propose, walk the boxes, start from the model, digitize,
Done / Skip / Back, cancel a fine-tune, close and reopen the project, fine-tune, re-run.
"""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from qgis.core import (
    QgsApplication,
    QgsGeometry,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayerUtils,
)

from cloudseg.backend.active.geometry import rasterize_box
from cloudseg.backend.active.loop import latest_run
from cloudseg.backend.active.project import LabelProject
from cloudseg.backend.models.registry import load_model, registered_models

pytestmark = pytest.mark.real_data
MODEL = "ukis-csmask-4b-l2a"


@pytest.fixture
def session(tmp_path):
    """What the steps of one session share (the project, the chip's transform)."""
    return {"project": tmp_path / "coast.gpkg"}


@pytest.fixture
def dock(plugin, multiband, session):
    """The label dock as the analyst opens it, with the chip as the scene layer."""
    project = QgsProject.instance()
    chip = QgsRasterLayer(str(multiband), "chip")
    assert chip.isValid()
    project.addMapLayer(chip)
    plugin.label_action.setChecked(True)
    dock = plugin.label_dock
    assert dock is not None and not dock.isHidden()
    dock.scene_combo.setLayer(chip)
    dock.model_combo.setCurrentIndex(dock.model_combo.findData(MODEL))
    dock.box_spin.setValue(64)
    dock.count_spin.setValue(4)
    dock.steps_spin.setValue(5)
    session["chip"] = chip
    with rasterio.open(multiband) as ds:
        session["transform"] = ds.transform
    yield dock
    project.removeAllMapLayers()
    project.layerTreeRoot().removeAllChildren()


def _statuses(dock):
    return {f["rank"]: f["status"] for f in dock.proposals.getFeatures()}


def _box(dock, fid, transform):
    return dock.project.read().proposal(fid).box(transform)


def read_rounds(project):
    return LabelProject(project).rounds()


def label_shapes(project):
    return LabelProject(project).read(labels=True).labels


@pytest.mark.slow
def test_the_analyst_loop_from_proposals_to_a_better_model(dock, session, plugin, wait_for):
    project_path = session["project"]
    transform = session["transform"]
    dock.project_widget.setFilePath(str(project_path))  # a new project: created on propose
    assert dock.project.path == project_path
    task = dock.propose()
    wait_for(task)
    assert task.error == ""
    # Proposals: four boxes, all to label; Next selects the first and zooms to it.
    assert _statuses(dock) == {1: "todo", 2: "todo", 3: "todo", 4: "todo"}
    first = dock.next_box()
    assert dock.proposals.getFeature(first)["rank"] == 1
    # Outlined, not selected: a selected polygon is filled and would hide the pixels.
    outline = dock.highlight.asGeometry().boundingBox()
    assert outline == dock.proposals.getFeature(first).geometry().boundingBox()
    assert dock.proposals.selectedFeatureIds() == []
    names = [layer.name() for layer in QgsProject.instance().mapLayers().values()]
    assert f"chip - uncertainty (%) ({MODEL})" in names and f"chip - clouds ({MODEL})" in names
    assert "Done 0 / 4 proposed" in dock.progress_label.text()

    # Start from the model: its polygons rasterize back to its mask inside the box.
    added = dock.start_from_model()
    assert added > 0 and dock.labels.featureCount() == added
    box = _box(dock, first, transform)
    mask = latest_run(dock.project, session["chip"].source(), MODEL).mask
    with rasterio.open(mask) as ds:
        expected = ds.read(1)[box.row : box.row + box.size, box.col : box.col + box.size]
    labels = rasterize_box(label_shapes(project_path), box, transform)
    np.testing.assert_array_equal(labels, expected)

    # The analyst picks "cloud shadow" (key 3) and digitizes a square in the corner.
    dock.class_buttons.key(3)  # the key 3, as the analyst presses it
    assert dock.class_value == 2
    x0, y0 = transform * (box.col, box.row)
    x1, y1 = transform * (box.col + 8, box.row + 8)
    layer = dock.labels
    layer.startEditing()
    geometry = QgsGeometry.fromRect(QgsRectangle(x0, y1, x1, y0))
    feature = QgsVectorLayerUtils.createFeature(layer, geometry)
    assert feature["class"] == 2 and feature["name"] == "cloud shadow"
    assert layer.addFeature(feature)
    # A class changed afterwards (attribute table, identify panel): the name follows it.
    index = layer.fields().indexOf("class")
    for value, name in ((1, "cloud"), (2, "cloud shadow")):
        assert layer.changeAttributeValue(feature.id(), index, value)
        assert layer.getFeature(feature.id())["name"] == name
    # Done saves the edit, records the box and moves on to rank 2.
    assert dock.mark("labeled") is not None
    assert dock.proposals.getFeature(dock.current)["rank"] == 2
    labels = rasterize_box(label_shapes(project_path), box, transform)
    assert (labels[:8, :8] == 2).all()
    np.testing.assert_array_equal(labels[8:, 8:], expected[8:, 8:])
    done = dock.proposals.getFeature(first)
    assert done["status"] == "labeled" and done["labeled_by"] and done["labeled_at"]

    # Skip, then Back: the skipped box is to label again and shown.
    second = dock.current
    dock.mark("skipped")
    assert _statuses(dock)[2] == "skipped" and dock.current != second
    assert dock.back() == second and dock.current == second
    assert _statuses(dock)[2] == "todo"
    for _ in range(2):  # boxes 2 and 3 as the model has them
        dock.start_from_model()
        dock.mark("labeled")
    assert _statuses(dock) == {1: "labeled", 2: "labeled", 3: "labeled", 4: "todo"}
    text = dock.progress_label.text()
    assert "Done 3 / 4 proposed" in text and "km² labeled" in text
    km2 = float(text.split("; ")[1].split(" km²")[0])
    assert km2 == pytest.approx(3 * (64 * abs(transform.a)) ** 2 / 1e6, rel=0.01)
    committed = sorted((f["class"], f.geometry().area()) for f in dock.labels.getFeatures())

    # A fine-tune cancelled at once registers nothing and leaves the project as it was.
    versions = registered_models()
    task = dock.fine_tune()
    task.cancel()
    wait_for(task)
    assert task.result is None and registered_models() == versions
    assert read_rounds(project_path) == []

    # Closing the project and opening it again: every committed label, every status.
    source = session["chip"].source()
    QgsProject.instance().removeAllMapLayers()
    QgsProject.instance().layerTreeRoot().removeAllChildren()
    assert dock.proposals is None and dock.labels is None  # forgotten, not dangling
    chip = QgsRasterLayer(source, "chip")
    QgsProject.instance().addMapLayer(chip)
    dock.project = None
    dock.open_project(str(project_path))
    assert dock.scene_combo.currentLayer().id() == chip.id()  # found again by its file
    assert _statuses(dock) == {1: "labeled", 2: "labeled", 3: "labeled", 4: "todo"}
    again = sorted((f["class"], f.geometry().area()) for f in dock.labels.getFeatures())
    assert again == committed
    assert dock.next_box() is not None
    assert dock.proposals.getFeature(dock.current)["rank"] == 4

    # Fine-tune: a registered version, listed by the dock, the segmentation dock and
    # Processing; selected only if the judge adopted it; a round in the history.
    plugin.panel_action.setChecked(True)
    task = dock.fine_tune()
    wait_for(task, timeout=300)
    assert task.error == "", task.error
    (entry,) = read_rounds(project_path)
    assert entry.boxes == 3 and entry.model == "coast-r1"
    current = "coast-r1" if entry.adopted else MODEL
    assert dock.model_combo.currentData() == current
    assert dock.model_combo.findData("coast-r1") >= 0  # choosable even when kept aside
    assert plugin.dock.model_combo.findData("coast-r1") >= 0
    from cloudseg.cloudseg_plugin.algorithms.options import builtin_model_names

    assert "coast-r1" in builtin_model_names()
    said = dock.status_label.text()
    assert entry.verdict in said
    assert ("adopted" in said) if entry.adopted else (f"kept {MODEL}" in said)
    assert dock.history_table.rowCount() == 1
    shown = dock.history_table.item(0, 1).text()
    assert shown == ("coast-r1" if entry.adopted else "coast-r1\n(kept aside)")
    mean, *per_class = dock.history_table.item(0, 3).text().splitlines()
    before, after = mean.removeprefix("mean ").split(" -> ")
    assert float(before) == pytest.approx(entry.iou_before["mean"], abs=5e-4)
    assert float(after) == pytest.approx(entry.iou_after["mean"], abs=5e-4)
    per_class = "\n".join(per_class)
    assert all(
        f"{name.split()[-1]} {value:.3f}" in per_class
        for name, value in entry.iou_before.items()
        if name != "mean" and value is not None
    )

    # The analyst may still choose the new version by hand, and re-run with it.
    dock.model_combo.setCurrentIndex(dock.model_combo.findData("coast-r1"))
    # Re-run with the new version: its mask beside the old one.
    task = dock.rerun()
    wait_for(task)
    assert task.error == ""
    masks = [
        layer
        for layer in QgsProject.instance().mapLayers().values()
        if layer.name().startswith("chip - clouds (")
    ]
    assert {m.name() for m in masks} >= {"chip - clouds (coast-r1)"}
    new = next(m for m in masks if m.name() == "chip - clouds (coast-r1)")
    with rasterio.open(new.source()) as ds:
        assert ds.tags()["CLOUDSEG_MODEL"] == "coast-r1"


def test_the_dock_refuses_clearly_without_a_project_or_box(plugin, qgis_iface):
    plugin.label_action.setChecked(True)
    dock = plugin.label_dock
    dock.project = None
    assert dock.mark("labeled") is None
    assert "press Next" in dock.status_label.text()
    assert dock.propose() is None
    assert dock.status_label.text() in (
        "choose a label project (a .gpkg) first",
        "pick the scene: a Sentinel-2 raster layer",
    )
    assert dock.task is None and QgsApplication.taskManager().countActiveTasks() == 0


def test_a_typed_project_path_opens_once_when_the_typing_ends(dock, tmp_path):
    """Issue 39, item 12: no error at "/", no project opened at every keystroke."""
    from qgis.PyQt.QtCore import Qt
    from qgis.PyQt.QtTest import QTest

    before = dock.project
    line = dock.project_widget.lineEdit()
    line.clear()
    target = tmp_path / "typed.gpkg"
    QTest.keyClicks(line, str(target))  # "/" first, then every prefix of the path
    assert dock.project is before  # nothing opened while typing
    assert not target.exists()
    QTest.keyClick(line, Qt.Key_Return)
    assert dock.project is not None and dock.project.path == target
    dock.open_project("/")  # a folder: said in one line, the project stays
    assert "is a folder" in dock.status_label.text()
    assert dock.project.path == target
    dock.open_project(tmp_path / "no-such-folder" / "p.gpkg")
    assert "does not exist" in dock.status_label.text()
    assert dock.project.path == target


def _offered(combo):
    """The layers a QgsMapLayerComboBox offers, by name."""
    return sorted(combo.layer(index).name() for index in range(combo.count()))


@pytest.mark.slow
def test_the_scene_list_offers_scenes_not_results(dock, session, tmp_path):
    """Issue 39, item 16: masks, probabilities, uncertainty are no scenes to label."""
    from cloudseg.backend.inference.segment import SegmentOptions, segment

    chip = session["chip"]
    outputs = {kind: tmp_path / f"{kind}.tif" for kind in ("mask", "probs", "doubt", "valid")}
    options = SegmentOptions(
        model=MODEL,
        probabilities=outputs["probs"],
        uncertainty=outputs["doubt"],
        valid=outputs["valid"],
    )
    segment(chip.source(), outputs["mask"], options)
    project = QgsProject.instance()
    for kind, path in outputs.items():
        project.addMapLayer(QgsRasterLayer(str(path), f"chip - {kind}"))
    other = QgsRasterLayer(chip.source(), "another scene")
    project.addMapLayer(other)
    assert _offered(dock.scene_combo) == ["another scene", "chip"]
    project.removeMapLayer(other.id())
    assert _offered(dock.scene_combo) == ["chip"]


@pytest.mark.slow
def test_next_after_propose_shows_box_1_and_the_outline_hides_with_the_dock(
    dock, session, plugin, wait_for
):
    """Issue 39, item 16: the first Next skips no box; the outline goes with dock and group."""
    dock.project_widget.setFilePath(str(session["project"]))
    wait_for(dock.propose())
    assert dock.current is None and not dock.highlight.isVisible()  # no box shown yet
    assert "press Next to go to box 1" in dock.status_label.text()
    ranks = [dock.proposals.getFeature(dock.next_box())["rank"] for _ in range(2)]
    assert ranks == [1, 2]
    outline = dock.highlight.asGeometry().boundingBox()
    assert outline == dock.proposals.getFeature(dock.current).geometry().boundingBox()
    assert dock.highlight.isVisible()
    # The project's group unticked in the Layers panel: the outline goes with its boxes.
    group = QgsProject.instance().layerTreeRoot().findGroup(f"Labels - {dock.project.name}")
    group.setItemVisibilityChecked(False)
    assert not dock.highlight.isVisible()
    group.setItemVisibilityChecked(True)
    assert dock.highlight.isVisible()
    # The dock closed (its menu action, or its close button): the outline goes with it.
    plugin.label_action.setChecked(False)
    assert dock.isHidden() and not dock.highlight.isVisible()
    plugin.label_action.setChecked(True)
    assert dock.highlight.isVisible()
    dock.close()
    assert not dock.highlight.isVisible()
    dock.show()
    assert dock.highlight.isVisible()
    # Another project opened: none of its boxes is shown yet, nor outlined.
    dock.open_project(session["project"].with_name("other.gpkg"))
    assert dock.current is None and not dock.highlight.isVisible()


def test_next_without_a_project_or_proposals_says_what_to_do(dock, tmp_path):
    """Issue 39, item 16: Next said nothing without a project."""
    dock.project = None
    dock.status_label.setText("")
    assert dock.next_box() is None
    assert dock.status_label.text() == (
        "no label project open: choose one (a .gpkg) under Label project, then press Propose areas"
    )
    dock.open_project(tmp_path / "new.gpkg")
    assert dock.next_box() is None
    assert dock.status_label.text() == "no boxes proposed yet: press Propose areas"


def test_the_key_hint_names_the_keys_of_the_class_buttons(dock):
    """Issue 39, item 16: "keys 1-4" was shown beside three class buttons."""
    from qgis.PyQt.QtWidgets import QLabel

    buttons = dock.class_buttons.group.buttons()
    assert len(buttons) == len(load_model(MODEL).card.classes)
    hints = [w.text() for w in dock.findChildren(QLabel) if w.text().startswith("Class of")]
    assert hints == [f"Class of the next polygon (keys 1-{len(buttons)})"]

"""The label dock's "Suspicious labels" queue in a real QGIS (offscreen) on real chips.

One review session: open a label check's report, open the worst window (image, stored
label, model's classes, flagged pixels, label polygons), correct it by digitizing,
accept the next, drop the one after; the store records each decision, keeps the old
labels, holds the corrected version, and training follows; the dashboard opens.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import rasterio
from qgis.core import QgsGeometry, QgsProject, QgsRectangle, QgsVectorLayerUtils

from cloudseg.backend.store.dataset import open_dataset
from cloudseg.training.config import DataConfig
from cloudseg.training.data import usable_scenes
from cloudseg.training.label_check import check_labels

pytestmark = pytest.mark.real_data


@pytest.fixture
def review(plugin, planted_store, tmp_path):
    """A copy of the planted store, checked, and the dock's review tab."""
    store, cloudiest, stored = planted_store
    shutil.copytree(store, tmp_path / "store")
    result = check_labels(tmp_path / "store", "ukis-csmask-6b-l1c", tmp_path / "check", window=64)
    plugin.label_action.setChecked(True)
    dock = plugin.label_dock
    dock.tabs.setCurrentWidget(dock.review)
    yield dock.review, result, cloudiest, stored
    QgsProject.instance().removeAllMapLayers()
    QgsProject.instance().layerTreeRoot().removeAllChildren()


def _layers():
    return {
        layer.name().split(" - ")[-1]: layer for layer in QgsProject.instance().mapLayers().values()
    }


@pytest.mark.slow
def test_review_accept_correct_drop_and_training_follows(review, tmp_path, wait_for):
    panel, result, cloudiest, stored = review
    panel.show_dashboard = False
    panel.report_widget.setFilePath(str(result.report))  # opens it
    queue = panel.queue
    assert len(queue) >= 3 and queue[0].scene == cloudiest
    assert all(s.status == "todo" for s in queue) and panel.table.rowCount() == len(queue)
    shares = [s.flagged_share for s in queue]
    assert shares == sorted(shares, reverse=True) and min(shares) > 0.1

    # Open the worst window: image, stored label, the model's classes, flagged pixels.
    first = queue[0]
    task = panel.open_selected()
    wait_for(task)
    assert task.error == ""
    layers = _layers()
    assert {"image", "stored label", "model's classes", "flagged pixels"} <= set(layers)
    row, col, height, width = first.window
    with rasterio.open(layers["stored label"].source()) as ds:
        np.testing.assert_array_equal(
            ds.read(1), stored[first.scene][row : row + height, col : col + width]
        )
    with rasterio.open(layers["flagged pixels"].source()) as ds:
        flagged = ds.read(1)
    assert (flagged == 1).sum() / (flagged != 255).sum() == pytest.approx(
        first.flagged_share, abs=1e-3
    )
    corrections = panel.corrections
    assert corrections is not None and corrections.isValid()
    assert corrections.featureCount() == 0  # the planted chip is labeled all clear

    # Correct it: digitize a cloud polygon over the window's left half (class 1).
    panel.class_combo.setCurrentIndex(panel.class_combo.findText("1 cloud"))
    extent = layers["image"].extent()
    left = QgsRectangle(
        extent.xMinimum(), extent.yMinimum(), extent.center().x(), extent.yMaximum()
    )
    corrections.startEditing()
    feature = QgsVectorLayerUtils.createFeature(corrections, QgsGeometry.fromRect(left))
    assert feature["class"] == 1 and feature["scene"] == first.scene  # the defaults
    assert corrections.addFeature(feature)
    wait_for(panel.decide("corrected"))
    fixed = f"{first.scene}-fix-r{row}-c{col}-v1"
    dataset = open_dataset(tmp_path / "store")
    assert fixed in dataset.scenes()
    _, labels = dataset.read(fixed)
    expected = np.zeros((height, width), np.uint8)
    expected[:, : width // 2] = 1
    np.testing.assert_array_equal(labels, expected)
    props = dataset.item(fixed).properties
    assert props["cloudseg:corrects"] == {"scene": first.scene, "window": list(first.window)}
    assert props["cloudseg:labeled_by"]
    np.testing.assert_array_equal(dataset.read(first.scene)[1], stored[first.scene])  # old kept
    assert queue[0].status == "corrected"

    # Accept the next window, drop the one after.
    second, third = queue[1], queue[2]
    panel.table.selectRow(1)
    wait_for(panel.open_selected())
    wait_for(panel.decide("accepted"))
    panel.table.selectRow(2)
    wait_for(panel.open_selected())
    wait_for(panel.decide("dropped"))
    decisions = {}
    for suspect in (first, second, third):
        for record in dataset.item(suspect.scene).properties["cloudseg:label_review"]:
            decisions[(suspect.scene, tuple(record["window"]))] = record["decision"]
    assert decisions[(first.scene, first.window)] == "corrected"
    assert decisions[(second.scene, second.window)] == "accepted"
    assert decisions[(third.scene, third.window)] == "dropped"

    # Reopened, the queue remembers; training leaves the corrected and dropped windows out.
    panel.open_report(result.report)
    assert [s.status for s in panel.queue[:3]] == ["corrected", "accepted", "dropped"]
    scenes, uses = usable_scenes(dataset, DataConfig(store=str(tmp_path / "store")))
    assert fixed in scenes
    assert first.window in uses[first.scene].ignored and third.window in uses[third.scene].ignored
    assert second.window not in uses[second.scene].ignored

    # The dataset report opens from the dock.
    wait_for(panel.open_dashboard())
    page = panel.last_dashboard
    assert page is not None and page.is_file()
    assert "Label quality" in page.read_text() and cloudiest in page.read_text()


@pytest.mark.slow
def test_a_bad_report_is_one_clear_message(review, tmp_path):
    panel = review[0]
    bad = tmp_path / "label_issues.json"
    bad.write_text(json.dumps({"nothing": 1}))
    messages = []
    panel.say = lambda text, level: messages.append(text)
    panel.open_report(bad)
    assert panel.queue == [] and not panel.open_button.isEnabled()
    assert len(messages) == 1 and "not a label check report" in messages[0]


@pytest.mark.slow
def test_a_missing_check_raster_is_said_and_the_rest_shown(review, wait_for):
    panel, result, _, _ = review
    panel.show_dashboard = False
    messages = []
    panel.say = lambda text, level: messages.append(text)
    panel.open_report(result.report)
    worst = panel.queue[0].scene
    (result.report.parent / "issues" / f"{worst}.tif").unlink()  # moved away, say
    task = panel.open_selected()
    wait_for(task)
    (said,) = messages
    assert "rasters were not found" in said and f"issues/{worst}.tif" in said
    assert not [layer for layer in _layers() if layer == "flagged pixels"]
    assert {"image", "stored label", "model's classes", "corrections"} <= set(_layers())

"""The layer context menu action and the dock: real layers, real runs in QgsTasks."""

import numpy as np
import pytest
import rasterio
from qgis.core import (
    QgsMapLayerType,
    QgsPalettedRasterRenderer,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.gui import QgsBrowserGuiModel
from qgis.PyQt.QtWidgets import QDockWidget


@pytest.fixture
def layers(multiband, band_folder):
    project = QgsProject.instance()
    chip = QgsRasterLayer(str(multiband), "chip")
    band = QgsRasterLayer(str(band_folder / "B04.tif"), "B04")
    vector = QgsVectorLayer("Polygon?crs=EPSG:32633", "areas", "memory")
    for layer in (chip, band, vector):
        assert layer.isValid()
        project.addMapLayer(layer)
    yield {"chip": chip, "band": band, "vector": vector}
    project.removeAllMapLayers()
    project.layerTreeRoot().removeAllChildren()


def test_context_menu_action_is_for_raster_layers_only(plugin, qgis_iface):
    calls = [
        c
        for c in qgis_iface.addCustomActionForLayerType.call_args_list
        if c.args[0] is plugin.layer_action
    ]
    assert len(calls) == 1
    action, _menu, layer_type, all_layers = calls[0].args
    assert action.text() == "Segment clouds..."
    assert layer_type == QgsMapLayerType.RasterLayer and all_layers is True


@pytest.fixture
def dialog_iface(qgis_iface, monkeypatch):
    """pytest-qgis's iface, with the browser model that Processing dialogs ask it for."""
    model = QgsBrowserGuiModel()
    monkeypatch.setattr(qgis_iface, "browserModel", lambda: model, raising=False)
    return qgis_iface


def test_context_menu_opens_the_dialog_for_the_clicked_layer(plugin, dialog_iface, layers):
    qgis_iface = dialog_iface
    qgis_iface.setActiveLayer(layers["chip"])
    plugin.layer_action.trigger()
    dialog = plugin.dialog
    assert dialog is not None and dialog.isVisible()
    assert dialog.algorithm().id() == "cloudseg:segment"
    parameters = dialog.createProcessingParameters()
    assert parameters["INPUT"] in (layers["chip"].id(), layers["chip"].source())
    wrapper = dialog.mainWidget().wrappers["BANDS"]
    assert wrapper.widgetValue() == "B02,B03,B04,B08"  # filled in from the layer
    dialog.close()


def test_dialog_is_refused_for_a_vector_layer(plugin, qgis_iface, layers):
    plugin.dialog = None
    assert plugin.open_segment_dialog(layers["vector"]) is None
    assert plugin.dialog is None


def open_dock(plugin, tmp_path):
    plugin.panel_action.setChecked(True)
    dock = plugin.dock
    assert isinstance(dock, QDockWidget) and dock.windowTitle() == "Cloud segmentation"
    dock.output_dir.setFilePath(str(tmp_path / "runs"))
    return dock


def test_dock_shows_the_model_card_and_the_device(plugin, tmp_path, wait_for):
    dock = open_dock(plugin, tmp_path)
    dock.model_combo.setCurrentIndex(dock.model_combo.findData("ukis-csmask-6b-l2a"))
    card = dock.card_view.toPlainText()
    assert "B02, B03, B04, B08, B11, B12" in card and "30 m" in card
    assert "cloud shadow" in card and "Apache-2.0" in card
    wait_for(dock._device_task)
    # One plain line; the details behind it.
    line = dock.device_label.text()
    assert "\n" not in line and line.startswith(("CPU (no GPU found) - ", "CPU - ", "GPU: "))
    # What really runs the built-in models: the engine's own plan, not a guess.
    from cloudseg.backend.inference.runners import plan_runner
    from cloudseg.backend.models.registry import load_model

    plan = plan_runner(load_model("ukis-csmask-6b-l2a").card)
    assert plan.summary().split(" on the ")[0] in line
    assert f"Built-in models run with: {plan.summary()}" in dock.device_label.toolTip()
    assert "ONNX models on the CPU: " in dock.device_label.toolTip()


def test_dock_card_shows_measured_accuracy_and_what_preview_costs(plugin, tmp_path):
    from cloudseg.backend.models.registry import load_model

    dock = open_dock(plugin, tmp_path)
    dock.model_combo.setCurrentIndex(dock.model_combo.findData("ukis-csmask-6b-l1c"))
    card = load_model("ukis-csmask-6b-l1c").card
    text = dock.card_view.toPlainText()
    measured = next(m for m in card.metrics if m["config"] == "default-fp32")
    assert f"Measured: {card.headline()}" in text  # the headline, right under the name
    assert "Measured IoU, default run:" in text
    assert f"{measured['dataset']}: clear {measured['iou']['clear']:.3f}" in text
    assert "TTA on " in text and "(4x the time)" in text
    preview = next(m for m in card.metrics if m["config"] == "preview")
    tooltip = dock.preview_check.toolTip()
    assert "about 9x faster on 10 m imagery" in tooltip
    assert f"cloud IoU {preview['iou']['cloud']:.3f}" in tooltip


def test_dock_card_of_a_finetuned_version_shows_its_held_out_iou(plugin, tmp_path):
    """A version registered by a fine-tuning round: its held-out IoU, beside the base's."""
    from dataclasses import replace

    from cloudseg.backend.models.cards import metric_entry
    from cloudseg.backend.models.registry import load_model, register_model

    base = load_model("ukis-csmask-4b-l2a").card
    data = "coast.gpkg: 1 held-out box(es)"

    def metrics(cloud: float, shadow: float) -> dict:
        iou = {"clear": 0.9, "cloud": cloud, "cloud shadow": shadow}
        return {"per_class": {n: {"iou": v} for n, v in iou.items()}, "mean_iou": 0.8}

    card = replace(base, name="coast-card-r1", format="torch", metrics=[
        metric_entry("coast.gpkg", data, f"before ({base.name})", metrics(0.856, 0.7)),
        metric_entry("coast.gpkg", data, "after", metrics(0.871, 0.72)),
    ])  # fmt: skip
    weights = tmp_path / "coast-card-r1.pt"
    weights.write_bytes(b"weights")  # listed from its card; not loaded here
    register_model(weights, card)
    dock = open_dock(plugin, tmp_path)
    dock.reload_models(select="coast-card-r1")
    text = dock.card_view.toPlainText()
    assert "not measured" not in text
    assert "Measured: cloud IoU 0.871, cloud shadow IoU 0.720 on coast.gpkg" in text
    assert "Measured IoU on held-out boxes:" in text
    assert f"{data}: clear 0.900, cloud 0.871, cloud shadow 0.720" in text
    assert f"before ({base.name}): clear 0.900, cloud 0.856, cloud shadow 0.700" in text


@pytest.mark.slow
def test_dock_runs_a_task_to_completion_and_adds_styled_layers(
    plugin, qgis_iface, layers, tmp_path, wait_for
):
    dock = open_dock(plugin, tmp_path)
    dock.polygons_check.setChecked(True)
    dock.level_combo.setCurrentIndex(dock.level_combo.findData("L2A"))
    qgis_iface.setActiveLayer(layers["band"])  # one band file of a band folder
    task = dock.run_active_layer()
    assert task is not None and not dock.run_button.isEnabled()
    wait_for(task)
    assert dock.runs[0].status == "done", dock.runs[0].message
    mask = task.outputs["mask"]
    with rasterio.open(mask) as ds:
        assert ds.tags()["CLOUDSEG_MODEL"] == "ukis-csmask-4b-l2a"
        assert ds.tags()["CLOUDSEG_RUN_RESOLUTION"] == "input grid"  # Preview left off
        assert ds.count == 1 and ds.width == 512
    group = QgsProject.instance().layerTreeRoot().findGroup("Cloud segmentation")
    added = [node.layer() for node in group.findLayers()]
    assert [layer.source() for layer in added if isinstance(layer, QgsRasterLayer)] == [str(mask)]
    assert isinstance(added[-1].renderer(), QgsPalettedRasterRenderer)
    assert any(isinstance(layer, QgsVectorLayer) for layer in added)
    assert dock.runs_table.rowCount() == 1
    assert dock.runs_table.item(0, 1).text() == "done"
    assert "s/km²" in dock.runs_table.item(0, 4).toolTip()  # what the run cost
    assert dock.run_button.isEnabled() and dock.progress.value() == 100


@pytest.mark.slow
def test_dock_writes_the_valid_pixels_as_a_grey_layer(
    plugin, qgis_iface, layers, tmp_path, wait_for
):
    dock = open_dock(plugin, tmp_path)
    dock.valid_check.setChecked(True)
    dock.level_combo.setCurrentIndex(dock.level_combo.findData("L2A"))
    qgis_iface.setActiveLayer(layers["chip"])
    task = dock.run_active_layer()
    wait_for(task)
    assert dock.runs[0].status == "done", dock.runs[0].message
    with rasterio.open(task.outputs["valid"]) as ds:
        valid = ds.read(1)
    with rasterio.open(task.outputs["mask"]) as ds:
        classes = ds.read(1)
    assert (valid[classes != 0] == 0).all() and set(np.unique(valid)) <= {0, 1}
    group = QgsProject.instance().layerTreeRoot().findGroup("Cloud segmentation")
    usable = next(
        n.layer() for n in group.findLayers() if n.layer().name().endswith("valid pixels")
    )
    assert {c.value: c.color.alpha() for c in usable.renderer().classes()} == {1: 0, 0: 190}
    assert f"{100 * (valid == 1).mean():.1f} % usable" in dock.status_label.text()


@pytest.mark.slow
def test_cancelled_dock_run_leaves_nothing_behind(plugin, qgis_iface, layers, tmp_path, wait_for):
    dock = open_dock(plugin, tmp_path)
    dock.probabilities_check.setChecked(True)
    qgis_iface.setActiveLayer(layers["chip"])
    task = dock.run_active_layer()
    task.progressChanged.connect(lambda value: value > 0 and task.cancel())
    wait_for(task)
    assert dock.runs[0].status == "cancelled"
    assert list((tmp_path / "runs").iterdir()) == []
    assert QgsProject.instance().layerTreeRoot().findGroup("Cloud segmentation") is None
    assert len(QgsProject.instance().mapLayers()) == 3


def test_dock_refuses_a_vector_layer_with_a_clear_message(plugin, qgis_iface, layers, tmp_path):
    dock = open_dock(plugin, tmp_path)
    qgis_iface.setActiveLayer(layers["vector"])
    assert dock.run_active_layer() is None
    assert "raster layer" in dock.status_label.text()


@pytest.mark.slow
@pytest.mark.real_data
def test_dock_explains_the_view_as_a_styled_heat_map(
    plugin, qgis_iface, layers, tmp_path, wait_for
):
    from qgis.core import QgsRectangle, QgsSingleBandPseudoColorRenderer

    dock = open_dock(plugin, tmp_path)
    dock.model_combo.setCurrentIndex(dock.model_combo.findData("ukis-csmask-4b-l2a"))
    chip = layers["chip"]
    qgis_iface.setActiveLayer(chip)
    canvas = qgis_iface.mapCanvas()
    canvas.setDestinationCrs(chip.crs())
    full = chip.extent()
    view = QgsRectangle(
        full.xMinimum(), full.yMaximum() - 960, full.xMinimum() + 960, full.yMaximum()
    )  # 96 x 96 px at 10 m
    canvas.setExtent(view)
    # Cancelled: nothing written, no layer.
    task = dock.explain_view()
    task.cancel()
    wait_for(task)
    assert list((tmp_path / "runs").iterdir()) == []
    task = dock.explain_view()
    wait_for(task)
    assert task.error == "", task.error
    group = QgsProject.instance().layerTreeRoot().findGroup("Cloud segmentation")
    (layer,) = [node.layer() for node in group.findLayers()]
    assert layer.name() == "chip - why cloud (gradcam)"
    assert isinstance(layer.renderer(), QgsSingleBandPseudoColorRenderer)
    assert layer.crs() == chip.crs()
    assert abs(layer.extent().xMinimum() - full.xMinimum()) < 10
    shown = canvas.extent().buffered(10)  # the view (widened to the canvas' shape), one px
    assert shown.contains(layer.extent()) and layer.width() < 512  # not the whole chip
    assert dock.run_button.isEnabled() and dock.explain_button.isEnabled()


def _shown(group):
    """The sources of the layers under ``group`` that the map draws."""
    return {node.layer().source() for node in group.findLayers() if node.isVisible()}


@pytest.mark.slow
def test_a_run_into_a_hidden_results_group_shows_on_the_map(
    plugin, qgis_iface, layers, tmp_path, wait_for
):
    """Issue 39, item 13: the analyst hid the results group; the next run still shows."""
    dock = open_dock(plugin, tmp_path)
    dock.level_combo.setCurrentIndex(dock.level_combo.findData("L2A"))
    qgis_iface.setActiveLayer(layers["chip"])
    wait_for(dock.run_active_layer())
    results = QgsProject.instance().layerTreeRoot().findGroup("Cloud segmentation")
    earlier = {node.layer().source() for node in results.findLayers()}
    results.setItemVisibilityChecked(False)  # unticked in the Layers panel
    assert _shown(results) == set()
    task = dock.run_active_layer()
    wait_for(task)
    assert dock.runs[0].status == "done", dock.runs[0].message
    # The new mask is drawn; the results hidden before stay hidden.
    assert _shown(results) == {str(task.outputs["mask"])}
    assert not earlier & _shown(results)


@pytest.mark.slow
def test_an_explanation_inside_a_hidden_group_shows_on_the_map(
    plugin, qgis_iface, layers, tmp_path, wait_for
):
    """Issue 39, item 13: Explain view, the results group inside the analyst's hidden group."""
    dock = open_dock(plugin, tmp_path)
    dock.model_combo.setCurrentIndex(dock.model_combo.findData("ukis-csmask-4b-l2a"))
    chip = layers["chip"]
    qgis_iface.setActiveLayer(chip)
    root = QgsProject.instance().layerTreeRoot()
    archive = root.addGroup("Earlier work")
    archive.addGroup("Cloud segmentation")
    kept = QgsRasterLayer(chip.source(), "old chip")
    QgsProject.instance().addMapLayer(kept, False)
    archive.addLayer(kept)
    archive.setItemVisibilityChecked(False)  # the whole group unticked
    canvas = qgis_iface.mapCanvas()
    canvas.setDestinationCrs(chip.crs())
    full = chip.extent()
    canvas.setExtent(
        type(full)(full.xMinimum(), full.yMaximum() - 640, full.xMinimum() + 640, full.yMaximum())
    )
    task = dock.explain_view()
    wait_for(task)
    assert task.error == "", task.error
    assert _shown(root.findGroup("Cloud segmentation")) == {str(task.result.output)}
    assert not root.findLayer(kept.id()).isVisible()  # hidden before, hidden still


@pytest.mark.slow
def test_results_are_named_after_the_band_folder_and_apart_run_by_run(
    plugin, qgis_iface, layers, band_folder, tmp_path, wait_for
):
    """Issue 39, item 16: QGIS names the band file's layer "B04"; cloudseg reads its folder.

    The results say which scene ("adwp B04 - clouds"), and a second run's end in " (2)".
    """
    dock = open_dock(plugin, tmp_path)
    dock.level_combo.setCurrentIndex(dock.level_combo.findData("L2A"))
    band = layers["band"]
    assert band.name() == "B04"  # as QGIS names adwp/B04.tif
    scene = f"{band_folder.name} B04"
    qgis_iface.setActiveLayer(band)
    for _ in range(2):
        wait_for(dock.run_active_layer())
    model = dock.runs[0].model
    results = QgsProject.instance().layerTreeRoot().findGroup("Cloud segmentation")
    newest, first = results.children()
    assert [first.name(), newest.name()] == [f"{scene} - {model}", f"{scene} - {model} (2)"]
    assert [node.name() for node in first.findLayers()] == [f"{scene} - clouds"]
    assert [node.name() for node in newest.findLayers()] == [f"{scene} - clouds (2)"]
    assert dock.runs_table.item(0, 0).text() == scene
    # Explain view twice: the second heat map is named apart too.
    canvas = qgis_iface.mapCanvas()
    canvas.setDestinationCrs(band.crs())
    full = band.extent()
    canvas.setExtent(
        type(full)(full.xMinimum(), full.yMaximum() - 640, full.xMinimum() + 640, full.yMaximum())
    )
    for _ in range(2):
        wait_for(dock.explain_view())
    names = [child.name() for child in results.children()[:2]]
    assert names == [f"{scene} - why cloud (gradcam) (2)", f"{scene} - why cloud (gradcam)"]

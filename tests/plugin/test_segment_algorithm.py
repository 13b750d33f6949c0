"""cloudseg:segment through Processing: masks, percentages, styled layers, errors."""

import json

import numpy as np
import processing
import pytest
import rasterio
from qgis.core import (
    QgsApplication,
    QgsCategorizedSymbolRenderer,
    QgsPalettedRasterRenderer,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsSingleBandPseudoColorRenderer,
    QgsVectorLayer,
)

from cloudseg.backend.inference.segment import NODATA, SegmentOptions, segment

L2A = "ukis-csmask-4b-l2a"


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["auto", "fp32"])
def test_algorithm_writes_the_engines_mask_and_percentages(
    plugin, chip_layer, multiband, tmp_path, precision
):
    reference = tmp_path / "reference.tif"
    expected = segment(
        multiband, reference, SegmentOptions(product_level="L2A", precision=precision)
    )

    out = tmp_path / "mask.tif"
    result = processing.run(
        "cloudseg:segment",
        {"INPUT": chip_layer, "PRODUCT_LEVEL": "L2A", "PRECISION": precision, "OUTPUT": str(out)},
    )
    with rasterio.open(out) as got, rasterio.open(reference) as want:
        np.testing.assert_array_equal(got.read(1), want.read(1))
        assert got.tags()["CLOUDSEG_MODEL"] == L2A
        assert got.tags()["CLOUDSEG_RUNNER"] == expected.runner == result["RUNNER"]
    if precision == "fp32":
        assert result["RUNNER"].startswith("onnxruntime")
    assert result["MODEL_USED"] == L2A
    assert result["CLOUD_PERCENT"] == pytest.approx(expected.class_percent["cloud"])
    assert result["SHADOW_PERCENT"] == pytest.approx(expected.class_percent["cloud shadow"])
    assert result["CLEAR_PERCENT"] == pytest.approx(expected.class_percent["clear"])
    total = result["CLOUD_PERCENT"] + result["SHADOW_PERCENT"] + result["CLEAR_PERCENT"]
    assert total == pytest.approx(100, abs=0.01)
    assert 0 < result["CLOUD_PERCENT"] < 100


@pytest.mark.slow
def test_advanced_resolution_runtime_and_tiling_reach_the_engine(plugin, chip_layer, tmp_path):
    """The same options by name as the command line, with the same masks."""
    options = SegmentOptions(
        product_level="L2A", resolution="preview", runtime="torch", device="cpu", overlap=32
    )
    expected = segment(chip_layer.source(), tmp_path / "reference.tif", options)
    out = tmp_path / "mask.tif"
    result = processing.run(
        "cloudseg:segment",
        {
            "INPUT": chip_layer,
            "PRODUCT_LEVEL": "L2A",
            "RESOLUTION": "preview",
            "RUNTIME": "torch",
            "DEVICE": "cpu",
            "OVERLAP": 32,
            "OUTPUT": str(out),
        },
    )
    assert result["RUNNER"] == expected.runner and result["RUNNER"].startswith("torch")
    with rasterio.open(out) as got, rasterio.open(tmp_path / "reference.tif") as want:
        np.testing.assert_array_equal(got.read(1), want.read(1))
        assert got.tags()["CLOUDSEG_RUN_RESOLUTION"] == "30 m (model card; preview)"
        assert got.tags()["CLOUDSEG_TILING"] == '{"tile_size": 256, "overlap": 32}'
    alg = QgsApplication.processingRegistry().algorithmById("cloudseg:segment")
    assert alg.parameterDefinition("RESOLUTION").defaultValue() == "native"
    assert "preview" in alg.shortHelpString() and "cloud IoU" in alg.shortHelpString()


@pytest.mark.slow
def test_results_load_as_styled_layers_in_a_group(plugin, chip_layer, tmp_path):
    result = processing.runAndLoadResults(
        "cloudseg:segment",
        {
            "INPUT": chip_layer,
            "PRODUCT_LEVEL": "L2A",
            "OUTPUT": str(tmp_path / "mask.tif"),
            "PROBABILITIES": str(tmp_path / "probs.tif"),
            "VECTOR": str(tmp_path / "polygons.gpkg"),
            "MIN_AREA": 2000,
        },
    )
    project = QgsProject.instance()
    group = project.layerTreeRoot().findGroup("Cloud segmentation")
    assert group is not None
    layers = {node.layer().source().split("|")[0]: node.layer() for node in group.findLayers()}
    mask = layers[result["OUTPUT"]]
    renderer = mask.renderer()
    assert isinstance(renderer, QgsPalettedRasterRenderer)
    classes = {c.value: (c.label, c.color.name(), c.color.alpha()) for c in renderer.classes()}
    assert classes == {
        0: ("clear", "#2e7d32", 0),
        1: ("cloud", "#00e5ff", 255),
        2: ("cloud shadow", "#7b1fa2", 255),
    }
    assert L2A in mask.metadata().title()
    assert "sha256" in mask.metadata().abstract()
    # Named by the input first, so that runs on several layers stay apart.
    assert {layer.name() for layer in layers.values()} == {
        "chip - clouds",
        "chip - cloud probability (%)",
        "chip - cloud and shadow polygons",
    }

    probs = layers[result["PROBABILITIES"]]
    assert isinstance(probs.renderer(), QgsSingleBandPseudoColorRenderer)
    assert probs.renderer().band() == 2  # P(cloud)

    polygons = layers[result["VECTOR"]]
    assert isinstance(polygons, QgsVectorLayer)
    assert isinstance(polygons.renderer(), QgsCategorizedSymbolRenderer)
    names = {f["name"] for f in polygons.getFeatures()}
    assert names <= {"cloud", "cloud shadow"} and "cloud" in names
    assert min(f["area_m2"] for f in polygons.getFeatures()) >= 2000


@pytest.mark.slow
def test_polygons_cover_the_cloud_pixels(plugin, chip_layer, tmp_path):
    result = processing.run(
        "cloudseg:segment",
        {
            "INPUT": chip_layer,
            "PRODUCT_LEVEL": "L2A",
            "OUTPUT": str(tmp_path / "mask.tif"),
            "VECTOR": str(tmp_path / "polygons.gpkg"),
            "MIN_AREA": 0,
        },
    )
    with rasterio.open(result["OUTPUT"]) as ds:
        mask = ds.read(1)
        pixel_area = abs(ds.transform.a * ds.transform.e)
    polygons = QgsVectorLayer(result["VECTOR"], "p", "ogr")
    cloud_area = sum(f["area_m2"] for f in polygons.getFeatures() if f["name"] == "cloud")
    assert cloud_area == pytest.approx((mask == 1).sum() * pixel_area)


def test_extent_segments_only_that_area(plugin, chip_layer, tmp_path):
    full = chip_layer.extent()
    part = QgsRectangle(
        full.xMinimum(),
        full.yMinimum() + full.height() / 2,
        full.xMinimum() + full.width() / 2,
        full.yMaximum(),
    )
    result = processing.run(
        "cloudseg:segment",
        {
            "INPUT": chip_layer,
            "PRODUCT_LEVEL": "L2A",
            "EXTENT": part,
            "OUTPUT": str(tmp_path / "mask.tif"),
        },
    )
    with rasterio.open(result["OUTPUT"]) as ds:
        assert (ds.width, ds.height) == (chip_layer.width() // 2, chip_layer.height() // 2)
        assert ds.bounds.left == pytest.approx(part.xMinimum())
        assert ds.bounds.top == pytest.approx(part.yMaximum())
        assert (ds.read(1) != NODATA).all()


def test_errors_name_the_dialogs_parameters_not_command_line_flags(plugin, tmp_path, multiband):
    import rasterio

    unnamed = tmp_path / "unnamed.tif"  # the chip's bands without their names
    with rasterio.open(multiband) as src:
        profile, data = src.profile, src.read()
    with rasterio.open(unnamed, "w", **profile) as dst:
        dst.write(data)
    layer = QgsRasterLayer(str(unnamed), "unnamed")
    QgsProject.instance().addMapLayer(layer)
    try:
        with pytest.raises(QgsProcessingException) as caught:
            processing.run("cloudseg:segment", {"INPUT": layer, "OUTPUT": str(tmp_path / "m.tif")})
    finally:
        QgsProject.instance().removeMapLayer(layer.id())
    assert "the Bands parameter" in str(caught.value) and "--bands" not in str(caught.value)


def test_an_undetectable_level_is_reported_in_the_log(plugin, chip_layer, tmp_path):
    feedback = LogFeedback()
    result = processing.run(
        "cloudseg:segment",
        {"INPUT": chip_layer, "OUTPUT": str(tmp_path / "m.tif")},
        feedback=feedback,
    )
    assert result["MODEL_USED"] == "ukis-csmask-4b-l1c"
    assert any(line.startswith("Product level: L1C (assumed: ") for line in feedback.infos)
    errors = " ".join(feedback.errors)  # shown in red in the dialog's log
    assert "product level unknown" in errors and "the Product level parameter (L2A)" in errors


class LogFeedback(QgsProcessingFeedback):
    """Keeps what an algorithm writes to the dialog's log."""

    def __init__(self) -> None:
        super().__init__()
        self.infos: list[str] = []
        self.errors: list[str] = []

    def pushInfo(self, info: str) -> None:
        self.infos.append(info)

    def reportError(self, error: str, fatalError: bool = False) -> None:  # noqa: N803
        self.errors.append(error)


def test_backend_errors_become_processing_exceptions(plugin, chip_layer, tmp_path):
    with pytest.raises(QgsProcessingException, match=r"needs band.*B11"):
        processing.run(
            "cloudseg:segment",
            {"INPUT": chip_layer, "MODEL": "ukis-csmask-6b-l2a", "OUTPUT": str(tmp_path / "m.tif")},
        )
    assert list(tmp_path.iterdir()) == []


def test_the_valid_mask_loads_styled_with_its_usable_share(plugin, chip_layer, tmp_path):
    result = processing.runAndLoadResults(
        "cloudseg:segment",
        {
            "INPUT": chip_layer,
            "PRODUCT_LEVEL": "L2A",
            "OUTPUT": str(tmp_path / "mask.tif"),
            "VALID": str(tmp_path / "valid.tif"),
            "BUFFER_CLOUD": 60,
            "BUFFER_SHADOW": 0,
            "CLOUD_THRESHOLD": 0.3,
        },
    )
    with rasterio.open(result["VALID"]) as ds:
        valid = ds.read(1)
        assert json.loads(ds.tags()["CLOUDSEG_BUFFERS_M"]) == {"cloud": 60.0, "shadow": 0.0}
    with rasterio.open(result["OUTPUT"]) as ds:
        classes = ds.read(1)
        assert json.loads(ds.tags()["CLOUDSEG_DECISION"])["cloud_threshold"] == 0.3
    assert (valid[classes != 0] == 0).all() and (valid == 0).sum() > (classes != 0).sum()
    assert result["USABLE_PERCENT"] == pytest.approx(100 * (valid == 1).mean(), abs=1e-3)
    group = QgsProject.instance().layerTreeRoot().findGroup("Cloud segmentation")
    layer = next(n.layer() for n in group.findLayers() if n.layer().name() == "chip - valid pixels")
    classes_drawn = {c.value: c.color.alpha() for c in layer.renderer().classes()}
    assert classes_drawn == {1: 0, 0: 190}  # usable transparent, the rest grey


@pytest.mark.slow
def test_shadow_geometry_reaches_the_engine_and_the_log(plugin, real_data, tmp_path):
    from cloudseg.backend.choices import SHADOW_GEOMETRY_EFFECT

    from ..conftest import BANDS, stack_bands

    scene = stack_bands(real_data / "oncloudn_l2a" / "akny", tmp_path / "akny.tif", BANDS)
    with rasterio.open(scene, "r+") as ds:
        ds.update_tags(SUN_AZIMUTH="99.2", SUN_ZENITH="21.6")  # its place and time
    options = SegmentOptions(product_level="L2A", shadow_geometry=True)
    expected = segment(scene, tmp_path / "reference.tif", options)
    assert expected.shadow_geometry["changed_pixels"] > 0
    layer = QgsRasterLayer(str(scene), "akny")
    feedback = LogFeedback()
    out = tmp_path / "mask.tif"
    processing.run(
        "cloudseg:segment",
        {"INPUT": layer, "PRODUCT_LEVEL": "L2A", "SHADOW_GEOMETRY": True, "OUTPUT": str(out)},
        feedback=feedback,
    )
    with rasterio.open(out) as got, rasterio.open(tmp_path / "reference.tif") as want:
        np.testing.assert_array_equal(got.read(1), want.read(1))
        report = json.loads(got.tags()["CLOUDSEG_SHADOW_GEOMETRY"])
    assert report["sun"]["source"] == "GDAL metadata"
    assert any(
        line.startswith("shadow geometry: sun azimuth 99, zenith 21.6 (GDAL metadata)")
        for line in feedback.infos
    )
    alg = QgsApplication.processingRegistry().algorithmById("cloudseg:segment")
    parameter = alg.parameterDefinition("SHADOW_GEOMETRY")
    assert parameter.defaultValue() is False
    assert SHADOW_GEOMETRY_EFFECT in parameter.help()


@pytest.mark.slow
def test_results_show_on_the_map_when_the_results_group_is_hidden(plugin, chip_layer, tmp_path):
    """Issue 39, item 13, through Processing: results land in a hidden group, yet show."""
    results = QgsProject.instance().layerTreeRoot().insertGroup(0, "Cloud segmentation")
    results.setItemVisibilityChecked(False)
    result = processing.runAndLoadResults(
        "cloudseg:segment",
        {"INPUT": chip_layer, "PRODUCT_LEVEL": "L2A", "OUTPUT": str(tmp_path / "mask.tif")},
    )
    shown = [node.layer().source() for node in results.findLayers() if node.isVisible()]
    assert shown == [result["OUTPUT"]]


@pytest.fixture
def band_layer(band_folder):
    """adwp/B04.tif as QGIS opens it: a layer named "B04"."""
    layer = QgsRasterLayer(str(band_folder / "B04.tif"), "B04")
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    yield layer
    QgsProject.instance().removeAllMapLayers()
    QgsProject.instance().layerTreeRoot().removeAllChildren()


@pytest.mark.slow
def test_a_band_files_results_are_named_after_its_folder_and_apart(
    plugin, band_layer, band_folder, tmp_path
):
    """Issue 39, item 16, through Processing: "adwp B04 - clouds", then "... (2)"."""
    for number in range(2):
        processing.runAndLoadResults(
            "cloudseg:segment",
            {
                "INPUT": band_layer,
                "PRODUCT_LEVEL": "L2A",
                "OUTPUT": str(tmp_path / f"mask{number}.tif"),
            },
        )
    results = QgsProject.instance().layerTreeRoot().findGroup("Cloud segmentation")
    scene = f"{band_folder.name} B04"
    assert [node.name() for node in results.findLayers()] == [
        f"{scene} - clouds (2)",
        f"{scene} - clouds",
    ]

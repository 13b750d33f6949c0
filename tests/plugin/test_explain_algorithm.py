"""cloudseg:explain through Processing: one heat map per class, named after the input.

(How the desktop's Processing dialog names them: tests/gui, ``processing_names``.)
"""

import processing
import pytest
import rasterio
from qgis.core import (
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsSingleBandPseudoColorRenderer,
)


def _results() -> dict[str, QgsRasterLayer]:
    group = QgsProject.instance().layerTreeRoot().findGroup("Cloud segmentation")
    assert group is not None
    return {node.layer().name(): node.layer() for node in group.findLayers()}


@pytest.mark.slow
@pytest.mark.real_data
def test_two_classes_load_as_two_heat_maps_named_after_the_input(plugin, chip_layer, tmp_path):
    full = chip_layer.extent()
    view = QgsRectangle(
        full.xMinimum(), full.yMaximum() - 960, full.xMinimum() + 960, full.yMaximum()
    )  # 96 x 96 px at 10 m
    out = tmp_path / "a-explain-hirescam.tif"
    processing.runAndLoadResults(
        "cloudseg:explain",
        {
            "INPUT": chip_layer,
            "CLASSES": "cloud,cloud shadow",
            "METHOD": 1,
            "MODEL": "ukis-csmask-4b-l2a",
            "EXTENT": view,
            "OUTPUT": str(out),
        },
    )
    with rasterio.open(out) as written:
        assert written.count == 2
    layers = _results()
    assert set(layers) == {"chip - why cloud (hirescam)", "chip - why cloud shadow (hirescam)"}
    bands = {name: layer.renderer().band() for name, layer in layers.items()}
    assert bands == {"chip - why cloud (hirescam)": 1, "chip - why cloud shadow (hirescam)": 2}
    assert all(isinstance(layer.renderer(), QgsSingleBandPseudoColorRenderer)
               for layer in layers.values())  # fmt: skip
    assert all(layer.source() == str(out) for layer in layers.values())

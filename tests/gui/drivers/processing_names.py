"""Processing's own dialog on named files: results named after the input, every class shown.

1. The Explain dialog, opened as the toolbox opens it, runs on the adwp chip for two
   classes into a named file ("a-explain-hirescam.tif"); the layers it loads are named
   after the chip and show one class each (band 1, band 2).
2. The Segment dialog writes its mask and probabilities to named files; their layers
   are named after the chip too ("adwp - clouds"), not after the files.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.environ["CLOUDSEG_GUI_DRIVERS"])  # run by exec: no __file__

import processing
import rasterio
from _driver import REAL_DATA, WORK, finish, seen, step
from qgis.core import QgsProject, QgsRasterLayer, QgsSettings
from qgis.utils import iface

EXPLAIN = WORK / "a-explain-hirescam.tif"


def chip() -> QgsRasterLayer:
    """adwp's four bands in one GeoTIFF whose band descriptions name them."""
    folder = REAL_DATA / "oncloudn_l2a" / "adwp"
    arrays = []
    for band in ("B02", "B03", "B04", "B08"):
        with rasterio.open(folder / f"{band}.tif") as src:
            arrays.append(src.read(1))
            profile = src.profile
    path = WORK / "adwp.tif"
    with rasterio.open(path, "w", **(profile | {"count": 4})) as dst:
        for index, array in enumerate(arrays, start=1):
            dst.write(array, index)
        dst.descriptions = ("B02", "B03", "B04", "B08")
    return QgsRasterLayer(str(path), "adwp")


def results() -> dict[str, QgsRasterLayer]:
    """The loaded results (anywhere in the layer tree) by name, without the input."""
    root = QgsProject.instance().layerTreeRoot()
    return {n.layer().name(): n.layer() for n in root.findLayers() if n.layer().name() != "adwp"}


def start() -> None:
    layer = chip()
    QgsProject.instance().addMapLayer(layer)
    full = layer.extent()
    left, top = full.xMinimum(), full.yMaximum()
    view = f"{left},{left + 960},{top - 960},{top} [{layer.crs().authid()}]"  # 96 x 96 px
    dialog = processing.createAlgorithmDialog(
        "cloudseg:explain",
        {
            "INPUT": layer,
            "CLASSES": "cloud,cloud shadow",
            "METHOD": 1,
            "MODEL": "ukis-csmask-4b-l2a",
            "EXTENT": view,
            "OUTPUT": str(EXPLAIN),
        },
    )
    dialog.show()
    dialog.runAlgorithm()
    wait_for(lambda: len(results()) >= 2 or not dialog.isVisible(), lambda: explained(dialog))


def wait_for(condition, then, tries: int = 240) -> None:
    """Poll ``condition`` every half second (QGIS stays live); then ``then()``."""
    if condition() or tries <= 0:
        step(then, 1000)
        return
    step(lambda: wait_for(condition, then, tries - 1), 500)


def explained(dialog) -> None:
    found = results()
    seen["explain_layers"] = {
        name: [layer.renderer().band(), layer.source()] for name, layer in found.items()
    }
    dialog.close()
    for layer in found.values():
        QgsProject.instance().removeMapLayer(layer.id())
    layer = next(iter(QgsProject.instance().mapLayersByName("adwp")))
    segment = processing.createAlgorithmDialog(
        "cloudseg:segment",
        {
            "INPUT": layer,
            "PRODUCT_LEVEL": "L2A",
            "OUTPUT": str(WORK / "mask.tif"),
            "PROBABILITIES": str(WORK / "probs.tif"),
        },
    )
    segment.show()
    segment.runAlgorithm()
    wait_for(lambda: len(results()) >= 2, lambda: segmented(segment))


def segmented(dialog) -> None:
    seen["segment_layers"] = sorted(results())
    dialog.close()
    QgsProject.instance().clear()
    step(finish, 500)


# As Settings > Options > Processing saves it once the analyst has pressed OK there.
QgsSettings().setValue("Processing/Configuration/PREFER_FILENAME_AS_LAYER_NAME", True)
iface.mainWindow().resize(1500, 900)
step(start, 1500)

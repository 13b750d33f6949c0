"""Style cloudseg results as analysts expect them, and put them in one layer group.

Everything is read from the result files themselves (the ``CLOUDSEG_*`` tags the
engine writes), so a mask made by the CLI and opened later is styled the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsColorRampLegendNodeSettings,
    QgsColorRampShader,
    QgsFillSymbol,
    QgsLayerMetadata,
    QgsLayerTree,
    QgsLayerTreeGroup,
    QgsLayerTreeNode,
    QgsMapLayer,
    QgsPalettedRasterRenderer,
    QgsProject,
    QgsRasterLayer,
    QgsRasterShader,
    QgsRendererCategory,
    QgsSingleBandPseudoColorRenderer,
    QgsVectorLayer,
)
from qgis.PyQt.QtGui import QColor

from ..backend.models.cards import class_color

GROUP_NAME = "Cloud segmentation"
CLEAR = "clear"
PROBABILITY_CLASS = "cloud"
#: Light enough that the image shows through cloud and shadow classes.
MASK_OPACITY = 0.5
#: What each result is called after its input's name ("adwp - clouds").
RESULT_WORDS = {
    "classes": "clouds",
    "probabilities": "cloud probability (%)",
    "uncertainty": "uncertainty (%)",
    "polygons": "cloud and shadow polygons",
    "valid": "valid pixels",
}


def result_name(input_name: str, kind: str) -> str:
    """A result layer's name: the input's first, then what it is ("adwp - clouds")."""
    return f"{input_name} - {RESULT_WORDS[kind]}"


def input_name(layer: QgsMapLayer, scene: Path | None = None) -> str:
    """What a run's results on ``layer`` are named after ("adwp B04" for ``adwp/B04.tif``).

    The layer's name, with the band folder's name first when the layer is one band file
    of a band folder: QGIS names the layer after the file ("B04"), cloudseg reads the
    whole folder, and without its name two scenes' B04 results could not be told apart.

    Args:
        layer: The layer the run is made on.
        scene: What cloudseg reads for it (``scene_path_from_gdal_source``), if known.
    """
    from ..backend.errors import CloudsegError
    from ..backend.raster.sources import scene_path_from_gdal_source

    name = layer.name()
    if scene is None:
        try:
            scene = scene_path_from_gdal_source(layer.source())
        except (CloudsegError, OSError, ValueError):
            return name
    file = Path(layer.source().split("|")[0])
    if scene.is_dir() and file.parent == scene and scene.name.lower() not in name.lower():
        return f"{scene.name} {name}"
    return name


def is_result(layer: QgsMapLayer) -> bool:
    """Whether ``layer`` is something cloudseg made, not a scene.

    Masks, probabilities, uncertainty, valid pixels, explanations: their files carry
    cloudseg's tags.
    """
    return isinstance(layer, QgsRasterLayer) and bool(cloudseg_tags(layer))


def distinct_suffix(names: list[str], taken: set[str]) -> str:
    """The suffix that sets one run's ``names`` apart from those ``taken``.

    "" when none is taken, else " (2)", " (3)"... the first that frees them all: one for
    the whole run, so that its layers and group keep matching names.
    """
    suffix, number = "", 1
    while any(name + suffix in taken for name in names):
        number += 1
        suffix = f" ({number})"
    return suffix


def cloudseg_tags(layer: QgsRasterLayer) -> dict[str, str]:
    """The ``CLOUDSEG_*`` metadata tags of a raster layer's file (empty if none)."""
    from osgeo import gdal

    if layer.providerType() != "gdal":  # a web service: nothing of cloudseg's, no request
        return {}
    try:
        dataset = gdal.Open(layer.source())
    except RuntimeError:  # GDAL raising (osgeo.gdal.UseExceptions elsewhere)
        return {}
    if dataset is None:
        return {}
    return {k: v for k, v in (dataset.GetMetadata() or {}).items() if k.startswith("CLOUDSEG_")}


def _classes(tags: dict[str, str]) -> list[dict[str, Any]]:
    """The tagged classes, each with its colour (the project's for its kind if none)."""
    classes = json.loads(tags.get("CLOUDSEG_CLASSES", "[]"))
    return [c | {"color": class_color(c["name"], c.get("color"))} for c in classes]


def _color(text: str, alpha: int | None = None) -> QColor:
    text = text.lstrip("#")
    color = QColor(f"#{text[:6]}")
    color.setAlpha(alpha if alpha is not None else int(text[6:8], 16) if len(text) == 8 else 255)
    return color


def describe(layer: QgsMapLayer, tags: dict[str, str], what: str) -> None:
    """Set the layer's metadata: which model made it, how, and when."""
    metadata = QgsLayerMetadata()
    metadata.setTitle(f"{what} by {tags.get('CLOUDSEG_MODEL', 'cloudseg')}")
    metadata.setAbstract(
        "\n".join(f"{key[len('CLOUDSEG_') :].lower()}: {value}" for key, value in tags.items())
    )
    metadata.setKeywords({"cloudseg": ["cloud", "cloud shadow", tags.get("CLOUDSEG_MODEL", "")]})
    layer.setMetadata(metadata)


def style_classes(layer: QgsRasterLayer, tags: dict[str, str] | None = None) -> None:
    """Paletted renderer with the card's class names and colours; clear is transparent."""
    tags = tags if tags is not None else cloudseg_tags(layer)
    classes = [
        QgsPalettedRasterRenderer.Class(
            int(c["value"]), _color(c["color"], 0 if c["name"] == CLEAR else None), c["name"]
        )
        for c in _classes(tags)
    ]
    renderer = QgsPalettedRasterRenderer(layer.dataProvider(), 1, classes)
    renderer.setOpacity(MASK_OPACITY)  # the scene stays visible under the classes
    layer.setRenderer(renderer)
    describe(layer, tags, "Cloud mask")
    layer.triggerRepaint()


def style_valid(layer: QgsRasterLayer) -> None:
    """Usable pixels transparent; cloud, shadow and their buffers grey, half opaque."""
    classes = [
        QgsPalettedRasterRenderer.Class(1, _color("#ffffff", 0), "usable"),
        QgsPalettedRasterRenderer.Class(0, _color("#616161", 190), "cloud, shadow or buffer"),
    ]
    layer.setRenderer(QgsPalettedRasterRenderer(layer.dataProvider(), 1, classes))
    layer.triggerRepaint()


def style_flags(layer: QgsRasterLayer, color: str) -> None:
    """Flagged pixels (1) in ``color``; the rest (0, and 255 unlabeled) transparent."""
    classes = [
        QgsPalettedRasterRenderer.Class(0, _color(color, 0), "not flagged"),
        QgsPalettedRasterRenderer.Class(1, _color(color, 255), "flagged: the model disagrees"),
    ]
    renderer = QgsPalettedRasterRenderer(layer.dataProvider(), 1, classes)
    renderer.setOpacity(0.55)  # the image and labels stay visible under the flags
    layer.setRenderer(renderer)
    layer.triggerRepaint()


def style_true_colour(layer: QgsRasterLayer, bands: list[str]) -> None:
    """Red, green, blue from B04, B03, B02 where the layer has them, stretched 2-98 %."""
    from qgis.core import (
        QgsContrastEnhancement,
        QgsMultiBandColorRenderer,
        QgsRasterMinMaxOrigin,
    )

    if not all(b in bands for b in ("B04", "B03", "B02")):
        return  # QGIS's own default
    red, green, blue = (bands.index(b) + 1 for b in ("B04", "B03", "B02"))
    layer.setRenderer(QgsMultiBandColorRenderer(layer.dataProvider(), red, green, blue))
    layer.setContrastEnhancement(
        QgsContrastEnhancement.StretchToMinimumMaximum, QgsRasterMinMaxOrigin.CumulativeCut
    )
    layer.triggerRepaint()


def style_probabilities(layer: QgsRasterLayer, tags: dict[str, str] | None = None) -> None:
    """Pseudocolor ramp on the cloud probability band (percent, 0-100)."""
    tags = tags if tags is not None else cloudseg_tags(layer)
    band = next((int(c["value"]) + 1 for c in _classes(tags) if c["name"] == PROBABILITY_CLASS), 1)
    ramp = QgsColorRampShader(0, 100)
    ramp.setColorRampType(QgsColorRampShader.Interpolated)
    ramp.setColorRampItemList(
        [
            QgsColorRampShader.ColorRampItem(0, QColor(0, 0, 0, 0), "certainly clear (0 %)"),
            QgsColorRampShader.ColorRampItem(50, QColor(255, 200, 0, 160), "undecided (50 %)"),
            QgsColorRampShader.ColorRampItem(
                100, QColor(0, 229, 255, 230), "certainly cloud (100 %)"
            ),
        ]
    )
    legend = QgsColorRampLegendNodeSettings()  # the legend's ends in words
    legend.setMinimumLabel(f"{CLEAR} (0 %)")
    legend.setMaximumLabel(f"{PROBABILITY_CLASS} (100 %)")
    ramp.setLegendSettings(legend)
    shader = QgsRasterShader()
    shader.setRasterShaderFunction(ramp)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), band, shader)
    renderer.setClassificationMin(0)
    renderer.setClassificationMax(100)
    layer.setRenderer(renderer)
    describe(layer, tags, f"P({PROBABILITY_CLASS}) %")
    layer.triggerRepaint()


def _heat_map(
    layer: QgsRasterLayer,
    stops: list[tuple[float, QColor, str]],
    what: str,
    band: int = 1,
) -> None:
    """A pseudocolour ramp of ``band`` through ``stops`` (value, colour, label)."""
    low, high = stops[0][0], stops[-1][0]
    ramp = QgsColorRampShader(low, high)
    ramp.setColorRampType(QgsColorRampShader.Interpolated)
    ramp.setColorRampItemList(
        [QgsColorRampShader.ColorRampItem(v, color, label) for v, color, label in stops]
    )
    legend = QgsColorRampLegendNodeSettings()
    legend.setMinimumLabel(stops[0][2])
    legend.setMaximumLabel(stops[-1][2])
    ramp.setLegendSettings(legend)
    shader = QgsRasterShader()
    shader.setRasterShaderFunction(ramp)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), band, shader)
    renderer.setClassificationMin(low)
    renderer.setClassificationMax(high)
    layer.setRenderer(renderer)
    describe(layer, cloudseg_tags(layer), what)
    layer.triggerRepaint()


def style_uncertainty(layer: QgsRasterLayer) -> None:
    """A heat map of the model's doubt: transparent where it is sure, red where it is not."""
    _heat_map(
        layer,
        [
            (0, QColor(255, 255, 178, 0), "sure (0 %)"),
            (40, QColor(254, 178, 76, 150), "40 %"),
            (100, QColor(189, 0, 38, 220), "unsure (100 %)"),
        ],
        "Uncertainty %",
    )


def style_explanation(layer: QgsRasterLayer, band: int = 1) -> None:
    """A class activation map (``band``) as a heat map: clear where the model did not look."""
    _heat_map(
        layer,
        [
            (0.0, QColor(0, 0, 4, 0), "not used (0)"),
            (0.3, QColor(120, 28, 109, 110), "0.3"),
            (0.6, QColor(237, 105, 37, 170), "0.6"),
            (1.0, QColor(252, 255, 164, 220), "most (1)"),
        ],
        "Where the model looked (0-1)",
        band,
    )


def explanation_name(input_name: str, class_name: str, method: str) -> str:
    """An explanation layer's name, the input's first: "adwp - why cloud (gradcam)"."""
    return f"{input_name} - why {class_name} ({method})"


def explanation_layers(
    path: str | Path, input_name: str, classes: list[str], method: str
) -> list[QgsRasterLayer]:
    """One heat-map layer per class of an explanation file (band k: the k-th class)."""
    layers = []
    for band, name in enumerate(classes, start=1):
        layer = QgsRasterLayer(str(path), explanation_name(input_name, name, method))
        style_explanation(layer, band)
        layers.append(layer)
    return layers


def style_polygons(layer: QgsVectorLayer, classes: list[dict[str, Any]]) -> None:
    """Categorized fill by class name: outlines in the class colour over a light fill."""
    categories = []
    for c in classes:
        if c["name"] == CLEAR:
            continue
        color = class_color(c["name"], c.get("color"))
        symbol = QgsFillSymbol.createSimple(
            {
                "color": _color(color, 60).name(QColor.HexArgb),
                "outline_color": _color(color, 255).name(),
                "outline_width": "0.4",
            }
        )
        categories.append(QgsRendererCategory(c["name"], symbol, c["name"]))
    layer.setRenderer(QgsCategorizedSymbolRenderer("name", categories))
    layer.triggerRepaint()


def style_labels(layer: QgsVectorLayer, classes: list[dict[str, Any]]) -> None:
    """The label project's polygons by class value: class colour outline over a light fill.

    Clear polygons (drawn to undo a cloud inside a box) get a white dashed outline.
    """
    categories = []
    for c in classes:
        clear = c["name"] == CLEAR
        color = class_color(c["name"], c.get("color"))
        symbol = QgsFillSymbol.createSimple(
            {
                "color": "0,0,0,0" if clear else _color(color, 90).name(QColor.HexArgb),
                "outline_color": "#ffffff" if clear else _color(color, 255).name(),
                "outline_width": "0.6",
                "outline_style": "dash" if clear else "solid",
            }
        )
        categories.append(QgsRendererCategory(c["value"], symbol, f"{c['value']} {c['name']}"))
    layer.setRenderer(QgsCategorizedSymbolRenderer("class", categories))
    layer.triggerRepaint()


def style_proposals(layer: QgsVectorLayer, colors: dict[str, str]) -> None:
    """Proposed boxes as outlines coloured by status, labeled with their rank."""
    from qgis.core import (
        QgsPalLayerSettings,
        QgsSimpleLineSymbolLayer,
        QgsTextFormat,
        QgsVectorLayerSimpleLabeling,
    )

    categories = []
    for status, color in colors.items():
        # An outline only, also when selected (a simple fill would be filled with the
        # selection colour and hide the box's labels).
        symbol = QgsFillSymbol.createSimple({"color": "0,0,0,0"})
        symbol.changeSymbolLayer(0, QgsSimpleLineSymbolLayer(QColor(color), 0.8))
        categories.append(QgsRendererCategory(status, symbol, status))
    layer.setRenderer(QgsCategorizedSymbolRenderer("status", categories))
    settings = QgsPalLayerSettings()
    settings.fieldName = "rank"
    text = QgsTextFormat()
    text.setColor(QColor("#ffd600"))
    text.setSize(9)
    settings.setFormat(text)
    layer.setLabeling(QgsVectorLayerSimpleLabeling(settings))
    layer.setLabelsEnabled(True)
    layer.triggerRepaint()


def results_group(project: QgsProject, name: str = GROUP_NAME) -> QgsLayerTreeGroup:
    """The project's layer group for cloudseg results (created on top if missing)."""
    root = project.layerTreeRoot()
    return root.findGroup(name) or root.insertGroup(0, name)


def show_on_map(node: QgsLayerTreeNode) -> None:
    """Make a layer tree node visible on the map: check it and every group above it.

    A group above it that was unchecked hid all its children: those children are
    unchecked first, so that what was hidden stays hidden and only ``node`` appears.
    """
    node.setItemVisibilityChecked(True)
    parent = node.parent()
    while parent is not None:
        if not parent.itemVisibilityChecked():
            for child in parent.children():
                if child is not node:
                    child.setItemVisibilityChecked(False)
            parent.setItemVisibilityChecked(True)
        node, parent = parent, parent.parent()


def place_results(
    project: QgsProject,
    layers: list[QgsMapLayer],
    group_name: str | None = None,
) -> QgsLayerTreeGroup:
    """Put a run's result layers in the results group: the one place results enter the tree.

    - In a new sub-group ``group_name`` on top of the results group, else on top of the
      results group itself; ``layers`` top first. Layers already in the project (loaded
      by Processing) are moved there, the others added.
    - Named apart from the layers already there: a second run's layers and group get
      " (2)", as QGIS names copies, so that no two results share a name.
    - Visible on the map, also when the results group, or a group above it, was hidden
      (unchecked): a run that reports success shows what it made (:func:`show_on_map`).

    Returns:
        The group that holds the layers.
    """
    parent = results_group(project)
    parent.setExpanded(True)
    ours = {layer.id() for layer in layers}
    taken = {layer.name() for layer in project.mapLayers().values() if layer.id() not in ours}
    taken |= {child.name() for child in parent.children() if QgsLayerTree.isGroup(child)}
    names = [layer.name() for layer in layers] + ([group_name] if group_name else [])
    suffix = distinct_suffix(names, taken)
    group = parent
    if group_name:
        group = parent.insertGroup(0, group_name + suffix)
        group.setExpanded(True)
    root = project.layerTreeRoot()
    for index, layer in enumerate(layers):
        layer.setName(layer.name() + suffix)
        node = root.findLayer(layer.id())
        if node is None:
            if project.mapLayer(layer.id()) is None:
                project.addMapLayer(layer, False)
            node = group.insertLayer(index, layer)
        elif node.parent() is not group:
            clone = node.clone()
            group.insertChildNode(index, clone)
            node.parent().removeChildNode(node)
            node = clone
        show_on_map(node)
    show_on_map(group)
    return group


def add_results(
    project: QgsProject,
    mask: Path,
    probabilities: Path | None = None,
    polygons: Path | None = None,
    name: str = "clouds",
    group_name: str | None = None,
    valid: Path | None = None,
) -> tuple[list[QgsMapLayer], QgsLayerTreeGroup]:
    """Load a run's outputs as styled layers in a sub-group of the results group.

    Layers are named by their input first (``name``: "adwp - clouds"); the group (named
    ``group_name``, else ``name``) and the results group are expanded, newest on top,
    and shown (:func:`place_results`: a second run's names end in " (2)")

    Returns:
        The layers added (mask first), and their group.
    """
    mask_layer = QgsRasterLayer(str(mask), result_name(name, "classes"))
    tags = cloudseg_tags(mask_layer)
    style_classes(mask_layer, tags)
    layers: list[QgsMapLayer] = [mask_layer]
    if probabilities is not None:
        probs = QgsRasterLayer(str(probabilities), result_name(name, "probabilities"))
        style_probabilities(probs, tags)
        layers.append(probs)
    if valid is not None:
        usable = QgsRasterLayer(str(valid), result_name(name, "valid"))
        style_valid(usable)
        describe(usable, tags, "Valid pixels")
        layers.append(usable)
    if polygons is not None:
        vector = QgsVectorLayer(str(polygons), result_name(name, "polygons"), "ogr")
        style_polygons(vector, _classes(tags))
        describe(vector, tags, "Cloud and shadow polygons")
        layers.append(vector)
    # Polygons on top, the mask at the bottom.
    group = place_results(project, list(reversed(layers)), group_name or name)
    return layers, group

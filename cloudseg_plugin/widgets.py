"""Processing dialog widgets: the band list, filled in from the chosen layer."""

from __future__ import annotations

from typing import Any

from processing.gui.wrappers import WidgetWrapper
from qgis.core import QgsMapLayer, QgsProject
from qgis.PyQt.QtWidgets import QComboBox, QLabel, QLineEdit, QVBoxLayout, QWidget

INPUT_PARAMETER = "INPUT"
PLACEHOLDER = "from the layer (e.g. B02,B03,B04,B08)"


def band_names_for(layer: QgsMapLayer | None) -> str:
    """The band list cloudseg reads from a layer's file, or '' when it cannot tell.

    Only single multi-band files get a list: band folders and SAFE products name their
    bands by file, and their list cannot be overridden. Metadata only: the dialog calls
    this whenever its input changes.
    """
    from ..backend.errors import CloudsegError
    from ..backend.raster.reader import describe_bands, scene_path_from_gdal_source

    if layer is None or layer.type() != QgsMapLayer.RasterLayer:
        return ""
    try:
        case, bands = describe_bands(scene_path_from_gdal_source(layer.source()))
    except (CloudsegError, OSError):
        return ""
    named = case == "named" and len(set(bands)) == len(bands)  # a repeated band is refused
    return ",".join(bands) if named else ""


def bands_note(layer: QgsMapLayer | None, field: str = "the field") -> str:
    """One line on how a layer's bands will be known, for beside a Bands field."""
    from ..backend.errors import CloudsegError
    from ..backend.raster.reader import describe_bands, scene_path_from_gdal_source

    if layer is None:
        return "No layer selected: select a raster layer."
    if layer.type() != QgsMapLayer.RasterLayer:
        return (
            f"The active layer {layer.name()} is not a raster: select a Sentinel-2 raster "
            "layer in the Layers panel."
        )
    try:
        source = scene_path_from_gdal_source(layer.source())
        case, bands = describe_bands(source)
    except (OSError, CloudsegError):
        return "The layer is not a local file that cloudseg can read."
    return {
        "product": f"A SAFE product ({source.name}): bands from its metadata; {field} is ignored.",
        "folder": f"One file of the band folder {source.name}: all its band files are used "
        f"({', '.join(bands)}); {field} is ignored.",
        "named": f"Bands read from the layer: {', '.join(bands)}.",
        "unnamed": f"The layer's bands have no names: type them in {field}, in file order.",
    }[case]


class BandsWidgetWrapper(WidgetWrapper):
    """BANDS: a line edit that fills itself in from INPUT, and a note on the case."""

    def createWidget(self, **kwargs: Any) -> QWidget:
        """Create the editable band list and its note."""
        widget = QWidget()
        layout = QVBoxLayout(widget)
        layout.setContentsMargins(0, 0, 0, 0)
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(PLACEHOLDER)
        self.edit.setToolTip(
            "Band names in file order, comma separated. Filled in from the layer's band "
            "descriptions; edit it when the file does not name its bands."
        )
        self.edit.textChanged.connect(lambda: self.widgetValueHasChanged.emit(self))
        self.note = QLabel("")
        self.note.setWordWrap(True)
        self.note.setObjectName("cloudsegBandsNote")
        layout.addWidget(self.edit)
        layout.addWidget(self.note)
        return widget

    def postInitialize(self, wrappers: list[Any]) -> None:
        """Follow the INPUT layer: fill in its bands now and whenever it changes."""
        for wrapper in wrappers:
            if wrapper.parameterDefinition().name() == INPUT_PARAMETER:
                self._fill(wrapper.parameterValue())
                wrapper.widgetValueHasChanged.connect(lambda w: self._fill(w.parameterValue()))

    def _fill(self, value: Any) -> None:
        layer = value if isinstance(value, QgsMapLayer) else None
        if isinstance(value, str) and value:
            layer = QgsProject.instance().mapLayer(value)
        self.edit.setText(band_names_for(layer))
        self.note.setText(bands_note(layer, "the field"))

    def setValue(self, value: Any) -> None:
        """Show ``value`` (a comma-separated band list)."""
        self.edit.setText(value or "")

    def value(self) -> str:
        """The band list as typed."""
        return self.edit.text().strip()


def fill_model_combo(combo: QComboBox, auto_label: str, names: Any, select: str | None) -> None:
    """List "auto" and the model ``names`` in a combo box; select ``select`` if listed.

    Signals are held while the list changes, so listeners hear of the final choice only
    (the caller refreshes what depends on it).
    """
    combo.blockSignals(True)
    combo.clear()
    combo.addItem(auto_label, None)
    for name in names:
        combo.addItem(name, name)
    combo.setCurrentIndex(max(combo.findData(select), 0))
    combo.blockSignals(False)

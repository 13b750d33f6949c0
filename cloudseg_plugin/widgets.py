"""Processing dialog widgets: the band list, filled in from the chosen layer."""

from __future__ import annotations

from typing import Any

from processing.gui.wrappers import WidgetWrapper
from qgis.core import QgsMapLayer, QgsProject
from qgis.PyQt.QtWidgets import QLineEdit

INPUT_PARAMETER = "INPUT"
PLACEHOLDER = "from the layer (e.g. B02,B03,B04,B08)"


def band_names_for(layer: QgsMapLayer | None) -> str:
    """The band list cloudseg reads from a layer's file, or '' when it cannot tell.

    Only single multi-band files get a list: band folders and SAFE products name their
    bands by file, and their list cannot be overridden.
    """
    from ..backend.errors import CloudsegError
    from ..backend.raster.reader import open_scene, scene_path_from_gdal_source

    if layer is None or layer.type() != QgsMapLayer.RasterLayer:
        return ""
    try:
        path = scene_path_from_gdal_source(layer.source())
        if not path.is_file():
            return ""
        with open_scene(path) as reader:
            return ",".join(reader.bands)
    except (CloudsegError, OSError):
        return ""


class BandsWidgetWrapper(WidgetWrapper):
    """A line edit for BANDS that fills itself in whenever INPUT changes."""

    def createWidget(self, **kwargs: Any) -> QLineEdit:
        """Create the editable band list."""
        widget = QLineEdit()
        widget.setPlaceholderText(PLACEHOLDER)
        widget.setToolTip(
            "Band names in file order, comma separated. Filled in from the layer's band "
            "descriptions; edit it when the file does not name its bands."
        )
        widget.textChanged.connect(lambda: self.widgetValueHasChanged.emit(self))
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
        self.widget.setText(band_names_for(layer))

    def setValue(self, value: Any) -> None:
        """Show ``value`` (a comma-separated band list)."""
        self.widget.setText(value or "")

    def value(self) -> str:
        """The band list as typed."""
        return self.widget.text().strip()

"""The label project's layers in QGIS: proposals, labels and the runs, in one group.

A view over :class:`cloudseg.backend.active.project.LabelProject`: the layers read and
edit the project's GeoPackage through QGIS's own provider (the analyst digitizes on the
``labels`` layer with QGIS's tools); which layers exist and what they are called is the
project's.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from qgis.core import (
    QgsDefaultValue,
    QgsEditFormConfig,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)

from ..backend.active.project import LABELS_LAYER, PROPOSALS_LAYER, LabelProject
from . import styling

#: The status colours of the proposals layer's outlines.
STATUS_COLORS = {"todo": "#ffd600", "labeled": "#00c853", "skipped": "#9e9e9e"}
#: The custom property that marks a run's layers (uncertainty, classes) in the group.
RUN_PROPERTY = "cloudseg/label_run"


class ProjectLayers:
    """The QGIS layers of one label project, in a group "Labels - <project>" on top."""

    def __init__(self, project: LabelProject) -> None:
        self.project = project
        self.proposals: QgsVectorLayer | None = None
        self.labels: QgsVectorLayer | None = None

    def group(self) -> Any:
        """The project's layer group, created on top of the tree when missing."""
        root = QgsProject.instance().layerTreeRoot()
        name = f"Labels - {self.project.name}"
        group = root.findGroup(name) or root.insertGroup(0, name)
        group.setExpanded(True)
        return group

    def load(self, classes: list[Any] | None) -> None:
        """Add the project's proposals and labels layers (once each), styled.

        Args:
            classes: The model card's classes (value, name, color) for the labels' style.
        """
        self.proposals = self.labels = None
        if not self.project.exists():
            return
        present = self.project.read().layers
        for name in (LABELS_LAYER, PROPOSALS_LAYER):
            if name not in present:
                continue
            uri = self.project.layer_uri(name)
            layer = _find_layer(uri)
            if layer is None:
                layer = QgsVectorLayer(uri, f"{self.project.name} - {name}", "ogr")
                if not layer.isValid():
                    continue
                QgsProject.instance().addMapLayer(layer, False)
                self.group().insertLayer(0, layer)
            setattr(self, name, layer)
        if self.proposals is not None:
            styling.style_proposals(self.proposals, STATUS_COLORS)
        self.style_labels(classes)

    def ensure(self, classes: list[Any] | None) -> None:
        """Load the layers again if the analyst removed them from the QGIS project."""
        if self.proposals is None or self.labels is None:
            self.load(classes)

    def forget(self, ids: list[str]) -> None:
        """Forget the layers among ``ids`` (being removed from the QGIS project)."""
        for name in (PROPOSALS_LAYER, LABELS_LAYER):
            layer = getattr(self, name)
            with contextlib.suppress(RuntimeError):  # deleted already
                if layer is not None and layer.id() not in ids:
                    continue
            setattr(self, name, None)

    def style_labels(self, classes: list[Any] | None) -> None:
        """Style the labels by class; digitizing opens no form per polygon.

        A polygon's ``name`` follows its ``class`` (also when the class is changed later
        in the attribute table or the identify panel).
        """
        if self.labels is None or not classes:
            return
        styling.style_labels(
            self.labels,
            [{"value": c.value, "name": c.name, "color": c.color} for c in classes],
        )
        config = self.labels.editFormConfig()
        config.setSuppress(QgsEditFormConfig.SuppressOn)
        self.labels.setEditFormConfig(config)
        cases = " ".join(
            f"WHEN \"class\" = {c.value} THEN '{c.name.replace(chr(39), chr(39) * 2)}'"
            for c in classes
        )
        fields = self.labels.fields()
        self.labels.setDefaultValueDefinition(
            fields.indexOf("name"), QgsDefaultValue(f"CASE {cases} END", True)
        )

    def set_class(self, value: int) -> None:
        """New polygons on the labels layer get class ``value``."""
        if self.labels is not None:
            fields = self.labels.fields()
            self.labels.setDefaultValueDefinition(
                fields.indexOf("class"), QgsDefaultValue(str(value))
            )

    def add_run(self, prefix: str, mask: Path, doubt: Path | None) -> None:
        """Add a run's classes and uncertainty heat map to the group, once, below the rest."""
        sources = {layer.source() for layer in QgsProject.instance().mapLayers().values()}
        added = []
        for path, kind in ((doubt, "uncertainty"), (mask, "classes")):
            if path is None or str(path) in sources:
                continue
            layer = QgsRasterLayer(str(path), styling.result_name(prefix, kind))
            model = styling.cloudseg_tags(layer).get("CLOUDSEG_MODEL", "")
            layer.setName(f"{layer.name()} ({model})")
            if kind == "classes":
                styling.style_classes(layer)
            else:
                styling.style_uncertainty(layer)
            layer.setCustomProperty(RUN_PROPERTY, kind)
            added.append(layer)
        group = self.group()
        for layer in added:
            QgsProject.instance().addMapLayer(layer, False)
            group.addLayer(layer)

    def show_runs(self, visible: bool) -> None:
        """Show or hide the runs' layers: hidden while labeling, the scene shows true colour."""
        for node in self.group().findLayers():
            layer = node.layer()
            if layer is not None and layer.customProperty(RUN_PROPERTY):
                node.setItemVisibilityChecked(visible)

    def commit_labels(self) -> str | None:
        """Save the analyst's edits on the labels layer (editing stays on); the error."""
        if self.labels is None or not self.labels.isEditable() or not self.labels.isModified():
            return None
        if self.labels.commitChanges(False):
            return None
        return "; ".join(self.labels.commitErrors())

    def reload(self) -> None:
        """Read the layers again after the backend wrote to the project."""
        for layer in (self.proposals, self.labels):
            if layer is not None:
                layer.reload()
                layer.triggerRepaint()


def _find_layer(uri: str) -> QgsVectorLayer | None:
    for layer in QgsProject.instance().mapLayers().values():
        if isinstance(layer, QgsVectorLayer) and layer.source() == uri:
            return layer
    return None


__all__ = ["STATUS_COLORS", "ProjectLayers"]

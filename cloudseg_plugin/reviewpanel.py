"""The label dock's "Suspicious labels" queue: review what the label check flagged.

Open a label check report (``label_issues.json`` of ``cloudseg labels check`` or the
Processing algorithm ``cloudseg:check_labels``); the flagged windows are listed worst
first. "Open" loads the window's image, its stored label, the model's classes and the
flagged pixels, and the stored label as polygons in an editable ``corrections`` layer;
then "Accept" (the label is right), "Drop" (leave it out of training) or "Correct"
(store the edited polygons as a corrected version, the old label kept). "Dataset
report" opens the store's dashboard in the web browser. The work is the backend's
(:mod:`cloudseg.backend.active.review`); this module wires it to QGIS.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from qgis.core import (
    Qgis,
    QgsCoordinateTransform,
    QgsDefaultValue,
    QgsEditFormConfig,
    QgsProject,
    QgsProviderRegistry,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtCore import QUrl
from qgis.PyQt.QtGui import QDesktopServices
from qgis.PyQt.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..backend.errors import CloudsegError
from ..backend.models.cards import class_color
from . import styling
from .messages import DOCK, for_qgis
from .tasks import BackendTask, TaskRunner

GROUP = "cloudseg review"
#: Colour of flagged pixels (the model contradicts the label there).
FLAGGED_COLOR = "#ff1744"


def review_folder(report: Path) -> Path:
    """Where the review writes its window rasters and the corrections GeoPackage."""
    return report.parent / "review"


class ReviewPanel(QWidget):
    """The queue of suspicious labels: open, accept, correct, drop."""

    def __init__(
        self, iface: Any, say: Callable[[str, Any], None], parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.iface = iface
        self.say = say
        self.report: Path | None = None
        self.dataset: Any = None
        self.queue: list[Any] = []
        self.current: Any = None  # the Suspect opened
        self.corrections: QgsVectorLayer | None = None
        self._tried: Path | None = None  # the report path last opened or refused
        self.last_dashboard: Path | None = None
        self.show_dashboard = True  # tests turn the web browser off

        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.report_widget = QgsFileWidget()
        self.report_widget.setFilter("Label check report (label_issues.json)")
        self.report_widget.setToolTip(
            "label_issues.json from cloudseg labels check or Processing > Check labels"
        )
        # Typed by hand, the path changes per keystroke: open it once it names a file,
        # and say what is wrong only when the typing is done.
        self.report_widget.fileChanged.connect(lambda path: self._path_changed(path))
        self.report_widget.lineEdit().editingFinished.connect(lambda: self._path_finished())
        form.addRow("Check report", self.report_widget)
        self.class_combo = QComboBox()
        self.class_combo.setToolTip("Class of new polygons in the corrections layer")
        self.class_combo.currentIndexChanged.connect(lambda _: self._set_class())
        form.addRow("Class", self.class_combo)
        layout.addLayout(form)

        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["Window", "Flagged", "Status"])
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.Stretch)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.doubleClicked.connect(lambda _: self.open_selected())
        layout.addWidget(self.table, 1)

        row = QHBoxLayout()
        self.open_button = QPushButton("Open")
        self.open_button.setToolTip(
            "Load the window's image, stored label, the model's classes and the flagged "
            "pixels, and the label as polygons to correct"
        )
        self.open_button.clicked.connect(lambda: self.open_selected())
        self.accept_button = QPushButton("Accept")
        self.accept_button.setToolTip("The stored label is right: training trusts it")
        self.accept_button.clicked.connect(lambda: self.decide("accepted"))
        self.correct_button = QPushButton("Correct")
        self.correct_button.setToolTip(
            "Store the edited polygons as a corrected version of the window (the old "
            "label is kept, out of training under this window)"
        )
        self.correct_button.clicked.connect(lambda: self.decide("corrected"))
        self.drop_button = QPushButton("Drop")
        self.drop_button.setToolTip("The label is wrong: leave the window out of training")
        self.drop_button.clicked.connect(lambda: self.decide("dropped"))
        for button in (self.open_button, self.accept_button, self.correct_button, self.drop_button):
            row.addWidget(button)
        layout.addLayout(row)
        self.dashboard_button = QPushButton("Dataset report")
        self.dashboard_button.setToolTip(
            "Write the store's dashboard (class balance, cloud fractions, bands, map, "
            "label quality, worst windows) and open it in the web browser"
        )
        self.dashboard_button.clicked.connect(lambda: self.open_dashboard())
        layout.addWidget(self.dashboard_button)
        self.status_label = QLabel("open a label check report")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)
        self.runner = TaskRunner(
            lambda text, level: self.say(text, level), status=self.status_label
        )
        self.runner.guard(self.open_button, lambda: bool(self.queue))
        for button in (self.accept_button, self.drop_button, self.correct_button):
            self.runner.guard(button, lambda: self.current is not None)
        self.runner.guard(self.dashboard_button, lambda: self.dataset is not None)

    @property
    def task(self) -> BackendTask | None:
        """The running task, or None."""
        return self.runner.task

    # -- the queue ---------------------------------------------------------------------
    def _path_changed(self, text: str) -> None:
        """Open the report once the path names a file (not at every keystroke)."""
        path = Path(text).expanduser() if text.strip() else None
        if path is None or (path.is_file() and path != self._tried):
            self.open_report(path or "")

    def _path_finished(self) -> None:
        """Editing done: say once if the typed path is no file (or open it if not yet)."""
        text = self.report_widget.filePath().strip()
        path = Path(text).expanduser() if text else None
        if path is None or path == self._tried:
            return
        if path.is_file():
            self.open_report(path)
            return
        self._tried = path
        self.say(f"no label check report at {path}: choose label_issues.json", Qgis.Warning)

    def open_report(self, path: str | Path) -> None:
        """List the report's flagged windows, worst first, with their review status."""
        from ..backend.active.review import UNLABELED, review_queue

        path = Path(path).expanduser() if path else None
        self.report, self.queue, self.dataset, self.current = None, [], None, None
        self._tried = path
        if path is not None:
            try:
                self.dataset, self.queue = review_queue(path)
                self.report = path
            except CloudsegError as exc:
                self.say(for_qgis(str(exc), DOCK), Qgis.Critical)
        self.class_combo.blockSignals(True)
        self.class_combo.clear()
        if self.dataset is not None:
            for c in self.dataset.classes:
                self.class_combo.addItem(f"{c['value']} {c['name']}", (c["value"], c["name"]))
            self.class_combo.addItem(f"255 {UNLABELED}", (255, UNLABELED))
        self.class_combo.blockSignals(False)
        self._fill()
        if path is None:
            self.status_label.setText("open a label check report")

    def _fill(self) -> None:
        self.table.setRowCount(len(self.queue))
        for i, suspect in enumerate(self.queue):
            for j, text in enumerate(
                (suspect.key, f"{100 * suspect.flagged_share:.0f} %", suspect.status)
            ):
                self.table.setItem(i, j, QTableWidgetItem(text))
        todo = sum(s.status == "todo" for s in self.queue)
        if self.report is not None:
            self.status_label.setText(
                f"{len(self.queue)} flagged window(s), {todo} to review; "
                f"store {self.dataset.storage.url}"
            )
        self.runner.refresh()

    def select_next(self) -> int | None:
        """Select the first window still to review; its row, or None when all are done."""
        for i, suspect in enumerate(self.queue):
            if suspect.status == "todo":
                self.table.selectRow(i)
                return i
        return None

    def _selected(self) -> Any:
        rows = self.table.selectionModel().selectedRows()
        if rows:
            return self.queue[rows[0].row()]
        index = self.select_next()
        return self.queue[index] if index is not None else None

    # -- one window ----------------------------------------------------------------------
    def open_selected(self) -> BackendTask | None:
        """Load the selected window's layers (a QgsTask) and zoom to it."""
        from ..backend.active.review import open_window

        suspect = self._selected()
        if suspect is None or self.report is None or not self.runner.ready():
            return None
        report, folder = self.report, review_folder(self.report)

        def work(progress: Callable[[float, str], None], cancelled: Callable[[], bool]) -> Any:
            progress(10.0, f"reading {suspect.key}")
            return open_window(report, suspect, folder)

        self.current = suspect
        return self.runner.start(
            BackendTask(f"cloudseg: open {suspect.key}", work, self._opened), self._not_opened
        )

    def _not_opened(self, task: BackendTask) -> None:
        self.current = None
        self.runner.refresh()

    def _opened(self, task: BackendTask) -> None:
        files = task.result
        project = QgsProject.instance()
        group = project.layerTreeRoot().findGroup(GROUP) or project.layerTreeRoot().insertGroup(
            0, GROUP
        )
        for child in list(group.children()):  # the previous window's rasters
            if hasattr(child, "layer") and isinstance(child.layer(), QgsRasterLayer):
                project.removeMapLayer(child.layer().id())
        key = self.current.key
        layers = []
        for path, what in ((files.flagged, "flagged pixels"), (files.model, "model's classes"),
                           (files.label, "stored label"), (files.image, "image")):  # fmt: skip
            if path is None:
                continue
            layer = QgsRasterLayer(str(path), f"{key} - {what}")
            if what in ("model's classes", "stored label"):
                styling.style_classes(layer)
            elif what == "flagged pixels":
                styling.style_flags(layer, FLAGGED_COLOR)
            else:
                styling.style_true_colour(layer, self.dataset.bands if self.dataset else [])
            layers.append(layer)
        for layer in reversed(layers):
            project.addMapLayer(layer, False)
            group.insertLayer(0, layer)
        self._load_corrections(files.corrections, group)
        canvas = self.iface.mapCanvas()
        if canvas is not None and layers:
            image = layers[-1]
            # The project's CRS (set by its first layer): the canvas follows it, but only
            # later when these are the project's first layers, so say it now.
            target = project.crs() if project.crs().isValid() else image.crs()
            if canvas.mapSettings().destinationCrs() != target:
                canvas.setDestinationCrs(target)
            extent = image.extent()
            if target != image.crs():
                transform = QgsCoordinateTransform(image.crs(), target, project)
                extent = transform.transformBoundingBox(extent)
            canvas.setExtent(extent)
            canvas.refresh()
        self.status_label.setText(
            f"{key}: {100 * self.current.flagged_share:.0f} % of its labeled pixels flagged. "
            "Accept, Drop, or edit the corrections layer and Correct."
        )
        if files.missing:  # e.g. a check folder moved without its rasters
            self.say(
                f"{key}: the check's rasters were not found ({'; '.join(files.missing)}): "
                "only the image and the stored label are shown",
                Qgis.Warning,
            )
        self.runner.refresh()

    def _load_corrections(self, gpkg: Path, group: Any) -> None:
        from ..backend.active.review import CORRECTIONS_LAYER, window_filter

        found = corrections_layer(gpkg)
        if found is not None:  # one layer for every window: its filter shows the window's
            self.corrections = found
            if self.corrections.isEditable():
                self.corrections.commitChanges()  # the previous window's edits, kept
            self.corrections.reload()
        else:
            uri = f"{gpkg}|layername={CORRECTIONS_LAYER}"
            self.corrections = QgsVectorLayer(uri, "corrections", "ogr")
            QgsProject.instance().addMapLayer(self.corrections, False)
            group.insertLayer(0, self.corrections)
        self.corrections.setSubsetString(window_filter(self.current))
        classes = [{"value": v, "name": n, "color": c} for v, n, c in self._classes()]
        styling.style_labels(self.corrections, classes)
        config = self.corrections.editFormConfig()
        config.setSuppress(QgsEditFormConfig.SuppressOn)
        self.corrections.setEditFormConfig(config)
        self._set_class()
        self.iface.setActiveLayer(self.corrections)

    def _classes(self) -> list[tuple[int, str, str]]:
        if self.dataset is None:
            return []
        return [
            (c["value"], c["name"], class_color(c["name"], c.get("color")))
            for c in self.dataset.classes
        ] + [(255, "unlabeled", "#ffffff")]

    def _set_class(self) -> None:
        """New polygons in the corrections layer get the chosen class and this window."""
        from ..backend.active.review import window_text

        data = self.class_combo.currentData()
        if self.corrections is None or data is None or self.current is None:
            return
        value, name = data
        fields = self.corrections.fields()
        window = window_text(self.current)
        defaults = {"class": str(value), "name": f"'{name}'",
                    "scene": "'" + self.current.scene.replace("'", "''") + "'",
                    "window": f"'{window}'"}  # fmt: skip
        for field, expression in defaults.items():
            self.corrections.setDefaultValueDefinition(
                fields.indexOf(field), QgsDefaultValue(expression)
            )

    def decide(self, decision: str) -> BackendTask | None:
        """Accept, drop or correct the opened window (a QgsTask), then select the next."""
        from ..backend.active.review import decide

        if self.current is None or self.report is None:
            self.say("open a window first", Qgis.Warning)
            return None
        if not self.runner.ready():
            return None
        editing = self.corrections is not None and self.corrections.isEditable()
        if editing and not self.corrections.commitChanges():
            errors = "; ".join(self.corrections.commitErrors())
            self.say(f"the corrections could not be saved: {errors}", Qgis.Critical)
            return None
        suspect, report = self.current, self.report
        gpkg = review_folder(report) / "review.gpkg"

        def work(progress: Callable[[float, str], None], cancelled: Callable[[], bool]) -> Any:
            progress(10.0, f"{decision}: {suspect.key}")
            return decide(report, suspect, decision, gpkg if decision == "corrected" else None)

        def done(task: BackendTask) -> None:
            suspect.status = decision
            stored = f"; stored as {task.result}" if task.result else ""
            self.say(f"{suspect.key}: {decision}{stored}", Qgis.Success)
            self.current = None
            self._fill()
            self.select_next()

        return self.runner.start(BackendTask(f"cloudseg: {decision} {suspect.key}", work, done))

    # -- the dashboard -------------------------------------------------------------------
    def open_dashboard(self) -> BackendTask | None:
        """Write the store's dashboard (a QgsTask) and open it in the web browser."""
        from ..backend.store.dashboard import write_dashboard

        if self.dataset is None:
            self.say("open a label check report first: its store is reported", Qgis.Warning)
            return None
        if not self.runner.ready():
            return None
        dataset = self.dataset

        def work(progress: Callable[[float, str], None], cancelled: Callable[[], bool]) -> Any:
            progress(10.0, "writing the dashboard")
            return write_dashboard(dataset)

        def done(task: BackendTask) -> None:
            url = f"{dataset.storage.url.rstrip('/')}/{task.result}"
            local = Path(url)
            self.last_dashboard = local if local.is_file() else None
            target = QUrl.fromLocalFile(str(local)) if local.is_file() else QUrl(url)
            if self.show_dashboard:
                QDesktopServices.openUrl(target)
            self.say(f"dataset report: {url}", Qgis.Info)

        return self.runner.start(BackendTask("cloudseg: dataset report", work, done))


def corrections_layer(gpkg: Path) -> QgsVectorLayer | None:
    """The project's layer of the review GeoPackage's corrections, if one is loaded."""
    from ..backend.active.review import CORRECTIONS_LAYER

    registry = QgsProviderRegistry.instance()
    for layer in QgsProject.instance().mapLayers().values():
        if isinstance(layer, QgsVectorLayer) and layer.providerType() == "ogr":
            parts = registry.decodeUri("ogr", layer.source())  # the filter is in the source
            path = parts.get("path") or ""
            if parts.get("layerName") == CORRECTIONS_LAYER and Path(path) == Path(gpkg):
                return layer
    return None

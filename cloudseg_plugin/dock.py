"""The "Cloud segmentation" dock: pick a model, see the device, segment the active layer.

The run happens in a :class:`SegmentTask` (a QgsTask) so QGIS stays responsive; the
task reports progress and can be cancelled, and a cancelled or failed run leaves no
file and no layer behind.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import html
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsMessageLog,
    QgsProject,
    QgsRasterLayer,
    QgsTask,
)
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtCore import QSettings, Qt
from qgis.PyQt.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDockWidget,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from ..backend.errors import CloudsegError
from . import logbridge, styling
from .messages import DOCK, for_qgis
from .tasks import BackendTask
from .widgets import fill_model_combo

AUTO_LABEL = "auto (best for the layer's bands and level)"
SETTINGS_OUTPUT_DIR = "cloudseg/output_dir"


@dataclass
class RunRequest:
    """One segmentation run asked for from the dock."""

    layer_name: str
    source: Path
    output_dir: Path
    model: str | None = None
    product_level: str | None = None
    bands: list[str] | None = None
    tta: bool = False
    preview: bool = False
    probabilities: bool = False
    polygons: bool = False
    valid: bool = False

    def paths(self, stamp: str) -> dict[str, Path | None]:
        """Output paths for this run, unique by time stamp."""
        stem = f"{_safe_name(self.layer_name)}_{stamp}"
        return {
            "mask": self.output_dir / f"{stem}_mask.tif",
            "probabilities": (
                self.output_dir / f"{stem}_probabilities.tif" if self.probabilities else None
            ),
            "polygons": self.output_dir / f"{stem}_polygons.gpkg" if self.polygons else None,
            "valid": self.output_dir / f"{stem}_valid.tif" if self.valid else None,
        }


@dataclass
class RunRecord:
    """What the recent-runs list shows for one run."""

    layer_name: str
    status: str
    model: str = ""
    seconds: float = 0.0
    cloud_percent: float | None = None
    outputs: dict[str, Path | None] = field(default_factory=dict)
    message: str = ""


def device_line(report: Any) -> str:
    """One plain line on what runs the models, e.g. "CPU (no GPU found) - openvino, bf16"."""
    if report.device == "cuda" and report.gpus:
        where = f"GPU: {report.gpus[0].name}"
    else:
        where = "CPU (no GPU found)" if "no usable GPU" in report.device_reason else "CPU"
    runner = report.builtin_runner.split(" on the ")[0]
    precision = "bf16" if "bf16" in report.builtin_runner else "float32"
    return f"{where} - {runner}, {precision} (details: hover)"


def preview_tooltip() -> str:
    """The Preview checkbox's tooltip, with the accuracy it costs as measured."""
    from ..backend.models.registry import preview_cost

    cost = preview_cost()
    return (
        "Run at the model's own resolution (30 m for the built-in models) instead of the "
        "layer's: about 9x faster on 10 m imagery, but small clouds and thin shadows are "
        "lost" + (f". {cost[0].upper()}{cost[1:]}." if cost else ".")
    )


def accuracy_html(card: Any) -> str:
    """The card's measured accuracy: IoU of the default run per dataset, and TTA's gain."""
    entries = card.default_metrics()
    if not entries:
        return "Accuracy: not measured"
    lines = []
    for entry in entries:
        iou = card.metric_iou(entry)
        values = ", ".join(
            f"{name} {value:.3f}" for name, value in iou.items() if isinstance(value, float)
        )
        reference = entry.get("reference", {}).get("iou", {})
        versus = " / ".join(f"{v:.3f}" for v in reference.values() if isinstance(v, float))
        mismatch = " (level mismatch)" if entry.get("level_mismatch") else ""
        lines.append(
            f"{html.escape(str(entry.get('dataset', entry.get('data', ''))))}{mismatch}: "
            f"{values}" + (f" (ukis-csmask {versus})" if versus else "")
        )
    gains = {(m.get("dataset"), m.get("config")): m.get("iou", {}) for m in card.metrics}
    for (dataset, config), iou in gains.items():
        base = gains.get((dataset, "default-fp32"))
        if config == "tta" and base:
            delta = ", ".join(
                f"{name} {iou[name] - base[name]:+.3f}"
                for name in list(iou)[1:]
                if isinstance(iou[name], float) and isinstance(base.get(name), float)
            )
            lines.append(f"TTA on {html.escape(str(dataset))}: {delta} (4x the time)")
            break
    return "Measured IoU, default run:<br>" + "<br>".join(lines)


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)[:60] or "layer"


class SegmentTask(BackendTask):
    """Runs the backend engine in a QGIS worker thread."""

    def __init__(self, request: RunRequest, on_done: Callable[[SegmentTask], None]) -> None:
        super().__init__(f"Segment clouds in {request.layer_name}", self._segment, on_done)
        self.request = request
        self.outputs = request.paths(dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f"))

    def _segment(
        self, progress: Callable[[float, str], None], cancelled: Callable[[], bool]
    ) -> Any:
        """Segment (and polygonize); the engine leaves no output behind on cancel."""
        from ..backend.inference.segment import SegmentOptions, segment

        return segment(
            self.request.source,
            self.outputs["mask"],
            SegmentOptions(
                model=self.request.model,
                product_level=self.request.product_level,
                bands=self.request.bands,
                tta=self.request.tta,
                resolution="preview" if self.request.preview else "native",
                probabilities=self.outputs["probabilities"],
                polygons=self.outputs["polygons"],
                valid=self.outputs["valid"],
            ),
            progress=progress,
            cancelled=cancelled,
        )


class CloudSegDock(QDockWidget):
    """Model picker, device line, Run/Cancel with progress, and recent runs."""

    def __init__(self, iface: Any, parent: QWidget | None = None) -> None:
        super().__init__("Cloud segmentation", parent)
        self.setObjectName("cloudsegDock")
        self.iface = iface
        self.task: BackendTask | None = None
        self.runs: list[RunRecord] = []
        self._models = self._load_models()

        body = QWidget()
        layout = QVBoxLayout(body)
        form = QFormLayout()
        self.model_combo = QComboBox()
        fill_model_combo(self.model_combo, AUTO_LABEL, self._models, None)
        self.model_combo.currentIndexChanged.connect(self._show_card)
        form.addRow("Model", self.model_combo)
        self.level_combo = QComboBox()
        self.level_combo.addItem("auto (detected; warns when it cannot tell)", None)
        self.level_combo.addItem("L1C (top of atmosphere)", "L1C")
        self.level_combo.addItem("L2A (surface reflectance)", "L2A")
        self.level_combo.setToolTip(
            "auto reads the level from SAFE or STAC metadata, GDAL metadata, the file name "
            "(MSIL2A...) or the blue band's darkest pixels; when none tells, L1C is assumed "
            "and the run warns. The L1C and L2A models give different masks."
        )
        form.addRow("Product level", self.level_combo)
        self.bands_edit = QLineEdit()
        self.bands_edit.setPlaceholderText("from the layer (e.g. B04,B03,B02,B08)")
        self.bands_edit.setToolTip(
            "The layer's bands in file order, for files whose bands have no names; "
            "ignored for a band folder or a SAFE product, whose files name their bands"
        )
        self.bands_note = QLabel("")
        self.bands_note.setWordWrap(True)
        bands_box = QVBoxLayout()
        bands_box.addWidget(self.bands_edit)
        bands_box.addWidget(self.bands_note)
        form.addRow("Bands", bands_box)
        self.device_label = QLabel("checking the device...")
        self.device_label.setWordWrap(True)
        form.addRow("Device", self.device_label)
        self.output_dir = QgsFileWidget()
        self.output_dir.setStorageMode(QgsFileWidget.GetDirectory)
        self.output_dir.setFilePath(
            QSettings().value(SETTINGS_OUTPUT_DIR, str(Path.home() / "cloudseg"))
        )
        form.addRow("Output folder", self.output_dir)
        layout.addLayout(form)

        self.card_view = QTextBrowser()
        self.card_view.setMinimumHeight(110)
        layout.addWidget(self.card_view, 2)  # grows with the dock, not capped

        options = QHBoxLayout()
        self.tta_check = QCheckBox("TTA")
        self.tta_check.setToolTip(
            "Average the model over flips and a rotation: 4x slower; "
            "the gain measured per model is in its card below"
        )
        self.preview_check = QCheckBox("Preview")
        self.preview_check.setToolTip(preview_tooltip())
        self.probabilities_check = QCheckBox("Probabilities")
        self.polygons_check = QCheckBox("Polygons")
        self.valid_check = QCheckBox("Valid pixels")
        self.valid_check.setToolTip(
            "Also write the mask of usable pixels: cloud and shadow removed with a 90 m "
            "buffer (Fmask's default; other buffers: Processing or cloudseg segment)"
        )
        for widget in (
            self.tta_check,
            self.preview_check,
            self.probabilities_check,
            self.polygons_check,
            self.valid_check,
        ):
            options.addWidget(widget)
        layout.addLayout(options)

        buttons = QHBoxLayout()
        self.run_button = QPushButton("Run on active layer")
        self.run_button.clicked.connect(self.run_active_layer)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.explain_button = QPushButton("Explain view")
        self.explain_button.setToolTip(
            "Where the model looked when it called pixels cloud: a Grad-CAM heat map of the "
            "active layer over the map's current extent (a forward and a backward pass per "
            "tile: zoom in first on large scenes)"
        )
        self.explain_button.clicked.connect(lambda: self.explain_view())
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.explain_button)
        buttons.addWidget(self.cancel_button)
        layout.addLayout(buttons)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.progress)
        layout.addWidget(self.status_label)

        layout.addWidget(QLabel("Recent runs"))
        self.runs_table = QTableWidget(0, 5)
        self.runs_table.setHorizontalHeaderLabels(["Layer", "Status", "Model", "Cloud %", "s"])
        header = self.runs_table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeToContents)
        # Long layer and model names give way (elided, whole in the tooltip); the
        # figures stay visible at the dock's default width.
        for column in (0, 2):
            header.setSectionResizeMode(column, QHeaderView.Stretch)
        self.runs_table.setTextElideMode(Qt.ElideMiddle)
        self.runs_table.verticalHeader().setVisible(False)
        self.runs_table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        layout.addWidget(self.runs_table, 1)
        self.setWidget(body)
        self._show_card()
        self._check_device()
        iface.currentLayerChanged.connect(self.describe_layer)
        self.describe_layer(iface.activeLayer())

    def detach(self) -> None:
        """Disconnect from QGIS's signals (before the dock is deleted)."""
        # TypeError: never connected; RuntimeError: QGIS is closing.
        with contextlib.suppress(TypeError, RuntimeError):
            self.iface.currentLayerChanged.disconnect(self.describe_layer)

    def describe_layer(self, layer: Any = None) -> None:
        """Say next to the Bands field how the active layer's bands will be known."""
        from .widgets import bands_note

        self.bands_note.setText(bands_note(layer, "the Bands field above"))

    # -- models and device --------------------------------------------------------------
    @staticmethod
    def _load_models() -> dict[str, Any]:
        try:
            from ..backend.models.registry import available_models

            return {m.card.name: m.card for m in available_models()}
        except CloudsegError:
            return {}

    def reload_models(self, select: str | None = None) -> None:
        """List the models again (a fine-tuned version was registered); keep the choice."""
        current = select or self.model_combo.currentData()
        self._models = self._load_models()
        fill_model_combo(self.model_combo, AUTO_LABEL, self._models, current)
        self._show_card()

    def _show_card(self) -> None:
        name = self.model_combo.currentData()
        if name is None:
            names = ", ".join(self._models) or "none installed"
            self.card_view.setHtml(
                "<p>Picks the built-in model made for the layer's product level that uses "
                f"the most of its bands, and says which in the log.</p><p>Models: {names}</p>"
            )
            return
        card = self._models[name]
        swatches = "".join(
            f'<span style="background:{c.color[:7]}">&nbsp;&nbsp;&nbsp;</span> '
            f"{c.value} {html.escape(c.name)}<br>"
            for c in card.classes
        )
        headline = card.headline()
        self.card_view.setHtml(
            f"<b>{html.escape(card.name)}</b> {html.escape(card.version)}<br>"
            + (f"<i>Measured: {html.escape(headline)}</i><br>" if headline else "")
            + f"Bands: {', '.join(card.bands)}<br>Level: {card.product_level}, "
            f"trained at {card.resolution_m:g} m, tiles {card.tile_size} px<br>"
            f"Classes:<br>{swatches}License: {html.escape(card.license)}<br>"
            f"{html.escape(card.description)}<br>{accuracy_html(card)}"
        )

    def _check_device(self) -> None:
        """Find the device in a task: it imports torch, which takes a second or two."""
        from ..backend.environment import environment_report

        def report(_task: QgsTask) -> Any:
            return environment_report()

        def done(exception: Exception | None, result: Any = None) -> None:
            if exception is not None or result is None:
                self.device_label.setText(f"unknown ({exception})")
                return
            self.device_label.setText(device_line(result))
            # The details (why no GPU, what runs ONNX models) behind the one plain line.
            self.device_label.setToolTip(
                f"{result.device_reason}\nBuilt-in models run with: {result.builtin_runner}"
                f"\nONNX models on the CPU: {result.cpu_inference}"
            )

        self._device_task = QgsTask.fromFunction("cloudseg: check device", report, on_finished=done)
        QgsApplication.taskManager().addTask(self._device_task)

    # -- running --------------------------------------------------------------------------
    def run_active_layer(self) -> SegmentTask | None:
        """Start a run on the active raster layer; returns its task (None if refused)."""
        layer = self.iface.activeLayer()
        found = self._active_scene(layer)
        if found is None:
            return None
        folder, source, bands = found
        request = RunRequest(
            layer_name=layer.name(),
            source=source,
            output_dir=folder,
            model=self.model_combo.currentData(),
            product_level=self.level_combo.currentData(),
            bands=bands,
            tta=self.tta_check.isChecked(),
            preview=self.preview_check.isChecked(),
            probabilities=self.probabilities_check.isChecked(),
            polygons=self.polygons_check.isChecked(),
            valid=self.valid_check.isChecked(),
        )
        self.task = SegmentTask(request, self._task_done)
        self.task.progressChanged.connect(lambda value: self.progress.setValue(int(value)))
        self._set_running(True)
        self.progress.setValue(0)
        self.status_label.setText(f"segmenting {layer.name()}...")
        QgsApplication.taskManager().addTask(self.task)
        return self.task

    def _active_scene(self, layer: Any) -> tuple[Path, Path, list[str] | None] | None:
        """What a run on ``layer`` needs: the output folder, the scene, its bands.

        None, with a message, when a task is running, the layer is not a raster, or the
        folder or the scene cannot be used.
        """
        from ..backend.raster.bands import parse_band_list
        from ..backend.raster.reader import scene_path_from_gdal_source

        if self.task is not None:
            self._say("a run is already going; cancel it or wait", Qgis.Warning)
            return None
        if not isinstance(layer, QgsRasterLayer):
            what = "no layer is selected" if layer is None else f"{layer.name()} is not a raster"
            self._say(
                f"{what}: select a Sentinel-2 raster layer in the Layers panel first",
                Qgis.Warning,
            )
            return None
        folder = Path(self.output_dir.filePath() or Path.home() / "cloudseg").expanduser()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            source = scene_path_from_gdal_source(layer.source())
            text = self.bands_edit.text().strip()
            bands = parse_band_list(text) if text and not source.is_dir() else None
        except (OSError, CloudsegError) as exc:
            self._say(for_qgis(str(exc), DOCK), Qgis.Critical)
            return None
        QSettings().setValue(SETTINGS_OUTPUT_DIR, str(folder))
        return folder, source, bands

    def _set_running(self, running: bool) -> None:
        """Run and Explain wait while a task runs; Cancel is there for it."""
        self.run_button.setEnabled(not running)
        self.explain_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def explain_view(self, classes: list[str] | None = None) -> BackendTask | None:
        """Explain the active layer over the map's extent (a task); its task, or None."""
        from qgis.core import QgsCoordinateTransform

        from ..backend.inference.explain import explain

        layer = self.iface.activeLayer()
        found = self._active_scene(layer)
        if found is None:
            return None
        folder, source, bands = found
        canvas = self.iface.mapCanvas()
        to_layer = QgsCoordinateTransform(
            canvas.mapSettings().destinationCrs(), layer.crs(), QgsProject.instance()
        )
        view = to_layer.transformBoundingBox(canvas.extent()).intersect(layer.extent())
        if view.isEmpty():
            self._say(f"the map shows no part of {layer.name()}: zoom to it", Qgis.Warning)
            return None
        wanted = classes or ["cloud"]
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        output = folder / f"{_safe_name(layer.name())}_{stamp}_why-{'-'.join(wanted)}.tif"
        bounds = (view.xMinimum(), view.yMinimum(), view.xMaximum(), view.yMaximum())
        model, level = self.model_combo.currentData(), self.level_combo.currentData()
        name = layer.name()

        def work(progress: Callable[[float, str], None], cancelled: Callable[[], bool]) -> Any:
            return explain(
                source,
                output,
                wanted,
                model=model,
                bounds=bounds,
                product_level=level,
                bands=bands,
                progress=progress,
                cancelled=cancelled,
            )

        self.task = BackendTask(f"Explain {name}", work, lambda task: self._explained(task, name))
        self.task.progressChanged.connect(lambda value: self.progress.setValue(int(value)))
        self._set_running(True)
        self.progress.setValue(0)
        self.status_label.setText(f"explaining {', '.join(wanted)} in {name}...")
        QgsApplication.taskManager().addTask(self.task)
        return self.task

    def _explained(self, task: BackendTask, name: str) -> None:
        """Add the map as a heat map over the image, or say why there is none."""
        self.task = None
        self._set_running(False)
        result = task.result
        if result is not None and not task.isCanceled():
            layer = QgsRasterLayer(
                str(result.output), f"{name} - why {', '.join(result.classes)} ({result.method})"
            )
            styling.style_explanation(layer)
            QgsProject.instance().addMapLayer(layer, False)
            styling.results_group(QgsProject.instance()).insertLayer(0, layer)
            self.progress.setValue(100)
            self._say(
                f"{name}: where {result.model} looked for {', '.join(result.classes)} "
                f"({result.method}, {result.seconds:.1f} s)",
                Qgis.Info,
            )
        elif task.error:
            self._say(f"{name}: {for_qgis(task.error, DOCK)}", Qgis.Critical)
        else:
            if result is not None:  # the cancel came after the map was written
                Path(result.output).unlink(missing_ok=True)
            self.progress.setValue(0)
            self._say(f"{name}: cancelled; nothing was written", Qgis.Info)

    def cancel(self) -> None:
        """Cancel the running task (its outputs are removed)."""
        if self.task is not None:
            self.task.cancel()
            self.status_label.setText("cancelling...")

    def _task_done(self, task: SegmentTask) -> None:
        self.task = None
        self._set_running(False)
        name = task.request.layer_name
        if task.result is not None and not task.isCanceled():
            result = task.result
            _, group = styling.add_results(
                QgsProject.instance(),
                task.outputs["mask"],
                task.outputs["probabilities"],
                task.outputs["polygons"],
                name=name,
                group_name=f"{name} - {result.model}",
                valid=task.outputs["valid"],
            )
            self._select(group)
            cloud = result.class_percent.get("cloud", 0.0)
            cost = result.accounting.get("summary", "")
            record = RunRecord(
                name, "done", result.model, result.seconds, cloud, task.outputs,
                f"{result.runner}\n{cost}" if cost else result.runner,
            )  # fmt: skip
            self.progress.setValue(100)
            done = (
                f"{name}: {cloud:.1f} % cloud in {result.seconds:.1f} s on {result.runner}; "
                f"product level {result.product_level}"
            )
            if result.usable_percent is not None:
                done += f"; {result.usable_percent:.1f} % usable"
            if result.warnings:
                warnings = "; ".join(for_qgis(w, DOCK) for w in result.warnings)
                self._say(f"{done}. Warning: {warnings}", Qgis.Warning)
            else:
                self._say(done, Qgis.Info)
        elif task.error:
            error = for_qgis(task.error, DOCK)
            record = RunRecord(name, "failed", message=error)
            self._say(f"{name}: {error}", Qgis.Critical)
        else:
            if task.result is not None:  # the cancel came after the engine had finished
                for path in task.outputs.values():
                    if path:
                        Path(path).unlink(missing_ok=True)
            record = RunRecord(name, "cancelled", message="cancelled; nothing was written")
            self._say(f"{name}: cancelled; nothing was written", Qgis.Info)
        self.runs.insert(0, record)
        self._add_run_row(record)

    def _select(self, group: Any) -> None:
        """Select the new results group in the Layers panel (so the analyst sees it)."""
        view = self.iface.layerTreeView()
        with contextlib.suppress(AttributeError, RuntimeError, TypeError):  # no real view
            index = (  # QGIS >= 3.18 sorts the tree through a proxy model
                view.node2index(group)
                if hasattr(view, "node2index")
                else view.layerTreeModel().node2index(group)
            )
            view.setCurrentIndex(index)

    def _add_run_row(self, record: RunRecord) -> None:
        self.runs_table.insertRow(0)
        cloud = "" if record.cloud_percent is None else f"{record.cloud_percent:.1f}"
        values = [record.layer_name, record.status, record.model, cloud, f"{record.seconds:.1f}"]
        tip = "\n".join([*(str(p) for p in record.outputs.values() if p), record.message])
        for column, value in enumerate(values):
            item = QTableWidgetItem(value)
            item.setToolTip(f"{value}\n{tip}" if column in (0, 2) else tip)
            if column >= 3:
                item.setTextAlignment(int(Qt.AlignRight | Qt.AlignVCenter))
            self.runs_table.setItem(0, column, item)

    def _say(self, text: str, level: Qgis.MessageLevel) -> None:
        self.status_label.setText(text)
        QgsMessageLog.logMessage(text, logbridge.LOG_TAG, level)
        if level in (Qgis.Warning, Qgis.Critical):
            self.iface.messageBar().pushMessage("cloudseg", text, level, 8)

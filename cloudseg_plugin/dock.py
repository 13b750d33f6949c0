"""The "Cloud segmentation" dock: pick a model, see the device, segment the active layer.

The run happens in a :class:`SegmentTask` (a QgsTask) so QGIS stays responsive; the
task reports progress and can be cancelled, and a cancelled or failed run leaves no
file and no layer behind.

*Run on* sends the run to a cloudseg server instead (its URL, and its token from
QGIS's authentication manager): the results come back as the same files, loaded as
the same styled layers. A run on a server needs none of cloudseg's runtime packages
here: nothing on its path imports more than QGIS, its numpy and the standard library.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
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
from qgis.gui import QgsAuthConfigSelect, QgsFileWidget
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

from ..backend.atomic import stamped_paths
from ..backend.dependencies import SEGMENT, TRAINING
from ..backend.errors import CloudsegError
from ..backend.inference.options import declaration
from . import logbridge, packages, styling
from .messages import DOCK, for_qgis
from .modelcard import card_html, device_line, preview_tooltip
from .runs import LOCAL, RunOutcome, RunRecord, RunRequest, SegmentTask
from .servers import ServerChoice, client_for, save_server, saved_server
from .tasks import BackendTask, TaskRunner
from .widgets import fill_model_combo

AUTO_LABEL = "auto (best for the layer's bands and level)"
SETTINGS_OUTPUT_DIR = "cloudseg/output_dir"
#: The server URL last typed, kept while the dock runs on this computer.
SETTINGS_LAST_URL = "cloudseg/dock/server_url"
#: *Run on* choices: (label, data).
RUN_ON = (("This computer", "local"), ("cloudseg server", "server"))


class CloudSegDock(QDockWidget):
    """Model picker, device line, Run/Cancel with progress, and recent runs."""

    def __init__(self, iface: Any, parent: QWidget | None = None) -> None:
        super().__init__("Cloud segmentation", parent)
        self.setObjectName("cloudsegDock")
        self.iface = iface
        self.runs: list[RunRecord] = []
        self._models = self._load_models()

        body = QWidget()
        layout = QVBoxLayout(body)
        form = QFormLayout()
        self.form = form
        self.run_on_combo = QComboBox()
        for label, data in RUN_ON:
            self.run_on_combo.addItem(label, data)
        self.run_on_combo.setToolTip(
            "Where runs go: this computer's engine, or a cloudseg server (cloudseg serve), "
            "which needs none of cloudseg's packages here. Either way the results are the "
            "same files, loaded as the same layers."
        )
        form.addRow("Run on", self.run_on_combo)
        self.server_edit = QLineEdit()
        self.server_edit.setPlaceholderText("http://server:8000")
        self.server_edit.setToolTip("The cloudseg server's address (cloudseg serve)")
        form.addRow("Server", self.server_edit)
        self.token_select = QgsAuthConfigSelect()
        self.token_select.setToolTip(
            "The server's token, kept encrypted by QGIS's authentication manager: add a "
            "configuration of the Basic method with the token as its password (the user "
            "name is not used). Only the configuration's id is remembered, never the token."
        )
        form.addRow("Token", self.token_select)
        self._server_runners: dict[str, str] = {}  # URL -> where its last run ran
        self._server_said: dict[str, str] = {}  # URL -> what its /health said (a task asks)
        self._probe_task: QgsTask | None = None
        self._probes = 0  # the latest probe's number: an earlier one's answer is stale
        self._local_device: tuple[str, str] = ("checking the device...", "")
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
            "and the run warns. " + declaration("product_level").help
        )
        form.addRow("Product level", self.level_combo)
        self.bands_edit = QLineEdit()
        self.bands_edit.setPlaceholderText("from the layer (e.g. B04,B03,B02,B08)")
        self.bands_edit.setToolTip(
            declaration("bands").help + "; ignored for a band folder or a SAFE product, "
            "whose files name their bands"
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
            declaration("tta").help + "; the gain measured per model is in its card below"
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
        self.shadow_check = QCheckBox("Shadow geometry")
        self.shadow_check.setToolTip(declaration("shadow_geometry").help)
        for widget in (
            self.tta_check,
            self.preview_check,
            self.shadow_check,
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
        self.runner = TaskRunner(self._say, self.progress, self.cancel_button, self.status_label)
        self.runner.guard(self.run_button)
        self.runner.guard(self.explain_button)

        layout.addWidget(QLabel("Recent runs"))
        self.runs_table = QTableWidget(0, 6)
        self.runs_table.setHorizontalHeaderLabels(
            ["Layer", "Status", "Model", "Cloud %", "s", "Ran on"]
        )
        header = self.runs_table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeToContents)
        # Long layer and model names give way (elided, whole in the tooltip); the
        # figures stay visible at the dock's default width.
        for column in (0, 2, 5):
            header.setSectionResizeMode(column, QHeaderView.Stretch)
        self.runs_table.setTextElideMode(Qt.ElideMiddle)
        self.runs_table.verticalHeader().setVisible(False)
        self.runs_table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        layout.addWidget(self.runs_table, 1)
        self.setWidget(body)
        self._load_server()
        self.run_on_combo.currentIndexChanged.connect(self._run_on_changed)
        self.server_edit.editingFinished.connect(self._server_changed)
        self.token_select.selectedConfigIdChanged.connect(lambda _id: self._server_changed())
        self._show_card()
        self._check_device()
        iface.currentLayerChanged.connect(self.describe_layer)
        self.describe_layer(iface.activeLayer())

    @property
    def task(self) -> BackendTask | None:
        """The running task, or None."""
        return self.runner.task

    def detach(self) -> None:
        """Disconnect from QGIS's signals (before the dock is deleted)."""
        # TypeError: never connected; RuntimeError: QGIS is closing.
        with contextlib.suppress(TypeError, RuntimeError):
            self.iface.currentLayerChanged.disconnect(self.describe_layer)

    def describe_layer(self, layer: Any = None) -> None:
        """Say next to the Bands field how the active layer's bands will be known."""
        from .widgets import bands_note

        try:
            note = bands_note(layer, "the Bands field above")
        except ImportError:  # rasterio is not here: runs go to a server
            note = ""
        self.bands_note.setText(note)

    # -- where runs go ----------------------------------------------------------------------
    @property
    def on_server(self) -> bool:
        """Whether *Run on* is a cloudseg server."""
        return self.run_on_combo.currentData() == "server"

    def server_choice(self) -> ServerChoice:
        """The server as the dock shows it (URL "" when runs stay on this computer)."""
        url = self.server_edit.text().strip() if self.on_server else ""
        return ServerChoice(url, self.token_select.configId())

    def _load_server(self) -> None:
        """Show the server used last (``servers.saved_server``), or this computer."""
        choice = saved_server()
        self.server_edit.setText(choice.url or QSettings().value(SETTINGS_LAST_URL, "", type=str))
        if choice.authcfg:
            self.token_select.setConfigId(choice.authcfg)
        self.run_on_combo.setCurrentIndex(1 if choice.remote else 0)
        self._show_run_on()

    def _run_on_changed(self) -> None:
        """*Run on* changed: show or hide the server's rows and remember the choice."""
        self._show_run_on()
        self._server_changed()

    def _server_changed(self) -> None:
        """Remember the choice: the URL and the auth configuration's id, never the token."""
        QSettings().setValue(SETTINGS_LAST_URL, self.server_edit.text().strip())
        save_server(self.server_choice())
        self._show_device()
        self.probe_server()

    def probe_server(self) -> QgsTask | None:
        """Ask the chosen server what runs its models (``/health``, in a task).

        The device line then says it (``server host:port (openvino ... CPU (bf16))``), or
        why the server cannot be used (unreachable, the token refused) before a run is
        tried. Asked when the analyst picks the server, its URL or its token; not when
        the dock opens, so that QGIS never asks for its master password at start.
        """
        from ..backend.remote import RemoteError

        choice = self.server_choice()
        if not choice.remote:
            return None
        url = choice.url.strip()
        try:
            client = client_for(choice)  # on the UI thread: QGIS may ask for its password
        except CloudsegError as exc:
            self._server_said[url] = for_qgis(str(exc), DOCK)
            self._show_device()
            return None

        self._probes += 1
        number = self._probes

        def ask(_task: QgsTask) -> Any:
            return client.capabilities()

        def done(exception: Exception | None, result: Any = None) -> None:
            if number != self._probes:  # the URL or the token changed since
                return
            if isinstance(exception, RemoteError):
                self._server_said[url] = for_qgis(str(exception), DOCK)
            elif exception is None and isinstance(result, dict):
                runner = (result.get("device") or {}).get("runner")
                host = client.url.split("://", 1)[-1]
                self._server_said[url] = f"server {host}" + (f" ({runner})" if runner else "")
            self._show_device()

        self._probe_task = QgsTask.fromFunction("cloudseg: ask the server", ask, on_finished=done)
        QgsApplication.taskManager().addTask(self._probe_task)
        return self._probe_task

    def _show_run_on(self) -> None:
        """Show the server's URL and token rows only when runs go to a server."""
        for field in (self.server_edit, self.token_select):
            field.setVisible(self.on_server)
            label = self.form.labelForField(field)
            if label is not None:
                label.setVisible(self.on_server)
        self._show_device()

    def _show_device(self) -> None:
        """The device line: this computer's device, or the server runs go to."""
        if not self.on_server:
            text, tip = self._local_device
            self.device_label.setText(text)
            self.device_label.setToolTip(tip)
            return
        url = self.server_edit.text().strip()
        ran = self._server_runners.get(url)
        said = self._server_said.get(url, "")
        where = url or "(no URL yet)"
        if ran:
            text = f"runs go to {ran}"
        elif said.startswith("server "):
            text = f"runs go to {said}"
        elif said:
            text = f"runs go to the server {where}, which cannot be used now: {said}"
        else:
            text = f"runs go to the server {where}"
        self.device_label.setText(text)
        self.device_label.setToolTip(
            "The server runs the models on its own device; once a run came back this line "
            f"says its runner.\nThis computer: {self._local_device[0]}"
        )

    # -- models and device --------------------------------------------------------------
    @staticmethod
    def _load_models() -> dict[str, Any]:
        try:
            from ..backend.models.registry import available_models

            return {m.card.name: m.card for m in available_models()}
        except (CloudsegError, ImportError):  # none here: runs may still go to a server
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
        self.card_view.setHtml(card_html(self._models[name]))

    def _check_device(self) -> None:
        """Find the device in a task: it imports torch, which takes a second or two."""
        from ..backend.environment import environment_report

        def report(_task: QgsTask) -> Any:
            return environment_report()

        def done(exception: Exception | None, result: Any = None) -> None:
            if exception is not None or result is None:
                self._local_device = (f"unknown ({exception})", "")
            else:
                # The details (why no GPU, what runs ONNX models) behind the one plain line.
                self._local_device = (
                    device_line(result),
                    f"{result.device_reason}\nBuilt-in models run with: {result.builtin_runner}"
                    f"\nONNX models on the CPU: {result.cpu_inference}",
                )
            self._show_device()

        self._device_task = QgsTask.fromFunction("cloudseg: check device", report, on_finished=done)
        QgsApplication.taskManager().addTask(self._device_task)

    # -- running --------------------------------------------------------------------------
    def run_active_layer(self) -> SegmentTask | None:
        """Start a run on the active raster layer; returns its task (None if refused).

        On a server, no package is needed here; on this computer, the segment packages
        (the install dialog is offered when they are missing).
        """
        client = self._server_client()
        if client is False:
            return None
        if client is None and not packages.ensure(SEGMENT, self):
            self._say("segmenting needs its packages: install them first", Qgis.Info)
            return None
        layer = self.iface.activeLayer()
        found = self._active_scene(layer)
        if found is None:
            return None
        folder, source, bands = found
        request = RunRequest(
            layer_name=styling.input_name(layer, source),  # "adwp B04" for a band file
            source=source,
            output_dir=folder,
            layer_id=layer.id(),
            options={
                "model": self.model_combo.currentData(),
                "product_level": self.level_combo.currentData(),
                "bands": bands,
                "tta": self.tta_check.isChecked(),
                "resolution": "preview" if self.preview_check.isChecked() else "native",
                "shadow_geometry": self.shadow_check.isChecked(),
            },
            probabilities=self.probabilities_check.isChecked(),
            polygons=self.polygons_check.isChecked(),
            valid=self.valid_check.isChecked(),
        )
        task = SegmentTask(request, self._task_done, client or None)
        return self.runner.start(task, self._run_failed)

    def _server_client(self) -> Any:
        """The server's client when runs go to one; None for this computer.

        False (said) when the server cannot be used: no URL, a token that cannot be read.

        Read here, on the UI thread: QGIS may ask for its master password.
        """
        if not self.on_server:
            return None
        if not self.runner.ready():
            return False
        choice = self.server_choice()
        if not choice.remote:
            self._say("Run on a cloudseg server: enter its URL first", Qgis.Warning)
            return False
        try:
            client = client_for(choice)
        except CloudsegError as exc:
            self._say(for_qgis(str(exc), DOCK), Qgis.Critical)
            return False
        save_server(choice)
        return client

    def _active_scene(self, layer: Any) -> tuple[Path, Path, list[str] | None] | None:
        """What a run on ``layer`` needs: the output folder, the scene, its bands.

        None, with a message, when a task is running, the layer is not a raster, or the
        folder or the scene cannot be used.
        """
        from ..backend.raster.bands import parse_band_list
        from ..backend.raster.sources import scene_path_from_gdal_source

        if not self.runner.ready():
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

    def explain_view(self, classes: list[str] | None = None) -> BackendTask | None:
        """Explain the active layer over the map's extent (a task); its task, or None."""
        from qgis.core import QgsCoordinateTransform

        client = self._server_client()
        if client is False:
            return None
        if client is None and not packages.ensure(TRAINING, self):
            self._say("explain needs PyTorch and friends: install them first", Qgis.Info)
            return None

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
        kind = f"why-{'-'.join(wanted)}"
        name = styling.input_name(layer, source)
        output = stamped_paths(folder, name, {kind: ".tif"})[kind]
        bounds = (view.xMinimum(), view.yMinimum(), view.xMaximum(), view.yMaximum())
        model, level = self.model_combo.currentData(), self.level_combo.currentData()

        def work(progress: Callable[[float, str], None], cancelled: Callable[[], bool]) -> Any:
            if client:
                return self._explain_on_server(
                    client, source, output, wanted, model, level, bands, bounds, progress, cancelled
                )
            from ..backend.inference.explain import explain

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

        def explained(task: BackendTask) -> None:
            self._explained(task, name, layer.id())

        def failed(task: BackendTask) -> None:
            if task.result is not None:  # the cancel came after the map was written
                Path(task.result.output).unlink(missing_ok=True)

        return self.runner.start(BackendTask(f"Explain {name}", work, explained), failed)

    @staticmethod
    def _explain_on_server(
        client: Any,
        source: Path,
        output: Path,
        classes: list[str],
        model: str | None,
        level: str | None,
        bands: list[str] | None,
        bounds: tuple[float, float, float, float],
        progress: Callable[[float, str], None],
        cancelled: Callable[[], bool],
    ) -> Any:
        """Explain on the server, its map downloaded to ``output``.

        Returns what ``_explained`` reads of a local ``ExplainResult`` (output, model,
        classes, method, seconds), and where it ran.
        """
        from types import SimpleNamespace

        from ..backend.remote import run_on_server

        options = {"model": model, "product_level": level, "bands": bands, "extent": bounds}
        options["classes"] = classes
        run = run_on_server(
            client, "explain", source, options, {"cam": output}, progress, cancelled
        )
        summary = run.summary
        return SimpleNamespace(
            output=run.files["cam"],
            model=str(summary.get("model", "")),
            classes=list(summary.get("classes") or classes),
            method=str(summary.get("method", "gradcam")),
            seconds=float(summary.get("seconds") or 0.0),
            where=run.where,
        )

    def _explained(self, task: BackendTask, name: str, layer_id: str) -> None:
        """Add the map as a heat map over the image, one layer per class explained."""
        result = task.result
        layers = styling.explanation_layers(result.output, name, result.classes, result.method)
        styling.place_results(QgsProject.instance(), layers)  # the first class on top, shown
        self._keep_active(layer_id)
        self._say(
            f"{name}: where {result.model} looked for {', '.join(result.classes)} "
            f"({result.method}, {result.seconds:.1f} s"
            + (f" on {result.where})" if getattr(result, "where", "") else ")"),
            Qgis.Info,
        )

    def cancel(self) -> None:
        """Cancel the running task (its outputs are removed)."""
        self.runner.cancel()

    def _task_done(self, task: SegmentTask) -> None:
        """Load the run's results (styled, grouped), record the run and say what it found.

        The same for a run here and one on a server: ``task.result`` is a
        :class:`RunOutcome`, the files are the request's paths either way.
        """
        name, result = task.request.layer_name, task.result
        assert isinstance(result, RunOutcome)
        styling.add_results(
            QgsProject.instance(),
            task.outputs["mask"],
            task.outputs["probabilities"],
            task.outputs["polygons"],
            name=name,
            group_name=f"{name} - {result.model}",
            valid=task.outputs["valid"],
        )
        self._keep_active(task.request.layer_id)
        cloud = result.class_percent.get("cloud", 0.0)
        cost = result.cost
        self._record(RunRecord(
            name, "done", result.model, result.seconds, cloud, task.outputs,
            f"{result.runner}\n{cost}" if cost else result.runner, result.where,
        ))  # fmt: skip
        if task.client is not None:
            self._server_runners[task.client.url] = result.where
            self._server_runners[self.server_edit.text().strip()] = result.where
            self._show_device()
        where = result.runner if task.client is None else result.where
        done = (
            f"{name}: {cloud:.1f} % cloud in {result.seconds:.1f} s on {where}; "
            f"product level {result.product_level}"
        )
        if result.usable_percent is not None:
            done += f"; {result.usable_percent:.1f} % usable"
        if result.shadow_geometry is not None:
            from ..backend.inference.shadow import describe as describe_geometry

            done += f"; {describe_geometry(result.shadow_geometry)}"
        if result.warnings:
            warnings = "; ".join(for_qgis(w, DOCK) for w in result.warnings)
            self._say(f"{done}. Warning: {warnings}", Qgis.Warning)
        else:
            self._say(done, Qgis.Info)

    def _run_failed(self, task: SegmentTask) -> None:
        """Record a failed or cancelled run (the runner has said why); remove its files."""
        if task.error:
            record = RunRecord(
                task.request.layer_name, "failed", message=for_qgis(task.error, DOCK),
                where=self._where_asked(task),
            )  # fmt: skip
        else:
            if task.result is not None:  # the cancel came after the engine had finished
                for path in task.outputs.values():
                    if path:
                        Path(path).unlink(missing_ok=True)
            record = RunRecord(
                task.request.layer_name, "cancelled", message="cancelled; nothing was written",
                where=self._where_asked(task),
            )  # fmt: skip
        self._record(record)

    @staticmethod
    def _where_asked(task: SegmentTask) -> str:
        """Where a run that did not finish was sent: ``server host:port`` or this computer."""
        if task.client is None:
            return LOCAL
        from urllib.parse import urlsplit

        return f"server {urlsplit(task.client.url).netloc}"

    def _keep_active(self, layer_id: str) -> None:
        """Keep the layer the run was made on active: the next run or explain uses it."""
        layer = QgsProject.instance().mapLayer(layer_id) if layer_id else None
        if layer is not None and self.iface.activeLayer() is not layer:
            self.iface.setActiveLayer(layer)

    def _record(self, record: RunRecord) -> None:
        self.runs.insert(0, record)
        self._add_run_row(record)

    def _add_run_row(self, record: RunRecord) -> None:
        self.runs_table.insertRow(0)
        cloud = "" if record.cloud_percent is None else f"{record.cloud_percent:.1f}"
        # "this computer" or the server's host:port; the runner in the tooltip
        where = record.where.split(" (")[0].removeprefix("server ")
        values = [record.layer_name, record.status, record.model, cloud, f"{record.seconds:.1f}"]
        values.append(where)
        tip = "\n".join([*(str(p) for p in record.outputs.values() if p), record.message])
        for column, value in enumerate(values):
            item = QTableWidgetItem(value)
            if column == 5:
                item.setToolTip(f"ran on {record.where}" if record.where else tip)
            else:
                item.setToolTip(f"{value}\n{tip}" if column in (0, 2) else tip)
            if column in (3, 4):
                item.setTextAlignment(int(Qt.AlignRight | Qt.AlignVCenter))
            self.runs_table.setItem(0, column, item)

    def _say(self, text: str, level: Qgis.MessageLevel) -> None:
        self.status_label.setText(text)
        QgsMessageLog.logMessage(text, logbridge.LOG_TAG, level)
        if level in (Qgis.Warning, Qgis.Critical):
            self.iface.messageBar().pushMessage("cloudseg", text, level, 8)

"""The label dock: the active-learning loop inside QGIS.

Pick the scene layer, the model and a label project (one GeoPackage); "Propose areas"
segments the scene with an uncertainty layer and ranks boxes by doubt (a QgsTask);
"Next" zooms to the next box and outlines it (box 1 first after proposing), hiding the
model's layers so the scene shows in true colour; "Start from the model" fills the box
with the model's mask as polygons; class buttons (keys 1 to the number of classes) set
the class of the next polygon digitized with QGIS's own tools on the ``labels`` layer;
Done / Skip / Back mark the box. The box's outline shows while the dock and the
proposals layer do.
"Fine-tune" (a QgsTask) makes a new model version from the done boxes and "Re-run"
segments the scene with it beside the old mask; the round history shows IoU on the
held-out boxes before and after.

The second tab, "Suspicious labels" (:mod:`.reviewpanel`), reviews the windows a label
check flagged: accept, correct with the same digitizing tools, or drop.

This module is a view: the round's steps (propose, fine-tune, re-run) are
:class:`cloudseg.training.label_round.LabelRound`'s, the project's files
:class:`cloudseg.backend.active.project.LabelProject`'s; the project's layers are
:mod:`.labellayers`', the widgets :mod:`.labelwidgets`', the tasks :mod:`.tasks`'.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from qgis.core import Qgis, QgsMessageLog, QgsProject, QgsRasterLayer, QgsWkbTypes
from qgis.gui import QgsRubberBand
from qgis.PyQt.QtCore import QSettings, pyqtSignal
from qgis.PyQt.QtGui import QColor
from qgis.PyQt.QtWidgets import QDockWidget, QTabWidget, QWidget

from ..backend.active.loop import latest_run
from ..backend.active.project import LabelProject, ProjectContents
from ..backend.dependencies import TRAINING
from ..backend.errors import CloudsegError
from ..backend.raster.reader import scene_key
from ..backend.raster.sources import scene_path_from_gdal_source
from ..training.label_round import LabelRound
from . import logbridge, packages, styling
from .labellayers import STATUS_COLORS, ProjectLayers
from .labelwidgets import LabelDockUi
from .messages import DOCK, for_qgis
from .reviewpanel import ReviewPanel
from .tasks import BackendTask, TaskRunner
from .widgets import fill_model_combo

AUTO = "auto (best for the scene)"
SETTINGS_PROJECT = "cloudseg/label_project"


class LabelDock(QDockWidget, LabelDockUi):
    """Propose, label, fine-tune, re-run: the active-learning loop in one dock."""

    #: Emitted with the new version's name when a round registered one.
    model_registered = pyqtSignal(str)

    def __init__(self, iface: Any, parent: QWidget | None = None) -> None:
        super().__init__("Cloud labels (active learning)", parent)
        self.setObjectName("cloudsegLabelDock")
        self.iface = iface
        self.project: LabelProject | None = None
        self.layers: ProjectLayers | None = None
        self.current: int | None = None  # fid of the box being labeled
        self.handled: list[int] = []  # boxes marked this session, for Back
        self.class_value: int | None = None
        self._cards: dict[str, Any] = {}
        self.highlight = QgsRubberBand(iface.mapCanvas(), QgsWkbTypes.PolygonGeometry)
        self.highlight.setFillColor(QColor(0, 0, 0, 0))
        self.highlight.setStrokeColor(QColor(STATUS_COLORS["todo"]))
        self.highlight.setWidth(3)
        body = QWidget()
        self.setup_ui(body)
        self.review = ReviewPanel(iface, self._say)
        self.tabs = QTabWidget()
        self.tabs.addTab(body, "Propose and label")
        self.tabs.addTab(self.review, "Suspicious labels")
        self.setWidget(self.tabs)
        self.runner = TaskRunner(self._say, self.progress, self.cancel_button, self.status_label)
        for button in (self.propose_button, self.finetune_button, self.rerun_button):
            self.runner.guard(button)
        actions = {
            self.propose_button: self.propose,
            self.back_button: self.back,
            self.next_button: self.next_box,
            self.skip_button: lambda: self.mark("skipped"),
            self.done_button: lambda: self.mark("labeled"),
            self.start_button: self.start_from_model,
            self.finetune_button: self.fine_tune,
            self.rerun_button: self.rerun,
        }
        for button, action in actions.items():
            button.clicked.connect(lambda _=False, action=action: action())
        self.model_combo.currentIndexChanged.connect(self._model_changed)
        self.class_buttons.connect(iface.mainWindow(), self.set_class, lambda: not self.isHidden())
        # A path typed into the field opens when the typing ends (Enter, or leaving the
        # field), not at every keystroke; one picked in the file dialog opens at once.
        self._typing = False
        line = self.project_widget.lineEdit()
        line.textEdited.connect(lambda _text: setattr(self, "_typing", True))
        line.editingFinished.connect(self._typed_project)
        self.project_widget.fileChanged.connect(
            lambda path: None if self._typing else self.open_project(path)
        )
        self.load_models()

        def forget_layers(ids: list[str]) -> None:  # the analyst removed project layers
            if self.layers is not None:
                self.layers.forget(ids)
            self._show_outline()

        self._forget_layers = forget_layers
        QgsProject.instance().layersWillBeRemoved.connect(forget_layers)
        self._results: dict[str, bool] = {}  # layer id -> made by cloudseg (not a scene)
        QgsProject.instance().layerTreeRoot().visibilityChanged.connect(self._show_outline)
        QgsProject.instance().layersAdded.connect(self._offer_scenes_only)
        QgsProject.instance().layersRemoved.connect(self._offer_scenes_only)
        self._offer_scenes_only()
        saved = QSettings().value(SETTINGS_PROJECT, "")
        if saved and Path(saved).is_file():
            self.project_widget.setFilePath(saved)  # opens it (fileChanged)

    @property
    def task(self) -> BackendTask | None:
        """The running task, if any."""
        return self.runner.task

    @property
    def proposals(self) -> Any:
        """The project's proposals layer in QGIS (None before proposals exist)."""
        return self.layers.proposals if self.layers else None

    @property
    def labels(self) -> Any:
        """The project's labels layer in QGIS (None before proposals exist)."""
        return self.layers.labels if self.layers else None

    # -- set-up ------------------------------------------------------------------------
    def load_models(self, select: str | None = None) -> None:
        """List the built-in models and the registered versions; select ``select``."""
        from ..backend.models.registry import available_models

        try:
            self._cards = {m.card.name: m.card for m in available_models()}
        except CloudsegError as exc:
            self._cards = {}
            self._say(for_qgis(str(exc), DOCK), Qgis.Warning)
        fill_model_combo(
            self.model_combo, AUTO, self._cards, select or self.model_combo.currentData()
        )
        self._model_changed()

    def _card(self) -> Any:
        """The chosen model's card (the first model's for auto)."""
        name = self.model_combo.currentData()
        return self._cards.get(name) or next(iter(self._cards.values()), None)

    def _model_changed(self) -> None:
        """Offer the chosen model's classes as buttons; style the labels by them."""
        card = self._card()
        if card is None:
            return
        self.class_buttons.fill(card.classes)
        if self.layers is not None:
            self.layers.style_labels(card.classes)
        default = next((c.value for c in card.classes if c.name != "clear"), card.classes[0].value)
        self.set_class(self.class_value if self.class_value is not None else default)

    def detach(self) -> None:
        """Remove the keys, the outline and signal connections (before deletion)."""
        project = QgsProject.instance()
        with contextlib.suppress(TypeError, RuntimeError):
            project.layersWillBeRemoved.disconnect(self._forget_layers)
        for signal in (project.layersAdded, project.layersRemoved):
            with contextlib.suppress(TypeError, RuntimeError):
                signal.disconnect(self._offer_scenes_only)
        with contextlib.suppress(TypeError, RuntimeError):
            project.layerTreeRoot().visibilityChanged.disconnect(self._show_outline)
        self.class_buttons.disconnect()
        with contextlib.suppress(RuntimeError):
            self.highlight.reset()
            self.iface.mapCanvas().scene().removeItem(self.highlight)

    def _offer_scenes_only(self, *_changed: Any) -> None:
        """The Scene list offers scenes: not the masks, probabilities, uncertainty...

        What cloudseg made is known by its file's tags (:func:`styling.is_result`), read
        once per layer.
        """
        layers = QgsProject.instance().mapLayers()
        self._results = {
            layer_id: self._results[layer_id]
            if layer_id in self._results
            else styling.is_result(layer)
            for layer_id, layer in layers.items()
        }
        self.scene_combo.setExceptedLayerList(
            [layers[layer_id] for layer_id, result in self._results.items() if result]
        )

    def setVisible(self, visible: bool) -> None:
        """Show or hide the dock, and the current box's outline with it."""
        super().setVisible(visible)
        self._show_outline()

    def _show_outline(self, *_node: Any) -> None:
        """Show the current box's outline while the dock and the proposals layer are shown.

        Hidden with the dock (closed) and with the proposals layer or a group above it
        (unchecked in the Layers panel); shown again with them.
        """
        if not hasattr(self, "highlight"):  # Qt shows the dock before it is built
            return
        node = None
        if self.proposals is not None:
            with contextlib.suppress(RuntimeError):  # the layer is being deleted
                node = QgsProject.instance().layerTreeRoot().findLayer(self.proposals.id())
        shown = self.current is not None and not self.isHidden()
        self.highlight.setVisible(shown and node is not None and node.isVisible())

    # -- the project ---------------------------------------------------------------------
    def _typed_project(self) -> None:
        """The analyst finished typing a project path: open it (once)."""
        if self._typing:
            self._typing = False
            self.open_project(self.project_widget.filePath())

    def open_project(self, path: str | Path) -> None:
        """Open (or start) a label project: load its layers, progress and history."""
        text = str(path).strip()
        if not text:
            return
        candidate = Path(text).expanduser()
        if not candidate.name or candidate.name in (".", ".."):
            self._say(f"{text} is a folder: give the label project a file name", Qgis.Warning)
            return
        if not candidate.parent.is_dir():
            self._say(
                f"the folder {candidate.parent} does not exist: choose a project in an "
                "existing folder",
                Qgis.Warning,
            )
            return
        candidate = candidate.with_suffix(".gpkg")
        if self.project is not None and self.project.path.resolve() == candidate.resolve():
            return  # already open
        try:
            self.project = LabelProject(candidate)
        except CloudsegError as exc:
            self._say(for_qgis(str(exc), DOCK), Qgis.Warning)
            return
        self.layers = ProjectLayers(self.project)
        self.current = None  # no box of this project is shown yet
        self._show_outline()
        self.handled.clear()
        QSettings().setValue(SETTINGS_PROJECT, str(self.project.path))
        self._pick_scene_and_model(self._reload())

    def _reload(self) -> ProjectContents:
        """Load the layers (again), show progress and history; the project's contents."""
        card = self._card()
        self.layers.load(card.classes if card else None)
        self.set_class(self.class_value)
        return self.refresh()

    def _pick_scene_and_model(self, contents: ProjectContents) -> None:
        """Select the project's scene layer and its current model (the last adopted)."""
        from ..backend.active.history import current_model

        model = current_model(contents.rounds, contents.proposing_model)
        if model:
            self.load_models(select=model)
        if contents.scene is None:
            return
        layers = [self.scene_combo.currentLayer(), *QgsProject.instance().mapLayers().values()]
        for layer in layers:
            if isinstance(layer, QgsRasterLayer):
                with contextlib.suppress(CloudsegError, OSError, ValueError):
                    if scene_key(scene_path_from_gdal_source(layer.source())) == contents.scene:
                        self.scene_combo.setLayer(layer)
                        return

    def _ready(self) -> tuple[QgsRasterLayer, Path] | None:
        """The scene layer and the file cloudseg reads for it, with a project open."""
        layer = self.scene_combo.currentLayer()
        if not isinstance(layer, QgsRasterLayer):
            self._say("pick the scene: a Sentinel-2 raster layer", Qgis.Warning)
            return None
        if self.project is None:
            self._say("choose a label project (a .gpkg) first", Qgis.Warning)
            return None
        return layer, scene_path_from_gdal_source(layer.source())

    # -- proposing -----------------------------------------------------------------------
    def propose(self) -> BackendTask | None:
        """Segment with uncertainty (unless done with this model) and propose boxes."""
        ready = self._ready()
        if ready is None:
            return None
        layer, source = ready
        project, model = self.project, self.model_combo.currentData()
        box, count = self.box_spin.value(), self.count_spin.value()

        def work(progress: Any, cancelled: Any) -> Any:
            return LabelRound(project, source).propose(model, box, count, progress, cancelled)

        def done(result: Any) -> None:
            name = styling.input_name(layer, source)
            self.layers.add_run(name, result.run.mask, result.run.uncertainty)
            self._pick_scene_and_model(self._reload())
            # No box is shown yet: Next goes to box 1, never past a box not seen.
            self.current = None
            self._show_outline()
            self._say(
                f"{len(result.proposals)} boxes proposed, most doubtful first: press Next "
                "to go to box 1",
                Qgis.Info,
            )

        return self._run(f"Propose areas in {layer.name()}", work, done)

    # -- walking the boxes -------------------------------------------------------------
    def next_box(self) -> int | None:
        """Zoom to the box after the one shown (box 1 when none is) and outline it.

        Returns:
            The box's fid, or None (said) when there is no project or no box to label.
        """
        if self.project is None:
            self._say(
                "no label project open: choose one (a .gpkg) under Label project, then "
                "press Propose areas",
                Qgis.Warning,
            )
            return None
        contents = self.project.read()
        following = contents.next_todo(self.current)
        if following is None:
            self.current = None
            self._show_outline()
            if contents.proposals:
                self._say("no box left to label: fine-tune, or propose more", Qgis.Info)
            else:
                self._say("no boxes proposed yet: press Propose areas", Qgis.Info)
            self.refresh()
            return None
        self._go_to(following.fid)
        return self.current

    def _go_to(self, fid: int) -> None:
        """Outline the box, zoom to it, hide the model's layers, make labels active.

        The box is outlined on the canvas, not selected: QGIS fills a selected polygon
        with the selection colour, which would hide the very pixels to label.
        """
        self.layers.ensure(getattr(self._card(), "classes", None))
        if self.proposals is None:  # nothing shown: the box is not the current one
            self._say("the project's proposals could not be loaded in QGIS", Qgis.Warning)
            return
        self.current = fid
        canvas = self.iface.mapCanvas()
        geometry = self.proposals.getFeature(fid).geometry()
        self.highlight.setToGeometry(geometry, self.proposals)
        self._show_outline()
        with contextlib.suppress(AttributeError, RuntimeError):
            extent = geometry.boundingBox()
            extent.scale(1.15)
            canvas.setExtent(canvas.mapSettings().layerExtentToOutputExtent(self.proposals, extent))
            canvas.refresh()
        self.layers.show_runs(False)
        if self.labels is not None:
            self.iface.setActiveLayer(self.labels)
        self.refresh()

    def _saved(self) -> bool:
        """Save the analyst's edits on the labels layer; False (said) when they fail."""
        error = self.layers.commit_labels() if self.layers else None
        if error:
            self._say(f"the labels could not be saved: {error}", Qgis.Critical)
        return not error

    def start_from_model(self) -> int:
        """Fill the current box with the model's mask as polygons; how many were added."""
        from ..backend.active.labels import start_from_model

        box = self.project.read().proposal(self.current) if self.project else None
        if box is None:
            self._say("no box selected: press Next", Qgis.Warning)
            return 0
        run = latest_run(self.project, box.scene, box.model or None)
        if run is None:
            self._say(f"no mask of {box.model} on {box.scene}: press Propose areas", Qgis.Warning)
            return 0
        if not self._saved():
            return 0
        try:
            added = start_from_model(self.project, run.mask, box.fid)
        except CloudsegError as exc:
            self._say(for_qgis(str(exc), DOCK), Qgis.Critical)
            return 0
        self.layers.reload()
        if self.labels is not None:
            self.iface.setActiveLayer(self.labels)
        self._say(f"{added} polygon(s) from {box.model}: fix what is wrong", Qgis.Info)
        return added

    def set_class(self, value: int | None) -> None:
        """New polygons on the labels layer get class ``value`` (their name follows)."""
        card = self._card()
        if value is None or card is None or value not in {c.value for c in card.classes}:
            return
        self.class_value = value
        self.class_buttons.check(value)
        if self.layers is not None:
            self.layers.set_class(value)

    def mark(self, status: str) -> int | None:
        """Done (``labeled``) or Skip (``skipped``) the current box, then go to the next."""
        if self.current is None or self.project is None:
            self._say("no box selected: press Next", Qgis.Warning)
            return None
        if status == "labeled" and not self._saved():
            return None
        try:
            self.project.set_status(self.current, status)
        except CloudsegError as exc:
            self._say(for_qgis(str(exc), DOCK), Qgis.Critical)
            return None
        self.handled.append(self.current)
        self.layers.reload()
        return self.next_box()

    def back(self) -> int | None:
        """Return to the box marked last: it is to label again (its labels stay)."""
        if not self.handled or self.project is None:
            self._say("nothing to go back to in this session", Qgis.Info)
            return None
        fid = self.handled.pop()
        self.project.set_status(fid, "todo")
        self.layers.reload()
        self._go_to(fid)
        return fid

    # -- teaching ------------------------------------------------------------------------
    def fine_tune(self) -> BackendTask | None:
        """Fine-tune the model on the done boxes (a task); registers a new version."""
        if not packages.ensure(TRAINING, self):
            self._say("fine-tuning needs PyTorch and friends: install them first", Qgis.Info)
            return None
        ready = self._ready()
        if ready is None or not self._saved():
            return None
        project, source = self.project, ready[1]
        model, steps = self.model_combo.currentData(), self.steps_spin.value()

        def work(progress: Any, cancelled: Any) -> Any:
            return LabelRound(project, source).fine_tune(
                model, steps=steps, progress=progress, cancelled=cancelled
            )

        def done(result: Any) -> None:
            # The judge decides what is current; a version kept aside is listed, not chosen.
            self.load_models(select=result.current)
            self.model_registered.emit(result.current)
            self.refresh()
            where = f"{result.round.held_out_boxes} held-out box(es)"
            if result.adopted:
                self._say(f"{result.verdict.reason} ({where}); Re-run to see it", Qgis.Success)
            else:
                self._say(
                    f"{result.verdict.reason} ({where}). {result.model} stays in the model "
                    "list if you want it anyway; label more boxes and fine-tune again",
                    Qgis.Warning,
                )

        return self._run(f"Fine-tune on {project.path.name}", work, done)

    def rerun(self) -> BackendTask | None:
        """Segment the scene with the chosen model, beside the earlier masks (a task)."""
        ready = self._ready()
        if ready is None:
            return None
        layer, source = ready
        project, model = self.project, self.model_combo.currentData()

        def work(progress: Any, cancelled: Any) -> Any:
            return LabelRound(project, source).rerun(model, progress, cancelled)

        def done(run: Any) -> None:
            self.layers.add_run(styling.input_name(layer, source), run.mask, run.uncertainty)
            cloud = run.result.class_percent.get("cloud", 0.0)
            self._say(
                f"{run.result.model}: {cloud:.1f} % cloud, beside the earlier masks", Qgis.Info
            )

        return self._run(f"Re-run on {layer.name()}", work, done)

    def _run(self, what: str, work: Any, done: Any) -> BackendTask | None:
        """Run ``work`` as the dock's task; ``done(result)`` when it succeeded."""
        task = BackendTask(f"cloudseg: {what}", work, lambda ended: done(ended.result))
        return self.runner.start(task, cancelled="cancelled; the project is as it was")

    # -- what the dock shows -----------------------------------------------------------
    def refresh(self) -> ProjectContents:
        """Progress (done / proposed, labeled km²) and the round history; the contents."""
        if self.project is None:
            self.progress_label.setText("no label project open")
            return ProjectContents()
        contents = self.project.read()
        box = contents.proposal(self.current)
        at = f" Box {box.rank} (doubt {box.score:.0f} %)." if box else ""
        self.progress_label.setText(contents.progress() + at)
        self.history_table.show_rounds(contents.rounds)
        return contents

    def _say(self, text: str, level: Qgis.MessageLevel) -> None:
        self.status_label.setText(text)
        QgsMessageLog.logMessage(text, logbridge.LOG_TAG, level)
        if level in (Qgis.Warning, Qgis.Critical, Qgis.Success):
            self.iface.messageBar().pushMessage("cloudseg", text, level, 8)


__all__ = ["LabelDock"]

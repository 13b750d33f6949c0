"""The label dock: the active-learning loop inside QGIS.

Pick the scene layer, the model and a label project (one GeoPackage); "Propose areas"
segments the scene with an uncertainty layer and ranks boxes by doubt (a QgsTask);
"Next" zooms to the next box and selects it; "Start from the model" fills the box with
the model's mask as polygons; class buttons (keys 1-4) set the class of the next
polygon digitized with QGIS's own tools on the ``labels`` layer; Done / Skip / Back
mark the box. "Fine-tune" (a QgsTask) makes a new model version from the done boxes
and "Re-run" segments the scene with it beside the old mask; the round history shows
IoU on the held-out boxes before and after.

The second tab, "Suspicious labels" (:mod:`.reviewpanel`), reviews the windows a label
check flagged: accept, correct with the same digitizing tools, or drop.

Everything lives in the project's files (proposals, labels, rounds), so closing QGIS
and opening the project again resumes where it was. The work itself is the backend's
(:mod:`cloudseg.backend.active`) and the training's (:mod:`cloudseg.training.finetune`);
this module only wires it to QGIS.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsCoordinateTransformContext,
    QgsDefaultValue,
    QgsDistanceArea,
    QgsEditFormConfig,
    QgsMapLayerProxyModel,
    QgsMessageLog,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.gui import QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import QSettings, Qt, pyqtSignal
from qgis.PyQt.QtGui import QKeySequence
from qgis.PyQt.QtWidgets import (
    QAbstractItemView,
    QButtonGroup,
    QComboBox,
    QDockWidget,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QShortcut,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ..backend.errors import CancelledError, CloudsegError
from ..training.adapt import DEFAULT_RECIPE, RECIPES
from . import logbridge, styling
from .messages import DOCK, for_qgis
from .reviewpanel import ReviewPanel
from .tasks import BackendTask
from .widgets import fill_model_combo

AUTO = "auto (best for the scene)"
SETTINGS_PROJECT = "cloudseg/label_project"
#: Default box edge: an area an analyst labels in a minute or two (1.3 km at 10 m).
DEFAULT_BOX = 128
DEFAULT_COUNT = 20
#: The status colours of the proposals layer's outlines.
STATUS_COLORS = {"todo": "#ffd600", "labeled": "#00c853", "skipped": "#9e9e9e"}


def runs_folder(project: Path) -> Path:
    """Where the dock writes the masks and uncertainty rasters of a project's scenes."""
    return project.with_name(f"{project.stem}-runs")


def latest_run(project: Path, scene: str, model: str | None) -> tuple[Path, Path] | None:
    """The newest (mask, uncertainty) the dock wrote for ``scene`` with ``model``."""
    import rasterio

    for mask in sorted(runs_folder(project).glob(f"{scene}_*_mask.tif"), reverse=True):
        doubt = mask.with_name(mask.name.replace("_mask.tif", "_uncertainty.tif"))
        if not doubt.is_file():
            continue
        with (
            contextlib.suppress(OSError, rasterio.errors.RasterioIOError),
            rasterio.open(mask) as ds,
        ):
            if model is None or ds.tags().get("CLOUDSEG_MODEL") == model:
                return mask, doubt
    return None


class LabelDock(QDockWidget):
    """Propose, label, fine-tune, re-run: the active-learning loop in one dock."""

    #: Emitted with the new version's name when a round registered one.
    model_registered = pyqtSignal(str)

    def __init__(self, iface: Any, parent: QWidget | None = None) -> None:
        super().__init__("Cloud labels (active learning)", parent)
        self.setObjectName("cloudsegLabelDock")
        self.iface = iface
        self.project: Path | None = None
        self.proposals: QgsVectorLayer | None = None
        self.labels: QgsVectorLayer | None = None
        self.current: int | None = None  # fid of the box being labeled
        self.handled: list[int] = []  # boxes marked this session, for Back
        self.task: BackendTask | None = None
        self.class_value: int | None = None
        self._cards: dict[str, Any] = {}
        self._shortcuts: list[QShortcut] = []

        body = QWidget()
        layout = QVBoxLayout(body)
        form = QFormLayout()
        self.scene_combo = QgsMapLayerComboBox()
        self.scene_combo.setFilters(QgsMapLayerProxyModel.RasterLayer)
        self.scene_combo.setToolTip("The Sentinel-2 scene to label")
        form.addRow("Scene", self.scene_combo)
        self.model_combo = QComboBox()
        self.model_combo.setToolTip(
            "The model that proposes and that Fine-tune starts from; fine-tuned versions "
            "are listed after the built-in models"
        )
        self.model_combo.currentIndexChanged.connect(self._model_changed)
        form.addRow("Model", self.model_combo)
        self.project_widget = QgsFileWidget()
        self.project_widget.setStorageMode(QgsFileWidget.SaveFile)
        self.project_widget.setConfirmOverwrite(False)  # an existing project is opened
        self.project_widget.setFilter("GeoPackage (*.gpkg)")
        self.project_widget.setToolTip(
            "One GeoPackage per label project: proposals, labels and the round history. "
            "An existing one is opened where it was left; a new name creates one."
        )
        self.project_widget.fileChanged.connect(lambda path: self.open_project(path))
        form.addRow("Label project", self.project_widget)
        sizes = QHBoxLayout()
        self.box_spin = QSpinBox()
        self.box_spin.setRange(16, 2048)
        self.box_spin.setValue(DEFAULT_BOX)
        self.box_spin.setSuffix(" px")
        self.box_spin.setToolTip("Box edge: an area labeled in a minute or two")
        self.count_spin = QSpinBox()
        self.count_spin.setRange(1, 500)
        self.count_spin.setValue(DEFAULT_COUNT)
        self.count_spin.setToolTip("How many boxes to propose")
        sizes.addWidget(QLabel("Box"))
        sizes.addWidget(self.box_spin)
        sizes.addWidget(QLabel("Boxes"))
        sizes.addWidget(self.count_spin)
        form.addRow("Proposals", sizes)
        layout.addLayout(form)

        self.propose_button = QPushButton("Propose areas")
        self.propose_button.setToolTip(
            "Segment the scene with an uncertainty layer and propose the boxes where the "
            "model is least sure (never over a box labeled or skipped)"
        )
        self.propose_button.clicked.connect(lambda: self.propose())
        layout.addWidget(self.propose_button)

        walk = QHBoxLayout()
        self.back_button = QPushButton("Back")
        self.back_button.setToolTip("Return to the box marked last; it is to label again")
        self.back_button.clicked.connect(lambda: self.back())
        self.next_button = QPushButton("Next")
        self.next_button.setToolTip("Zoom to the next box to label and select it")
        self.next_button.clicked.connect(lambda: self.next_box())
        self.skip_button = QPushButton("Skip")
        self.skip_button.setToolTip("Never propose this box again")
        self.skip_button.clicked.connect(lambda: self.mark("skipped"))
        self.done_button = QPushButton("Done")
        self.done_button.setToolTip(
            "The box is labeled: pixels under no polygon inside it are clear"
        )
        self.done_button.clicked.connect(lambda: self.mark("labeled"))
        for button in (self.back_button, self.next_button, self.skip_button, self.done_button):
            walk.addWidget(button)
        layout.addLayout(walk)
        self.start_button = QPushButton("Start from the model")
        self.start_button.setToolTip(
            "Fill the box with the model's mask as polygons: fix what is wrong with the "
            "digitizing tools (add, reshape, split, vertex tool, delete)"
        )
        self.start_button.clicked.connect(lambda: self.start_from_model())
        layout.addWidget(self.start_button)

        self.class_row = QHBoxLayout()
        self.class_group = QButtonGroup(self)
        self.class_group.setExclusive(True)
        self.class_group.idClicked.connect(self.set_class)
        layout.addWidget(QLabel("Class of the next polygon (keys 1-4)"))
        layout.addLayout(self.class_row)

        self.progress_label = QLabel("no label project open")
        self.progress_label.setWordWrap(True)
        layout.addWidget(self.progress_label)

        teach = QHBoxLayout()
        recipe = RECIPES[DEFAULT_RECIPE]
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 1000)
        self.steps_spin.setValue(recipe.steps)
        self.steps_spin.setSuffix(" steps")
        self.steps_spin.setToolTip(
            f"Training steps of a round (recipe {recipe.name}: only the segmentation head is "
            "trained, kept close to the model's own predictions where nobody labeled)"
        )
        self.finetune_button = QPushButton("Fine-tune")
        self.finetune_button.setToolTip(
            "Store the done boxes, hold about a quarter out, fine-tune the model from its "
            "weights and judge the new version on the held-out boxes: it becomes the current "
            "model only if no class loses more than 0.01 IoU there and the mean rises by 0.01"
        )
        self.finetune_button.clicked.connect(lambda: self.fine_tune())
        self.rerun_button = QPushButton("Re-run")
        self.rerun_button.setToolTip("Segment the scene with the model above, beside the old mask")
        self.rerun_button.clicked.connect(lambda: self.rerun())
        teach.addWidget(self.steps_spin)
        teach.addWidget(self.finetune_button)
        teach.addWidget(self.rerun_button)
        layout.addLayout(teach)

        tasks = QHBoxLayout()
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        tasks.addWidget(self.progress, 1)
        tasks.addWidget(self.cancel_button)
        layout.addLayout(tasks)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)

        layout.addWidget(QLabel("Rounds (IoU on the held-out boxes)"))
        self.history_table = QTableWidget(0, 5)
        self.history_table.setHorizontalHeaderLabels(
            ["Round", "Model", "Boxes", "Held-out IoU", "Minutes"]
        )
        header = self.history_table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.Stretch)
        self.history_table.verticalHeader().setVisible(False)
        self.history_table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        layout.addWidget(self.history_table, 1)
        self.review = ReviewPanel(iface, self._say)
        self.tabs = QTabWidget()
        self.tabs.addTab(body, "Propose and label")
        self.tabs.addTab(self.review, "Suspicious labels")
        self.setWidget(self.tabs)

        self.load_models()
        self._add_shortcuts()
        QgsProject.instance().layersWillBeRemoved.connect(self._layers_removed)
        self._enable()
        saved = QSettings().value(SETTINGS_PROJECT, "")
        if saved and Path(saved).is_file():
            self.project_widget.setFilePath(saved)  # opens it (fileChanged)

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

    def _model_changed(self) -> None:
        """Offer the chosen model's classes as buttons (the built-in ones by default)."""
        card = self._cards.get(self.model_combo.currentData())
        if card is None and self._cards:
            card = next(iter(self._cards.values()))
        for button in self.class_group.buttons():
            self.class_group.removeButton(button)
            self.class_row.removeWidget(button)
            button.deleteLater()
        if card is None:
            return
        for key, info in enumerate(card.classes[:4], start=1):
            button = QPushButton(f"{key} {info.name}")
            button.setCheckable(True)
            button.setObjectName(f"cloudsegClass{info.value}")
            button.setStyleSheet(f"border-left: 6px solid {info.color[:7]};")
            button.setToolTip(f"New polygons get class {info.value} ({info.name}); key {key}")
            self.class_group.addButton(button, info.value)
            self.class_row.addWidget(button)
        default = next((c.value for c in card.classes if c.name != "clear"), card.classes[0].value)
        self.set_class(self.class_value if self.class_value is not None else default)

    def _add_shortcuts(self) -> None:
        """Keys 1-4 pick the class while digitizing on the map."""
        window = self.iface.mainWindow()
        for key in range(1, 5):
            shortcut = QShortcut(QKeySequence(str(key)), window)
            shortcut.setContext(Qt.WindowShortcut)
            shortcut.activated.connect(lambda key=key: self.class_key(key))
            self._shortcuts.append(shortcut)

    def class_key(self, key: int) -> None:
        """Key ``key`` (1-4): the class of the key-th button, when this dock is shown."""
        buttons = self.class_group.buttons()
        if not self.isHidden() and 0 < key <= len(buttons):
            self.set_class(self.class_group.id(buttons[key - 1]))

    def _layers_removed(self, ids: list[str]) -> None:
        """The analyst removed the project's layers: forget them (added again when needed)."""
        for name in ("proposals", "labels"):
            layer = getattr(self, name)
            with contextlib.suppress(RuntimeError):  # deleted already
                if layer is not None and layer.id() not in ids:
                    continue
            setattr(self, name, None)

    def _ensure_layers(self) -> None:
        """Load the project's layers again if they were removed from the QGIS project."""
        if self.project is not None and (self.proposals is None or self.labels is None):
            self._load_layers()

    def detach(self) -> None:
        """Remove the shortcuts and signal connections (before the dock is deleted)."""
        with contextlib.suppress(TypeError, RuntimeError):
            QgsProject.instance().layersWillBeRemoved.disconnect(self._layers_removed)
        for shortcut in self._shortcuts:
            with contextlib.suppress(RuntimeError):
                shortcut.setEnabled(False)
                shortcut.deleteLater()
        self._shortcuts.clear()

    # -- the project ---------------------------------------------------------------------
    def open_project(self, path: str | Path) -> None:
        """Open (or start) a label project: load its layers, progress and history."""
        text = str(path).strip()
        if not text:
            return
        project = Path(text).expanduser()
        if project.suffix.lower() != ".gpkg":
            project = project.with_suffix(".gpkg")
        self.project = project
        self.current = None
        self.handled.clear()
        QSettings().setValue(SETTINGS_PROJECT, str(project))
        self._load_layers()
        self._pick_scene_and_model()
        self.refresh()

    def _group(self) -> Any:
        """The project's layer group ("Labels - coast"), on top of the tree."""
        root = QgsProject.instance().layerTreeRoot()
        name = f"Labels - {self.project.stem}"
        group = root.findGroup(name) or root.insertGroup(0, name)
        group.setExpanded(True)
        return group

    def _find_layer(self, uri: str) -> QgsVectorLayer | None:
        for layer in QgsProject.instance().mapLayers().values():
            if isinstance(layer, QgsVectorLayer) and layer.source() == uri:
                return layer
        return None

    def _load_layers(self) -> None:
        """Add the project's proposals and labels layers (once), styled."""
        from osgeo import ogr

        self.proposals = self.labels = None
        if self.project is None or not self.project.is_file():
            return
        dataset = ogr.Open(str(self.project))
        names = {dataset.GetLayer(i).GetName() for i in range(dataset.GetLayerCount())}
        dataset = None
        for name in ("labels", "proposals"):
            if name not in names:
                continue
            uri = f"{self.project}|layername={name}"
            layer = self._find_layer(uri)
            if layer is None:
                layer = QgsVectorLayer(uri, f"{self.project.stem} - {name}", "ogr")
                if not layer.isValid():
                    continue
                QgsProject.instance().addMapLayer(layer, False)
                self._group().insertLayer(0, layer)
            if name == "labels":
                self.labels = layer
            else:
                self.proposals = layer
        if self.proposals is not None:
            styling.style_proposals(self.proposals, STATUS_COLORS)
        self._style_labels()

    def _style_labels(self) -> None:
        card = self._card()
        if self.labels is None or card is None:
            return
        classes = [{"value": c.value, "name": c.name, "color": c.color} for c in card.classes]
        styling.style_labels(self.labels, classes)
        config = self.labels.editFormConfig()
        config.setSuppress(QgsEditFormConfig.SuppressOn)  # digitize without a form per polygon
        self.labels.setEditFormConfig(config)
        self.set_class(self.class_value)

    def _card(self) -> Any:
        name = self.model_combo.currentData()
        if name in self._cards:
            return self._cards[name]
        return next(iter(self._cards.values()), None)

    def _pick_scene_and_model(self) -> None:
        """Select the project's scene layer and its current model (the last adopted)."""
        from ..backend.active.history import current_model, read_rounds

        features = list(self.proposals.getFeatures()) if self.proposals else []
        rounds = read_rounds(self.project) if self.project else []
        model = current_model(rounds, features[-1]["model"] if features else None)
        if model:
            self.load_models(select=model)
        if features:
            from ..backend.raster.reader import scene_path_from_gdal_source

            scene = features[-1]["scene"]
            current = self.scene_combo.currentLayer()
            layers = [current, *QgsProject.instance().mapLayers().values()]
            for layer in layers:
                if not isinstance(layer, QgsRasterLayer):
                    continue
                with contextlib.suppress(CloudsegError, OSError, ValueError):
                    if scene_path_from_gdal_source(layer.source()).stem == scene:
                        self.scene_combo.setLayer(layer)
                        break

    def _scene(self) -> tuple[QgsRasterLayer, Path] | None:
        """The scene layer and the file cloudseg reads for it (None with a message)."""
        from ..backend.raster.reader import scene_path_from_gdal_source

        layer = self.scene_combo.currentLayer()
        if not isinstance(layer, QgsRasterLayer):
            self._say("pick the scene: a Sentinel-2 raster layer", Qgis.Warning)
            return None
        return layer, scene_path_from_gdal_source(layer.source())

    def _need_project(self) -> bool:
        if self.project is None:
            self._say("choose a label project (a .gpkg) first", Qgis.Warning)
            return False
        return True

    # -- proposing -----------------------------------------------------------------------
    def propose(self) -> BackendTask | None:
        """Segment with uncertainty (unless done with this model) and propose boxes."""
        from ..backend.active.labels import ensure_labels_layer
        from ..backend.active.propose import propose
        from ..backend.inference.segment import SegmentOptions, segment

        scene = self._scene()
        if scene is None or not self._need_project() or self._busy():
            return None
        layer, source = scene
        project, model = self.project, self.model_combo.currentData()
        box, count = self.box_spin.value(), self.count_spin.value()
        name = source.stem

        def work(progress: Callable[[float, str], None], cancelled: Callable[[], bool]) -> Any:
            import rasterio

            found = latest_run(project, name, model) if model else None
            if found is None:
                stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
                folder = runs_folder(project)
                folder.mkdir(parents=True, exist_ok=True)
                found = (
                    folder / f"{name}_{stamp}_mask.tif",
                    folder / f"{name}_{stamp}_uncertainty.tif",
                )
                segment(
                    source,
                    found[0],
                    SegmentOptions(model=model, uncertainty=found[1]),
                    progress=lambda p, m: progress(0.9 * p, m),
                    cancelled=cancelled,
                )
            if cancelled():
                raise CancelledError("cancelled")
            progress(92, "ranking boxes")
            proposals = propose(found[1], project, box, count, scene=name)
            with rasterio.open(found[1]) as ds:
                ensure_labels_layer(project, ds.crs)
            return found, proposals

        return self._start(f"Propose areas in {layer.name()}", work, self._proposed)

    def _proposed(self, task: BackendTask) -> None:
        if not self._finished(task):
            return
        (mask, doubt), proposals = task.result
        self._add_run_layers(mask, doubt)
        self._load_layers()
        self._pick_scene_and_model()
        self.current = None
        self.refresh()
        self._say(f"{len(proposals)} boxes proposed, most doubtful first", Qgis.Info)
        self.next_box()

    def _add_run_layers(self, mask: Path, doubt: Path | None) -> None:
        """Add a run's mask (and uncertainty heat map) to the project's group, once."""
        sources = {layer.source() for layer in QgsProject.instance().mapLayers().values()}
        scene = self.scene_combo.currentLayer()
        prefix = scene.name() if scene is not None else mask.stem
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
            added.append(layer)
        group = self._group()
        for layer in added:
            QgsProject.instance().addMapLayer(layer, False)
            group.addLayer(layer)  # below the proposals and labels

    # -- walking the boxes -------------------------------------------------------------
    def _features(self) -> list[Any]:
        if self.proposals is None:
            return []
        return sorted(
            self.proposals.getFeatures(), key=lambda f: (f["status"] != "todo", f["rank"])
        )

    def next_box(self) -> int | None:
        """Zoom to the next box to label (by rank) and select it; its fid, or None."""
        self._ensure_layers()
        todo = [f for f in self._features() if f["status"] == "todo"]
        if not todo:
            self.current = None
            self._say("no box left to label: fine-tune, or propose more", Qgis.Info)
            self.refresh()
            return None
        after = [f for f in todo if self.current is not None and f.id() > self.current]
        feature = min(after or todo, key=lambda f: f["rank"])
        self._go_to(feature)
        return self.current

    def _go_to(self, feature: Any) -> None:
        self.current = feature.id()
        self.proposals.selectByIds([feature.id()])
        canvas = self.iface.mapCanvas()
        with contextlib.suppress(AttributeError, RuntimeError):
            extent = feature.geometry().boundingBox()
            extent.scale(1.15)
            transform = canvas.mapSettings().layerExtentToOutputExtent(self.proposals, extent)
            canvas.setExtent(transform)
            canvas.refresh()
        if self.labels is not None:
            self.iface.setActiveLayer(self.labels)
        self.refresh()

    def _commit_labels(self) -> bool:
        """Save the analyst's edits on the labels layer (editing stays on)."""
        if self.labels is None or not self.labels.isEditable():
            return True
        if not self.labels.isModified():
            return True
        if self.labels.commitChanges(False):
            return True
        errors = "; ".join(self.labels.commitErrors())
        self._say(f"the labels could not be saved: {errors}", Qgis.Critical)
        return False

    def start_from_model(self) -> int:
        """Fill the current box with the model's mask as polygons; how many were added."""
        from ..backend.active.labels import start_from_model

        self._ensure_layers()
        if self.current is None or self.proposals is None:
            self._say("no box selected: press Next", Qgis.Warning)
            return 0
        feature = self.proposals.getFeature(self.current)
        found = latest_run(self.project, feature["scene"], feature["model"] or None)
        if found is None:
            self._say(
                f"no mask of {feature['model']} on {feature['scene']}: press Propose areas",
                Qgis.Warning,
            )
            return 0
        if not self._commit_labels():
            return 0
        try:
            added = start_from_model(self.project, found[0], int(feature["rank"]))
        except CloudsegError as exc:
            self._say(for_qgis(str(exc), DOCK), Qgis.Critical)
            return 0
        self._load_layers()  # the labels layer may be new
        if self.labels is not None:
            self.labels.reload()
            self.labels.triggerRepaint()
            self.iface.setActiveLayer(self.labels)
        self._say(f"{added} polygon(s) from {feature['model']}: fix what is wrong", Qgis.Info)
        return added

    def set_class(self, value: int | None) -> None:
        """New polygons on the labels layer get class ``value`` (and its name)."""
        card = self._card()
        if value is None or card is None:
            return
        names = {c.value: c.name for c in card.classes}
        if value not in names:
            return
        self.class_value = value
        button = self.class_group.button(value)
        if button is not None:
            button.setChecked(True)
        if self.labels is not None:
            fields = self.labels.fields()
            self.labels.setDefaultValueDefinition(
                fields.indexOf("class"), QgsDefaultValue(str(value))
            )
            name = names[value].replace("'", "''")
            self.labels.setDefaultValueDefinition(
                fields.indexOf("name"), QgsDefaultValue(f"'{name}'")
            )

    def mark(self, status: str) -> int | None:
        """Done (``labeled``) or Skip (``skipped``) the current box, then go to the next."""
        from ..backend.active.labels import set_status

        self._ensure_layers()
        if self.current is None:
            self._say("no box selected: press Next", Qgis.Warning)
            return None
        if status == "labeled" and not self._commit_labels():
            return None
        try:
            set_status(self.project, self.current, status)
        except CloudsegError as exc:
            self._say(for_qgis(str(exc), DOCK), Qgis.Critical)
            return None
        self.handled.append(self.current)
        self.proposals.reload()
        self.proposals.triggerRepaint()
        return self.next_box()

    def back(self) -> int | None:
        """Return to the box marked last: it is to label again (its labels stay)."""
        from ..backend.active.labels import set_status

        if not self.handled:
            self._say("nothing to go back to in this session", Qgis.Info)
            return None
        self._ensure_layers()
        fid = self.handled.pop()
        set_status(self.project, fid, "todo")
        self.proposals.reload()
        self._go_to(self.proposals.getFeature(fid))
        return fid

    # -- teaching ------------------------------------------------------------------------
    def fine_tune(self) -> BackendTask | None:
        """Fine-tune the model on the done boxes (a task); registers a new version."""
        from ..training.finetune import fine_tune

        scene = self._scene()
        if scene is None or not self._need_project() or self._busy():
            return None
        if not self._commit_labels():
            return None
        _, source = scene
        project, model, steps = (
            self.project,
            self.model_combo.currentData(),
            self.steps_spin.value(),
        )

        def work(progress: Callable[[float, str], None], cancelled: Callable[[], bool]) -> Any:
            return fine_tune(
                project, source, model, steps=steps, progress=progress, cancelled=cancelled
            )

        return self._start(f"Fine-tune on {project.name}", work, self._fine_tuned)

    def _fine_tuned(self, task: BackendTask) -> None:
        if not self._finished(task):
            return
        result = task.result
        entry = result.round
        # The judge decides what is current; a version kept aside is listed, not selected.
        self.load_models(select=result.current)
        self.model_registered.emit(result.current)
        self.refresh()
        where = f"{entry.held_out_boxes} held-out box(es)"
        if result.adopted:
            self._say(f"{result.verdict.reason} ({where}); Re-run to see it", Qgis.Success)
        else:
            self._say(
                f"{result.verdict.reason} ({where}). {result.model} stays in the model list "
                "if you want it anyway; label more boxes and fine-tune again",
                Qgis.Warning,
            )

    def rerun(self) -> BackendTask | None:
        """Segment the scene with the chosen model, beside the earlier masks (a task)."""
        from ..backend.inference.segment import SegmentOptions, segment

        scene = self._scene()
        if scene is None or not self._need_project() or self._busy():
            return None
        layer, source = scene
        project, model = self.project, self.model_combo.currentData()
        name = source.stem

        def work(progress: Callable[[float, str], None], cancelled: Callable[[], bool]) -> Any:
            stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            folder = runs_folder(project)
            folder.mkdir(parents=True, exist_ok=True)
            mask = folder / f"{name}_{stamp}_mask.tif"
            doubt = folder / f"{name}_{stamp}_uncertainty.tif"
            result = segment(
                source,
                mask,
                SegmentOptions(model=model, uncertainty=doubt),
                progress=progress,
                cancelled=cancelled,
            )
            return mask, doubt, result

        return self._start(f"Re-run on {layer.name()}", work, self._rerun_done)

    def _rerun_done(self, task: BackendTask) -> None:
        if not self._finished(task):
            return
        mask, doubt, result = task.result
        self._add_run_layers(mask, doubt)
        cloud = result.class_percent.get("cloud", 0.0)
        self._say(f"{result.model}: {cloud:.1f} % cloud, beside the earlier masks", Qgis.Info)

    # -- tasks ---------------------------------------------------------------------------
    def _busy(self) -> bool:
        if self.task is not None:
            self._say("a task is running; cancel it or wait", Qgis.Warning)
            return True
        return False

    def _start(
        self, what: str, work: Callable[..., Any], done: Callable[[BackendTask], None]
    ) -> BackendTask:
        self.task = BackendTask(f"cloudseg: {what}", work, done)
        self.task.progressChanged.connect(self._progress)
        self.progress.setValue(0)
        self.status_label.setText(f"{what}...")
        self.cancel_button.setEnabled(True)
        self._enable()
        QgsApplication.taskManager().addTask(self.task)
        return self.task

    def _progress(self, value: float) -> None:
        self.progress.setValue(int(value))
        if self.task is not None and self.task.message:
            self.status_label.setText(self.task.message)

    def _finished(self, task: BackendTask) -> bool:
        """Common end of a task: True when it succeeded (else the message is shown)."""
        self.task = None
        self.cancel_button.setEnabled(False)
        self._enable()
        if task.result is not None and not task.isCanceled():
            self.progress.setValue(100)
            return True
        if task.error:
            self._say(for_qgis(task.error, DOCK), Qgis.Critical)
        else:
            self._say("cancelled; the project is as it was", Qgis.Info)
        self.progress.setValue(0)
        return False

    def cancel(self) -> None:
        """Cancel the running task."""
        if self.task is not None:
            self.task.cancel()
            self.status_label.setText("cancelling...")

    def _enable(self) -> None:
        idle = self.task is None
        for button in (self.propose_button, self.finetune_button, self.rerun_button):
            button.setEnabled(idle)

    # -- what the dock shows -----------------------------------------------------------
    def refresh(self) -> None:
        """Progress (done / proposed, labeled km²) and the round history."""
        from ..backend.active.history import read_rounds

        if self.project is None:
            self.progress_label.setText("no label project open")
            return
        self._ensure_layers()
        features = self._features() if self.proposals is not None else []
        done = [f for f in features if f["status"] == "labeled"]
        skipped = sum(f["status"] == "skipped" for f in features)
        area = QgsDistanceArea()
        if self.proposals is not None:
            area.setSourceCrs(self.proposals.crs(), QgsCoordinateTransformContext())
            area.setEllipsoid("EPSG:7030")
        km2 = sum(area.measureArea(f.geometry()) for f in done) / 1e6
        current = ""
        if self.current is not None and self.proposals is not None:
            feature = self.proposals.getFeature(self.current)
            current = f" Box {feature['rank']} (doubt {feature['score']:.0f} %)."
        self.progress_label.setText(
            f"Done {len(done)} / {len(features) - skipped} proposed"
            + (f", {skipped} skipped" if skipped else "")
            + f"; {km2:.2f} km² labeled.{current}"
        )
        self._show_rounds(read_rounds(self.project))

    def _show_rounds(self, rounds: list[Any]) -> None:
        self.history_table.setRowCount(0)
        for entry in reversed(rounds):
            row = self.history_table.rowCount()
            self.history_table.insertRow(row)
            classes = [name for name in entry.iou_after if name != "mean"]
            per_class = "\n".join(
                f"{name}: {_iou(entry.iou_before.get(name))} -> {_iou(entry.iou_after.get(name))}"
                + _pixels(entry.scores.get(name))
                for name in classes
            )
            short = "\n".join(
                f"{_short(name)} {_iou(entry.iou_before.get(name))} -> "
                f"{_iou(entry.iou_after.get(name))}"
                for name in classes
                if entry.iou_after.get(name) is not None
            )
            values = [
                str(entry.round),
                entry.model + ("" if entry.adopted else "\n(kept aside)"),
                f"{entry.train_boxes} + {entry.held_out_boxes}",
                f"mean {_iou(entry.iou_before.get('mean'))} -> "
                f"{_iou(entry.iou_after.get('mean'))}\n{short}",
                f"{entry.label_minutes:.0f} + {entry.train_minutes:.1f}",
            ]
            tips = [
                f"round {entry.round}, {entry.created} by {entry.who}",
                f"from {entry.init_model} (base {entry.base_model})\n{entry.model_path}\n"
                + (entry.verdict or ""),
                f"{entry.train_boxes} trained on, {entry.held_out_boxes} held out",
                "held-out IoU before -> after: the mean over the classes with enough "
                f"pixels to judge, then per class\n{per_class}\n{entry.verdict}",
                "minutes labeling + minutes fine-tuning",
            ]
            for column, (value, tip) in enumerate(zip(values, tips, strict=True)):
                item = QTableWidgetItem(value)
                item.setToolTip(tip)
                self.history_table.setItem(row, column, item)
        self.history_table.resizeRowsToContents()

    def _say(self, text: str, level: Qgis.MessageLevel) -> None:
        self.status_label.setText(text)
        QgsMessageLog.logMessage(text, logbridge.LOG_TAG, level)
        if level in (Qgis.Warning, Qgis.Critical, Qgis.Success):
            self.iface.messageBar().pushMessage("cloudseg", text, level, 8)


def _short(name: str) -> str:
    """A class name for a narrow column: ``cloud shadow`` -> ``shadow``."""
    return name.split()[-1]


def _pixels(score: dict[str, Any] | None) -> str:
    """`` (N px)`` and whether the class was judged, for a tooltip."""
    if not score:
        return ""
    return f" ({score['pixels']} px" + ("" if score.get("judged") else ", too few to judge") + ")"


def _iou(value: Any) -> str:
    """An IoU for people: three decimals, or n/a."""
    if isinstance(value, dict):
        value = value.get("mean")
    return f"{value:.3f}" if isinstance(value, float) else "n/a"


__all__ = ["BackendTask", "LabelDock", "latest_run", "runs_folder"]

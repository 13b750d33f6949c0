"""The label dock's widgets, laid out (the dock's behaviour is in :mod:`.labeldock`).

Plain code in the role of a Qt Designer form: :meth:`LabelDockUi.setup_ui` creates and
lays out every widget of the "Propose and label" tab and names them; it connects nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from qgis.core import QgsMapLayerProxyModel
from qgis.gui import QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QKeySequence
from qgis.PyQt.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QShortcut,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..training.adapt import DEFAULT_RECIPE, RECIPES
from .roundtable import RoundsTable

#: Default box edge: an area an analyst labels in a minute or two (1.3 km at 10 m).
DEFAULT_BOX = 128
DEFAULT_COUNT = 20


def _button(text: str, tip: str) -> QPushButton:
    button = QPushButton(text)
    button.setToolTip(tip)
    return button


def _spin(low: int, high: int, value: int, tip: str, suffix: str = "") -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(low, high)
    spin.setValue(value)
    spin.setSuffix(suffix)
    spin.setToolTip(tip)
    return spin


class LabelDockUi:
    """The widgets of the label tab (a mixin of the dock: they become its attributes)."""

    def setup_ui(self, body: QWidget) -> None:
        """Create the widgets and lay them out in ``body``."""
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
        form.addRow("Model", self.model_combo)
        self.project_widget = QgsFileWidget()
        self.project_widget.setStorageMode(QgsFileWidget.SaveFile)
        self.project_widget.setConfirmOverwrite(False)  # an existing project is opened
        self.project_widget.setFilter("GeoPackage (*.gpkg)")
        self.project_widget.setToolTip(
            "One GeoPackage per label project: proposals, labels and the round history. "
            "An existing one is opened where it was left; a new name creates one."
        )
        form.addRow("Label project", self.project_widget)
        sizes = QHBoxLayout()
        self.box_spin = _spin(16, 2048, DEFAULT_BOX, "Box edge: an area labeled in a minute or two")
        self.box_spin.setSuffix(" px")
        self.count_spin = _spin(1, 500, DEFAULT_COUNT, "How many boxes to propose")
        for widget in (QLabel("Box"), self.box_spin, QLabel("Boxes"), self.count_spin):
            sizes.addWidget(widget)
        form.addRow("Proposals", sizes)
        layout.addLayout(form)

        self.propose_button = _button(
            "Propose areas",
            "Segment the scene with an uncertainty layer and propose the boxes where the "
            "model is least sure (never over a box labeled or skipped)",
        )
        layout.addWidget(self.propose_button)
        walk = QHBoxLayout()
        self.back_button = _button("Back", "Return to the box marked last; it is to label again")
        self.next_button = _button(
            "Next",
            "Zoom to the next box to label (box 1 after Propose areas) and outline it; the "
            "model's layers are hidden so the scene shows in true colour (tick them in the "
            "layer tree to compare)",
        )
        self.skip_button = _button("Skip", "Never propose this box again")
        self.done_button = _button(
            "Done", "The box is labeled: pixels under no polygon inside it are clear"
        )
        for button in (self.back_button, self.next_button, self.skip_button, self.done_button):
            walk.addWidget(button)
        layout.addLayout(walk)
        self.start_button = _button(
            "Start from the model",
            "Fill the box with the model's mask as polygons: fix what is wrong with the "
            "digitizing tools (add, reshape, split, vertex tool, delete)",
        )
        layout.addWidget(self.start_button)
        self.class_buttons = ClassButtons(body)
        layout.addWidget(self.class_buttons.hint)
        layout.addLayout(self.class_buttons.row)
        self.progress_label = QLabel("no label project open")
        self.progress_label.setWordWrap(True)
        layout.addWidget(self.progress_label)

        teach = QHBoxLayout()
        recipe = RECIPES[DEFAULT_RECIPE]
        self.steps_spin = _spin(
            1,
            1000,
            recipe.steps,
            f"Training steps of a round (recipe {recipe.name}: only the segmentation head is "
            "trained, kept close to the model's own predictions where nobody labeled)",
            " steps",
        )
        self.finetune_button = _button(
            "Fine-tune",
            "Store the done boxes, hold about a quarter out, fine-tune the model from its "
            "weights and judge the new version on the held-out boxes: it becomes the current "
            "model only if no class loses more than 0.01 IoU there and the mean rises by 0.01",
        )
        self.rerun_button = _button(
            "Re-run", "Segment the scene with the model above, beside the old mask"
        )
        for widget in (self.steps_spin, self.finetune_button, self.rerun_button):
            teach.addWidget(widget)
        layout.addLayout(teach)

        tasks = QHBoxLayout()
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.cancel_button = QPushButton("Cancel")
        tasks.addWidget(self.progress, 1)
        tasks.addWidget(self.cancel_button)
        layout.addLayout(tasks)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)
        layout.addWidget(QLabel("Rounds (IoU on the held-out boxes)"))
        self.history_table = RoundsTable()
        layout.addWidget(self.history_table, 1)


class ClassButtons:
    """One checkable button per class of the model (at most 4), and keys 1, 2... for them.

    ``picked(value)`` is called with the class value when a button is clicked or its
    key pressed (keys only while ``active()`` says the dock is shown). ``hint`` names
    the keys there are: "keys 1-3" for three classes.
    """

    def __init__(self, parent: QWidget) -> None:
        self.row = QHBoxLayout()
        self.hint = QLabel("Class of the next polygon")
        self.group = QButtonGroup(parent)
        self.group.setExclusive(True)
        self.shortcuts: list[QShortcut] = []
        #: ``key(number)``: what pressing key 1-4 does (set by :meth:`connect`).
        self.key: Callable[[int], None] = lambda number: None

    def fill(self, classes: list[Any]) -> None:
        """Buttons for ``classes`` (a model card's), replacing the earlier ones."""
        for button in self.group.buttons():
            self.group.removeButton(button)
            self.row.removeWidget(button)
            button.deleteLater()
        for key, info in enumerate(classes[:4], start=1):
            button = QPushButton(f"{key} {info.name}")
            button.setCheckable(True)
            button.setObjectName(f"cloudsegClass{info.value}")
            button.setStyleSheet(f"border-left: 6px solid {info.color[:7]};")
            button.setToolTip(f"New polygons get class {info.value} ({info.name}); key {key}")
            self.group.addButton(button, info.value)
            self.row.addWidget(button)
        count = len(self.group.buttons())
        keys = "" if not count else " (key 1)" if count == 1 else f" (keys 1-{count})"
        self.hint.setText(f"Class of the next polygon{keys}")

    def check(self, value: int) -> None:
        """Show ``value``'s button as the one chosen."""
        button = self.group.button(value)
        if button is not None:
            button.setChecked(True)

    def connect(
        self, window: QWidget, picked: Callable[[int], None], active: Callable[[], bool]
    ) -> None:
        """Call ``picked`` on a click, and on its number key (1-N) in ``window`` while ``active()``.

        A key with no button (4 for three classes) does nothing.
        """
        self.group.idClicked.connect(picked)

        def key(number: int) -> None:
            buttons = self.group.buttons()
            if active() and 0 < number <= len(buttons):
                picked(self.group.id(buttons[number - 1]))

        self.key = key
        for number in range(1, 5):
            shortcut = QShortcut(QKeySequence(str(number)), window)
            shortcut.setContext(Qt.WindowShortcut)
            shortcut.activated.connect(lambda number=number: key(number))
            self.shortcuts.append(shortcut)

    def disconnect(self) -> None:
        """Remove the keys (before the dock is deleted)."""
        for shortcut in self.shortcuts:
            with contextlib.suppress(RuntimeError):
                shortcut.setEnabled(False)
                shortcut.deleteLater()
        self.shortcuts.clear()


__all__ = ["DEFAULT_BOX", "DEFAULT_COUNT", "ClassButtons", "LabelDockUi"]

"""The label dock's table of fine-tuning rounds: held-out IoU before and after, per class."""

from __future__ import annotations

from typing import Any

from qgis.PyQt.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem

from ..backend.active.history import Round

COLUMNS = ["Round", "Model", "Boxes", "Held-out IoU", "Minutes"]


class RoundsTable(QTableWidget):
    """One row per round, newest first; tooltips give every figure and the verdict."""

    def __init__(self) -> None:
        super().__init__(0, len(COLUMNS))
        self.setHorizontalHeaderLabels(COLUMNS)
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.Stretch)
        self.verticalHeader().setVisible(False)
        self.setEditTriggers(QAbstractItemView.NoEditTriggers)

    def show_rounds(self, rounds: list[Round]) -> None:
        """Fill the table with ``rounds`` (first first), newest on top."""
        self.setRowCount(0)
        for entry in reversed(rounds):
            row = self.rowCount()
            self.insertRow(row)
            for column, (value, tip) in enumerate(_cells(entry)):
                item = QTableWidgetItem(value)
                item.setToolTip(tip)
                self.setItem(row, column, item)
        self.resizeRowsToContents()


def _cells(entry: Round) -> list[tuple[str, str]]:
    """The row of a round: (text, tooltip) per column."""
    before, after = entry.iou_before, entry.iou_after
    classes = [name for name in after if name != "mean"]
    per_class = "\n".join(
        f"{name}: {_iou(before.get(name))} -> {_iou(after.get(name))}"
        + _pixels(entry.scores.get(name))
        for name in classes
    )
    short = "\n".join(
        f"{_short(name)} {_iou(before.get(name))} -> {_iou(after.get(name))}"
        for name in classes
        if after.get(name) is not None
    )
    return [
        (str(entry.round), f"round {entry.round}, {entry.created} by {entry.who}"),
        (
            entry.model + ("" if entry.adopted else "\n(kept aside)"),
            f"from {entry.init_model} (base {entry.base_model})\n{entry.model_path}\n"
            + (entry.verdict or ""),
        ),
        (
            f"{entry.train_boxes} + {entry.held_out_boxes}",
            f"{entry.train_boxes} trained on, {entry.held_out_boxes} held out",
        ),
        (
            f"mean {_iou(before.get('mean'))} -> {_iou(after.get('mean'))}\n{short}",
            "held-out IoU before -> after: the mean over the classes with enough pixels to "
            f"judge, then per class\n{per_class}\n{entry.verdict}",
        ),
        (
            f"{entry.label_minutes:.0f} + {entry.train_minutes:.1f}",
            "minutes labeling + minutes fine-tuning",
        ),
    ]


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

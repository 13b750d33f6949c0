"""Model cards: one JSON document that says what a model needs and what it returns.

A card travels with its model: embedded in an ONNX file's metadata (key
:data:`ONNX_CARD_KEY`), stored inside a torch checkpoint (``{"card": ..., "state_dict":
...}``) or beside it as ``<checkpoint>.card.json``. Built-in models have cards of our
own under ``resources/models``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ModelError
from ..raster.bands import canonical_band

ONNX_CARD_KEY = "cloudseg.card"
PRODUCT_LEVELS = ("L1C", "L2A", "any")
#: Metrics configurations that describe a model as it runs by default: built-in cards'
#: ``default-fp32``, trained models' ``validation``, fine-tuned versions' ``after``
#: (their IoU on the round's held-out boxes).
DEFAULT_CONFIGS = (None, "default-fp32", "validation", "after")
#: The project's class colours (the built-in cards'), for classes that record none.
CLASS_COLORS = {
    "clear": "#2e7d32",
    "cloud": "#00e5ff",
    "thin cloud": "#80deea",
    "shadow": "#7b1fa2",
    "other": "#9e9e9e",
}


def class_kind(name: str) -> str | None:
    """What a class is, by its name: ``cloud`` (thick, thin, cirrus), ``shadow``, or None.

    The one rule for every place that counts cloud and shadow (reports, batch records,
    the valid mask, training's balanced sampler).
    """
    name = name.lower()
    if "shadow" in name:
        return "shadow"
    if "cloud" in name or "cirrus" in name:
        return "cloud"
    return None


def class_color(name: str, color: str | None = None) -> str:
    """A class's colour: its own ``color`` if it has one, else the project's for its kind.

    Cloud is cyan, thin cloud and cirrus light cyan, cloud shadow purple, clear green
    (:data:`CLASS_COLORS`); a class of another kind is grey. Stores ingested from a
    ``data.json`` that names classes without colours are drawn like the models' masks.
    """
    if color:
        return color
    kind = class_kind(name)
    if kind == "cloud":
        thin = any(word in name.lower() for word in ("thin", "cirrus"))
        return CLASS_COLORS["thin cloud" if thin else "cloud"]
    if kind == "shadow":
        return CLASS_COLORS["shadow"]
    return CLASS_COLORS["clear" if name.lower() == "clear" else "other"]


@dataclass(frozen=True)
class ClassInfo:
    """One output class of a model.

    Attributes:
        value: The pixel value in the class raster.
        name: Class name (``cloud``).
        color: ``#RRGGBB`` or ``#RRGGBBAA``.
    """

    value: int
    name: str
    color: str

    def rgba(self) -> tuple[int, int, int, int]:
        """Return the color as an (r, g, b, a) tuple of 0-255 ints."""
        text = self.color.lstrip("#")
        if len(text) == 6:
            text += "ff"
        return tuple(int(text[i : i + 2], 16) for i in range(0, 8, 2))  # type: ignore[return-value]


def normalize(reflectance: Any, mean: Any, std: Any) -> Any:
    """Reflectance ``(..., bands, rows, cols)`` as a model's input: ``(x - mean) / std``.

    ``mean`` and ``std`` hold one value per band (float32). A model's card normalises its
    input with its own (:meth:`ModelCard.normalize`); training normalises with the
    statistics it then writes into the new model's card, through this same function.
    """
    import numpy as np

    mean = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
    return (reflectance - mean) / std


@dataclass(frozen=True)
class ModelCard:
    """What a model needs (bands, scale, resolution) and what it returns (classes).

    Attributes:
        name: Registry name, unique (``ukis-csmask-6b-l1c``).
        version: Model version.
        description: One paragraph for users.
        license: SPDX id of the weights' license.
        source: Where the weights come from (package, file, url, citation).
        architecture: ``{"name": "Unet", "encoder": "efficientnet-b4", ...}``.
        format: ``"onnx"`` or ``"torch"``.
        bands: Sentinel-2 band names in the order the model takes them.
        product_level: ``"L1C"``, ``"L2A"`` or ``"any"``.
        normalization: ``{"mean": [...], "std": [...]}`` applied to reflectance (0-1).
        resolution_m: Ground sampling distance the model was trained at.
        tile_size: Input tile edge in pixels.
        overlap: Overlap of neighbouring tiles in pixels.
        output: ``"logits"`` or ``"probabilities"``.
        classes: Output classes in channel order.
        metrics: Measured metrics, each with the data and the run configuration they
            were measured with (see :func:`metric_entry`).
    """

    name: str
    version: str
    bands: tuple[str, ...]
    product_level: str
    resolution_m: float
    tile_size: int
    overlap: int
    classes: tuple[ClassInfo, ...]
    normalization: dict[str, list[float]]
    format: str = "onnx"
    output: str = "logits"
    description: str = ""
    license: str = ""
    source: dict[str, Any] = field(default_factory=dict)
    architecture: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        problems = []
        if self.product_level not in PRODUCT_LEVELS:
            problems.append(f"product_level must be one of {', '.join(PRODUCT_LEVELS)}")
        if self.format not in ("onnx", "torch"):
            problems.append("format must be 'onnx' or 'torch'")
        if self.output not in ("logits", "probabilities"):
            problems.append("output must be 'logits' or 'probabilities'")
        for key in ("mean", "std"):
            if len(self.normalization.get(key, ())) != len(self.bands):
                problems.append(f"normalization.{key} needs one value per band")
        if any(s <= 0 for s in self.normalization.get("std", ())):
            problems.append("normalization.std must be positive")
        if not 0 <= self.overlap < self.tile_size // 2 + 1 or self.tile_size < 16:
            problems.append("tile_size must be >= 16 and overlap at most half of it")
        if [c.value for c in self.classes] != list(range(len(self.classes))):
            problems.append("class values must be 0, 1, 2... in channel order")
        if self.resolution_m <= 0:
            problems.append("resolution_m must be positive")
        if problems:
            raise ModelError(f"invalid model card {self.name!r}: {'; '.join(problems)}")

    def normalize(self, reflectance: Any) -> Any:
        """Reflectance ``(..., bands, rows, cols)`` as the model's input: ``(x - mean) / std``.

        The one place a model's input is made from reflectance: inference, fine-tuning
        and training's card statistics all go through the card. NaN stays NaN (the caller
        decides what nodata becomes); float32 in gives float32 out.
        """
        return normalize(reflectance, self.normalization["mean"], self.normalization["std"])

    def band_statistics(self, band: str) -> tuple[float, float]:
        """The mean and standard deviation the model normalises ``band`` with."""
        index = self.bands.index(band)
        return self.normalization["mean"][index], self.normalization["std"][index]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        """Build a card from parsed JSON.

        Raises:
            ModelError: If a field is missing or invalid.
        """
        try:
            fields = dict(data)
            fields["bands"] = tuple(canonical_band(b) for b in data["bands"])
            fields["classes"] = tuple(ClassInfo(**c) for c in data["classes"])
            fields["product_level"] = (
                "any" if data["product_level"].lower() == "any" else data["product_level"].upper()
            )
            return cls(**fields)
        except (KeyError, TypeError) as exc:
            name = data.get("name", "?") if isinstance(data, dict) else "?"
            raise ModelError(f"invalid model card {name!r}: missing or bad field {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        """Parse a card from JSON text.

        Raises:
            ModelError: If the text is not a valid card.
        """
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ModelError(f"model card is not valid JSON: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """Return the card as JSON-serialisable data."""
        data = asdict(self)
        data["bands"] = list(self.bands)
        return data

    def to_json(self) -> str:
        """Return the card as indented JSON text."""
        return json.dumps(self.to_dict(), indent=2)

    def class_names(self) -> list[str]:
        """Return the class names in value order."""
        return [c.name for c in self.classes]

    def default_metrics(self) -> list[dict[str, Any]]:
        """The metrics of the model as it runs by default, in card order.

        Built-in cards' ``default-fp32`` entries; trained models' ``validation``;
        fine-tuned versions' ``after`` (IoU on the round's held-out boxes).
        """
        return [m for m in self.metrics if m.get("config") in DEFAULT_CONFIGS]

    @staticmethod
    def metric_iou(entry: dict[str, Any]) -> dict[str, Any]:
        """Per-class IoU of a metrics entry (``per_class_iou`` in cards of before 0.1)."""
        return entry.get("iou") or entry.get("per_class_iou") or {}

    def headline(self) -> str:
        """One line of measured accuracy: the first default or validation entry's IoU.

        Returns:
            ``cloud IoU 0.761, cloud shadow IoU 0.703 on ukis-s2-l1c (...)``, or ``""``
            when the card has no such metrics.
        """
        for entry in self.default_metrics():
            iou = self.metric_iou(entry)
            shown = [
                f"{name} IoU {iou[name]:.3f}"
                for name in self.class_names()[1:]
                if isinstance(iou.get(name), (int, float))
            ]
            if shown:
                where = entry.get("dataset") or entry.get("data", "")
                mismatch = " (another product level)" if entry.get("level_mismatch") else ""
                return f"{', '.join(shown)} on {where}{mismatch}"
        return ""

    def summary(self) -> dict[str, Any]:
        """Return what ``cloudseg models`` lists for this model."""
        return {
            "name": self.name,
            "version": self.version,
            "format": self.format,
            "bands": list(self.bands),
            "product_level": self.product_level,
            "resolution_m": self.resolution_m,
            "tile_size": self.tile_size,
            "classes": [asdict(c) for c in self.classes],
            "license": self.license,
            "accuracy": self.headline(),
            "metrics": self.metrics,
        }


def check_network_shape(
    card: ModelCard, in_channels: int | None, out_channels: int | None, where: str
) -> None:
    """Refuse a card that does not describe its network: other band or class counts.

    Checked when a model is loaded (an ONNX file's declared input and output shapes),
    so that every command refuses such a file in one line before it reads a pixel.

    Args:
        card: The card.
        in_channels: Channels the network takes (None where the file does not say).
        out_channels: Channels it returns, one per class (None where it does not say).
        where: What to call the model file.

    Raises:
        ModelError: If a count differs from the card's.
    """
    if out_channels is not None and out_channels != len(card.classes):
        raise ModelError(
            f"{where}: the network returns {out_channels} class channel(s) but its card "
            f"{card.name!r} names {len(card.classes)} class(es) "
            f"({', '.join(card.class_names())}); fix the card's classes"
        )
    if in_channels is not None and in_channels != len(card.bands):
        raise ModelError(
            f"{where}: the network takes {in_channels} band(s) but its card {card.name!r} "
            f"names {len(card.bands)} ({', '.join(card.bands)}); fix the card's bands"
        )


def metric_entry(
    dataset: str, data: str, config: str, metrics: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """A card's ``metrics`` entry from evaluation metrics (``metrics_from_confusion``).

    Args:
        dataset: Short id of the data (``ukis-s2-l1c``).
        data: What the data is, for people.
        config: The run configuration (``default-fp32``, ``preview``, ``validation``...).
        metrics: ``{"per_class": {name: {"iou", "f1", "precision", "recall"}}, "pixels",
            "mean_iou"...}``.
        **extra: More keys (``reference``, ``measured``, ``scored``...).

    Returns:
        ``{"dataset", "data", "config", "pixels", "mean_iou", "iou", "f1", "precision",
        "recall", ...extra}``, values rounded to 4 decimals.
    """

    def rounded(value: Any) -> Any:
        return round(value, 4) if isinstance(value, float) else value

    per_class = metrics.get("per_class", {})
    entry: dict[str, Any] = {
        "dataset": dataset,
        "data": data,
        "config": config,
        "pixels": metrics.get("pixels"),
        "mean_iou": rounded(metrics.get("mean_iou")),
    }
    for key in ("iou", "f1", "precision", "recall"):
        entry[key] = {name: rounded(values.get(key)) for name, values in per_class.items()}
    return entry | extra

"""What a label round trains on and how it measures a new version.

The round itself (store, split, train, judge, record, re-run) is
:class:`cloudseg.training.label_round.LabelRound`; this module gives it its data and its
measurements, all on the scene's grid:

- the training windows of the trained boxes, read back from the label store as model
  input and labels (:func:`training_windows`), and unlabeled windows of the scene away
  from the held-out boxes for the recipe's distillation (:func:`unlabeled_windows`);
- the held-out boxes' labels (:func:`held_out_windows`) and a model's confusion matrix
  on them, each box segmented with the scene around it by the engine and tiling of
  ``cloudseg segment`` (:func:`held_out_confusion`);
- the parts of the scene where the round checks what a version changes outside the
  boxes (:func:`check_windows`, :func:`scene_before`, :func:`scene_change`).

How the network is trained is the recipe's (:mod:`.adapt`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from ..backend.active.judge import SceneChange
from ..backend.models.cards import ModelCard
from ..backend.models.registry import load_model
from ..backend.store.keys import IGNORE

#: Unlabeled windows of the scene used for distillation, per trained box (at most).
UNLABELED_PER_BOX = 1
#: Tiles of the scene (at most) where a round checks what a new version changes outside
#: the labeled boxes (see :class:`cloudseg.backend.active.judge.SceneChange`).
CHECK_WINDOWS = 6


def normalized(reflectance: np.ndarray, card: ModelCard) -> np.ndarray:
    """Reflectance ``(..., bands, rows, cols)`` as the card's model input; NaN -> 0."""
    return np.nan_to_num(card.normalize(reflectance.astype(np.float32)), nan=0.0)


def _overlap(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    """Whether two squares ``(row, col, size)`` share a pixel."""
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[2] and b[1] < a[1] + a[2]


def unlabeled_windows(
    reader: Any,
    card: ModelCard,
    size: int,
    avoid: list[tuple[int, int, int]],
    count: int,
    seed: int,
) -> np.ndarray:
    """``count`` windows of the scene that overlap no held-out box, normalized."""
    rng = np.random.default_rng(seed)
    rows, cols = reader.height, reader.width
    if count <= 0 or rows < size or cols < size:
        return np.zeros((0, len(card.bands), size, size), np.float32)
    found = []
    for _ in range(50 * count):
        if len(found) == count:
            break
        r, c = int(rng.integers(0, rows - size + 1)), int(rng.integers(0, cols - size + 1))
        if any(_overlap((r, c, size), other) for other in avoid):
            continue
        window = reader.read(list(card.bands), r, c, size, size)
        if np.isnan(window).mean() > 0.5:
            continue
        found.append(normalized(window, card))
    return np.stack(found) if found else np.zeros((0, len(card.bands), size, size), np.float32)


def _window_runner(model: str, network: Any = None) -> tuple[Any, Any, Any]:
    """The model loaded as a round runs it: its card, run options and a float32 torch runner."""
    from ..backend.inference.options import RunOptions
    from ..backend.inference.runners import TorchRunner

    loaded = load_model(model)
    options = RunOptions(model=model, device="cpu", precision="fp32", runtime="torch")
    return loaded.card, options, TorchRunner(loaded, "cpu", "fp32", network=network)


def _predict_window(
    card: ModelCard,
    options: Any,
    runner: Any,
    reader: Any,
    row: int,
    col: int,
    size: int,
    width: int | None = None,
) -> Any:
    """A model's prediction of a part of the scene, with half a tile around it.

    The part (``size`` rows by ``width`` columns; a square where ``width`` is None) is
    segmented in a window of the scene that reaches half a tile beyond it, by the same
    engine and tiling as ``cloudseg segment``.

    Returns:
        The :class:`~cloudseg.backend.inference.engine.Prediction` cropped to the part.
    """
    from ..backend.inference.engine import ArrayScene, predict

    height, width = size, size if width is None else width
    tile, _ = options.tiling(card)
    margin = tile // 2
    bands = list(card.bands)
    r0, c0 = max(row - margin, 0), max(col - margin, 0)
    r1, c1 = min(row + height + margin, reader.height), min(col + width + margin, reader.width)
    image = reader.read(bands, r0, c0, r1 - r0, c1 - c0)
    prediction = predict(ArrayScene(image, bands, reader.resolution_m), options, runner)
    rows = slice(row - r0, row - r0 + height)
    cols = slice(col - c0, col - c0 + width)
    return replace(
        prediction,
        probabilities=prediction.probabilities[:, rows, cols],
        nodata=prediction.nodata[rows, cols],
    )


def held_out_confusion(
    model: str,
    reader: Any,
    windows: list[tuple[int, int, int, np.ndarray]],
    classes: int,
    network: Any = None,
) -> np.ndarray:
    """Confusion matrix of a model on the held-out boxes, segmented with the scene around them.

    Each box is segmented in a window of the scene that reaches half a tile beyond it, by
    the same engine and tiling as ``cloudseg segment``, in float32 torch: both models of
    a round run the same way, so only their weights differ.

    Args:
        model: The model's name or file (its card: bands, tiling, normalization).
        reader: The scene, open.
        windows: ``(row, col, size, labels)`` of each held-out window.
        classes: Number of classes.
        network: The model's network already in memory (None: loaded from ``model``).
    """
    from .metrics import confusion_matrix

    card, options, runner = _window_runner(model, network)
    matrix = np.zeros((classes, classes), np.int64)
    for row, col, size, labels in windows:
        inside = _predict_window(card, options, runner, reader, row, col, size).classes()
        matrix += confusion_matrix(labels, inside, classes)
    return matrix


def _starts(length: int, size: int) -> list[int]:
    """Starts of ``size`` windows that cover ``length`` pixels (the last one flush with the end)."""
    starts = list(range(0, length - size + 1, size))
    return starts if starts[-1] == length - size else [*starts, length - size]


#: ``(row, col, height, width)`` of a part of the scene.
Area = tuple[int, int, int, int]


def check_windows(reader: Any, size: int, count: int, seed: int) -> list[Area]:
    """Parts ``(row, col, height, width)`` where a round checks what a new version does.

    A scene no larger than ``count`` tiles (a chip, or half of one) is checked whole, in
    one part segmented as ``cloudseg segment`` would; a larger one in ``count`` of the
    tiles that cover it, at random. Labeled boxes may lie inside; :func:`scene_before`
    leaves their pixels out (see :class:`cloudseg.backend.active.judge.SceneChange`).
    """
    if reader.height * reader.width <= count * size * size:
        return [(0, 0, reader.height, reader.width)]
    size = min(size, reader.height, reader.width)
    grid = [
        (r, c, size, size)
        for r in _starts(reader.height, size)
        for c in _starts(reader.width, size)
    ]
    picked = np.random.default_rng(seed).choice(len(grid), min(count, len(grid)), replace=False)
    return [grid[i] for i in sorted(picked)]


def _labeled_pixels(window: Area, labeled: list[tuple[int, int, int]]) -> np.ndarray:
    """The pixels of ``window`` that lie in any of the ``labeled`` boxes ``(row, col, size)``."""
    row, col, height, width = window
    inside = np.zeros((height, width), bool)
    for r, c, s in labeled:
        r0, c0 = max(r - row, 0), max(c - col, 0)
        r1, c1 = min(r + s - row, height), min(c + s - col, width)
        if r0 < r1 and c0 < c1:
            inside[r0:r1, c0:c1] = True
    return inside


def scene_before(
    model: str,
    reader: Any,
    windows: list[Area],
    network: Any = None,
    labeled: list[tuple[int, int, int]] | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The current model's probabilities on each check window, and the pixels left out.

    Left out: nodata, and every labeled box ``(row, col, size)`` in ``labeled`` (there a
    version may change what the labels taught it). The context stored around a box is
    checked: it is unlabeled, and the recipe holds the version to the model there.
    """
    card, options, runner = _window_runner(model, network)
    kept = []
    for row, col, height, width in windows:
        prediction = _predict_window(card, options, runner, reader, row, col, height, width)
        left_out = prediction.nodata | _labeled_pixels((row, col, height, width), labeled or [])
        kept.append((prediction.probabilities, left_out))
    return kept


def scene_change(
    model: str,
    reader: Any,
    windows: list[Area],
    before: list[tuple[np.ndarray, np.ndarray]],
    network: Any = None,
) -> SceneChange:
    """What the new version ``model`` changes of ``before`` (see :func:`scene_before`).

    No windows: nothing confident, so the scene checks no class.
    """
    card, options, runner = _window_runner(model, network)
    nothing = [0] * len(card.classes)
    change = SceneChange(nothing, nothing)
    for (row, col, height, width), (probabilities, nodata) in zip(windows, before, strict=True):
        after = _predict_window(card, options, runner, reader, row, col, height, width).classes()
        change = change + SceneChange.measure(probabilities, after, nodata)
    return change


def _padded(images: list[np.ndarray], labels: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Windows cut to one size and padded to a multiple of the encoder's stride (32).

    The image is mirrored into the padding; its labels there are ignored.
    """
    from .adapt import STRIDE

    size = min(min(m.shape) for m in labels)
    padded = -(-size // STRIDE) * STRIDE
    extra = padded - size
    image = np.stack([i[:, :size, :size] for i in images])
    label = np.stack([m[:size, :size] for m in labels])
    if extra:
        image = np.pad(image, ((0, 0), (0, 0), (0, extra), (0, extra)), mode="reflect")
        label = np.pad(label, ((0, 0), (0, extra), (0, extra)), constant_values=IGNORE)
    return image, label


def training_windows(
    dataset: Any, scenes: list[str], card: ModelCard
) -> tuple[np.ndarray, np.ndarray]:
    """The stored training windows as normalized model input and labels (no data ignored)."""
    from .evaluate import store_scene

    images, labels = [], []
    for scene_id in scenes:
        array, mask = store_scene(dataset, scene_id)
        images.append(normalized(array.reflectance, card))
        labels.append(np.where(np.isnan(array.reflectance).any(0), IGNORE, mask).astype(np.uint8))
    return _padded(images, labels)


def held_out_windows(dataset: Any, scenes: list[str]) -> list[tuple[int, int, int, np.ndarray]]:
    """Each held-out box's place on the scene's grid and its labels (the box, no context)."""
    from .evaluate import store_scene

    windows = []
    for scene_id in scenes:
        _, mask = store_scene(dataset, scene_id)
        properties = dataset.item(scene_id).properties
        row, col, _ = properties["cloudseg:label_window"]
        box_row, box_col, size = properties["cloudseg:label_box"]
        r, c = box_row - row, box_col - col
        windows.append((box_row, box_col, size, mask[r : r + size, c : c + size]))
    return windows

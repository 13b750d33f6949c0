"""Evaluate a model on labeled data: an ingested store's scenes, or rasters with labels.

Predictions come from the same engine analysts run, in memory
(:func:`cloudseg.backend.inference.engine.predict`): tiling, blending, resampling to the
model's resolution and back, scaling. A store scene is read into memory with its bands,
pixel size and scale and goes to the engine as an array; a raster goes to it through
the same reader ``cloudseg segment`` uses. Classes come from the same decision as the
masks ``segment`` writes, with the options' cloud and shadow thresholds when given.
Nothing is written to evaluate, and the model is loaded once for all scenes. Reference
classes are mapped to the model's classes by name (``thick cloud`` and ``thin cloud`` ->
``cloud``) unless a mapping is given; unmapped and unlabeled pixels are ignored.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..backend.accounting import RunMeter
from ..backend.callbacks import CancelCallback, ProgressCallback
from ..backend.errors import CancelledError, InputError
from ..backend.inference.engine import ArrayScene, open_input, predict
from ..backend.inference.options import RunOptions
from ..backend.inference.runners import Runner, create_runner
from ..backend.models.registry import load_model
from ..backend.raster.bands import canonical_band
from ..backend.raster.reader import guess_scale, pixel_size_m
from .data import lookup_table, map_classes
from .metrics import confusion_matrix, metrics_from_confusion, write_report

#: What evaluation runs with unless told otherwise: the model itself, in float32.
DEFAULT_OPTIONS = RunOptions(precision="fp32")
#: A scene to evaluate: it returns the input (an array, or a file for the reader), the
#: reference (source class values, 255 unlabeled) and what to call the reference.
Prepare = Callable[[], tuple["ArrayScene | Path", np.ndarray, str]]


@dataclass
class Evaluation:
    """Metrics over all scenes, per scene, and the files written."""

    model: str
    metrics: dict[str, Any]
    scenes: dict[str, dict[str, Any]]
    seconds: float
    metrics_path: Path | None = None
    confusion_png: Path | None = None
    class_map: dict[str, str] = field(default_factory=dict)
    #: What ran the model, with its precision (the engine's runner description).
    runner: str = ""
    #: Seconds by stage, km² scored, and energy (see backend.accounting).
    accounting: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the evaluation as JSON-serialisable data."""
        data = self.__dict__.copy()
        data["metrics_path"] = str(self.metrics_path) if self.metrics_path else None
        data["confusion_png"] = str(self.confusion_png) if self.confusion_png else None
        return data


def _classes(
    source: ArrayScene | Path, options: RunOptions, runner: Runner
) -> tuple[np.ndarray, float]:
    """The class raster of one input, predicted in memory, and its pixel size in metres.

    Read and decided as ``segment`` does: the same reader settings, and the one class
    decision with the options' cloud and shadow thresholds.
    """
    if isinstance(source, ArrayScene):
        return predict(source, options, runner).classes(), float(source.resolution_m or 0.0)
    with open_input(source, options) as reader:
        return predict(reader, options, runner).classes(), float(reader.resolution_m or 0.0)


def store_scene(dataset: Any, scene: str) -> tuple[ArrayScene, np.ndarray]:
    """A store scene as reflectance in memory (bands, pixel size, scale) and its mask.

    What evaluation and the label check predict on, read as the engine reads a file.
    """
    image, mask = dataset.read(scene)
    props = dataset.item(scene).properties
    # As the reader scales a file without declared scale: a decimated first band decides.
    step = max(1, -(-max(image.shape[1:]) // 256))
    scale, _ = guess_scale(image.dtype.name, image[0, ::step, ::step])
    reflectance = image.astype(np.float32)
    reflectance *= np.float32(scale)
    transform = props.get("proj:transform")
    resolution = pixel_size_m(props.get("proj:code"), transform[0]) if transform else None
    bands = [canonical_band(b) for b in dataset.bands]
    return ArrayScene(reflectance, bands, resolution), mask


def _scene_metrics(matrix: np.ndarray, names: list[str]) -> dict[str, Any]:
    m = metrics_from_confusion(matrix, names)
    return {
        "pixels": m["pixels"],
        "mean_iou": m["mean_iou"],
        "pixel_accuracy": m["pixel_accuracy"],
        "iou": {k: v["iou"] for k, v in m["per_class"].items()},
    }


def _evaluate(
    model: str,
    source_classes: list[dict[str, Any]] | None,
    class_map: dict[str, str | None] | None,
    scenes: list[tuple[str, Prepare]],
    out: str | Path | None,
    options: RunOptions | None,
    progress: ProgressCallback | None,
    cancelled: CancelCallback | None,
) -> Evaluation:
    """Predict each scene, map its reference to the model's classes and score it.

    Each scene is a name and a function that returns the input, its reference (source
    class values, 255 unlabeled) and what to call that reference in an error.
    ``source_classes`` None means the reference holds the model's own classes.
    """
    started = time.perf_counter()
    options = replace(options or DEFAULT_OPTIONS, model=model)
    loaded = load_model(model)
    card = loaded.card
    names = card.class_names()
    if source_classes is None:
        source_classes = [{"value": i, "name": n} for i, n in enumerate(names)]
    mapping = map_classes(source_classes, names, class_map)
    table = lookup_table(mapping)
    matrix = np.zeros((len(names), len(names)), dtype=np.int64)
    per_scene: dict[str, dict[str, Any]] = {}
    tile, _ = options.tiling(card)
    runner = create_runner(loaded, options.device, options.precision, options.runtime, tile)
    meter = RunMeter(getattr(runner, "device", "cpu"))
    km2 = 0.0
    for i, (name, prepare) in enumerate(scenes):
        if cancelled and cancelled():
            raise CancelledError("evaluation cancelled; nothing was written")
        if progress:
            progress(100.0 * i / len(scenes), f"scene {Path(name).name}")
        with meter.stage("read"):
            source, reference, what = prepare()
        with meter.stage("infer"):
            prediction, pixel_m = _classes(source, options, runner)
        km2 += reference.size * pixel_m**2 / 1e6
        if reference.shape != prediction.shape:
            raise InputError(
                f"{what} is {reference.shape[1]} x {reference.shape[0]} px but the "
                f"prediction of {name} is {prediction.shape[1]} x {prediction.shape[0]}"
            )
        scene_matrix = confusion_matrix(table[reference], prediction, len(names))
        matrix += scene_matrix
        per_scene[name] = _scene_metrics(scene_matrix, names)
    by_name = {
        c["name"]: names[mapping[c["value"]]] for c in source_classes if c["value"] in mapping
    }
    metrics = metrics_from_confusion(matrix, names)
    evaluation = Evaluation(card.name, metrics, per_scene, round(time.perf_counter() - started, 2))
    evaluation.class_map = by_name
    evaluation.runner = runner.description
    cost = meter.finish(km2)
    evaluation.accounting = cost.to_dict() | {"summary": cost.summary()}
    if out is not None:
        report = {
            "model": card.name,
            "runner": runner.description,
            "scenes": per_scene,
            "class_map": by_name,
            "accounting": evaluation.accounting,
        }
        evaluation.metrics_path, evaluation.confusion_png = write_report(
            metrics | report,
            Path(out),
            f"{card.name}: mIoU {metrics['mean_iou'] or 0:.3f}",
        )
    return evaluation


def evaluate_store(
    model: str,
    store: str | Path,
    scenes: list[str] | None = None,
    out: str | Path | None = None,
    class_map: dict[str, str | None] | None = None,
    endpoint_url: str | None = None,
    options: RunOptions | None = None,
    progress: ProgressCallback | None = None,
    cancelled: CancelCallback | None = None,
) -> Evaluation:
    """Evaluate ``model`` on scenes of an ingested store.

    Args:
        model: Built-in name or model file (``.onnx``, ``model.pt``).
        store: Ingested store (folder or ``s3://``).
        scenes: Scene ids; all scenes when None.
        out: Folder for ``metrics.json`` and ``confusion.png``; nothing written when None.
        class_map: Store class name -> model class name (None: ignore).
        endpoint_url: S3 endpoint.
        options: How to run the model (its ``model`` is set to ``model``); by default
            :data:`DEFAULT_OPTIONS` (float32: the model itself).
        progress: Called with (percent, message) per scene.
        cancelled: Polled per scene.

    Returns:
        An :class:`Evaluation`.

    Raises:
        CloudsegError: For an unknown model, store or scene, or missing bands.
    """
    from ..backend.store.dataset import open_dataset

    dataset = open_dataset(store, endpoint_url)

    def prepare(scene: str) -> Prepare:
        def run() -> tuple[ArrayScene, np.ndarray, str]:
            source, mask = store_scene(dataset, scene)
            return source, mask, f"the mask of {scene}"

        return run

    chosen = scenes or dataset.scenes()
    return _evaluate(
        model,
        dataset.classes,
        class_map,
        [(scene, prepare(scene)) for scene in chosen],
        out,
        options,
        progress,
        cancelled,
    )


def evaluate_rasters(
    model: str,
    images: list[str | Path],
    labels: list[str | Path],
    label_classes: list[str] | None = None,
    out: str | Path | None = None,
    class_map: dict[str, str | None] | None = None,
    options: RunOptions | None = None,
    progress: ProgressCallback | None = None,
    cancelled: CancelCallback | None = None,
) -> Evaluation:
    """Evaluate ``model`` on rasters with label rasters of the same grid.

    Args:
        model: Built-in name or model file.
        images: Scenes (anything ``cloudseg segment`` reads).
        labels: One label raster per scene; its nodata is ignored.
        label_classes: Names of the label values 0, 1, 2...; default the model's classes.
        out: Folder for ``metrics.json`` and ``confusion.png``.
        class_map: Label class name -> model class name (None: ignore).
        options: How to read the rasters and run the model (see :func:`evaluate_store`).
        progress: Called with (percent, message) per scene.
        cancelled: Polled per scene.

    Raises:
        InputError: If the lists differ in length or a label's grid differs.
    """
    import rasterio

    if len(images) != len(labels) or not images:
        raise InputError(
            f"give one label raster per image ({len(images)} images, {len(labels)} labels)"
        )

    def prepare(image: Path, label: Path) -> Prepare:
        def run() -> tuple[Path, np.ndarray, str]:
            with rasterio.open(label) as ds:
                values = np.ma.filled(ds.read(1, masked=True), 255)
            valid = np.isfinite(values) & (values >= 0) & (values < 255)
            return image, np.where(valid, values, 255).astype(np.uint8), str(label)

        return run

    source = [{"value": i, "name": n} for i, n in enumerate(label_classes or [])]
    return _evaluate(
        model,
        source or None,
        class_map,
        [(str(i), prepare(Path(i), Path(la))) for i, la in zip(images, labels, strict=True)],
        out,
        options,
        progress,
        cancelled,
    )

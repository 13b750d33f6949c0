"""Why did the model call this a cloud? Class activation maps on the scene's grid.

For a chosen class, a class activation map (CAM) shows which places drove the model's
score for that class: the score is the class's logit summed over the pixels the model
assigns to it (pytorch-grad-cam's semantic-segmentation target), so the map answers
"what made these pixels cloud". Two methods:

- ``gradcam``: Grad-CAM (Selvaraju et al. 2017): the layer's channels weighted by their
  mean gradient, summed, ReLU.
- ``hirescam``: HiResCAM (Draelos & Carin 2020): gradient times activation per position,
  summed over channels, ReLU; faithful to where the score comes from, less smoothed.

Captum (PyTorch's interpretability library) computes both: ``LayerGradCam`` and
``LayerGradientXActivation`` summed over channels, which is HiResCAM. pytorch-grad-cam
would fit as well, but it requires ``opencv-python``, which bundles its own Qt
libraries: a second Qt inside the QGIS process.

The target layer (:func:`target_layer`): for U-Nets the decoder block at a quarter of
the input resolution (semantic enough to explain, fine enough for 10 m clouds); for
other architectures the decoder's output. The pixels "the model assigns to" a class are
those the one class decision gives it (:func:`.decision.decide`, with the run's cloud and
shadow thresholds), as in the mask ``segment`` writes.

An explanation is a run of the engine like ``segment``: the input is opened and the run
planned the same way (:func:`.engine.open_input`, :func:`.engine.plan_run`: bands, level,
scaling, extent, resolution, tiling, column blocks in bounded memory), the device comes
from :func:`.runners.plan_runner` (torch, in float32: the maps need gradients), and the
maps are blended as probabilities are. They are scaled to 0-1 by their maximum over the
scene, per class.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..accounting import Accounting, RunMeter, area_km2
from ..callbacks import CancelCallback, ProgressCallback, never_cancelled, no_progress
from ..choices import EXPLAIN_METHODS
from ..errors import CancelledError, InputError, ModelError
from ..models.cards import ModelCard
from ..raster.reader import SceneReader
from .decision import decide
from .engine import RunPlan, open_input, plan_reader, reader_rows
from .options import RunOptions

#: The CAM methods.
METHODS = EXPLAIN_METHODS

#: Rows written or rescaled at a time.
_BLOCK_ROWS = 512


def target_layer(network: Any) -> tuple[Any, str]:
    """The layer whose activations the maps are made of, and its name.

    U-Net and U-Net++: the decoder block at a quarter of the input resolution (the
    third of five); other smp architectures: the decoder's output.

    Raises:
        ModelError: For a network without an smp decoder.
    """
    decoder = getattr(network, "decoder", None)
    if decoder is None:
        raise ModelError("explanations need an smp network (with a decoder)")
    blocks = getattr(decoder, "blocks", None)
    if blocks is not None and len(blocks) >= 3 and not isinstance(blocks, dict):
        return blocks[2], "decoder.blocks.2"
    return decoder, "decoder"


class CamRunner:
    """A runner for the engine whose output is class activation maps, not probabilities.

    Channel ``k`` of the output holds the map of class ``k`` where ``k`` is one of the
    chosen classes, and 0 elsewhere, so the engine blends the maps of overlapping tiles
    as it blends probabilities.

    Args:
        network: The torch network.
        layer: Its layer whose activations make the maps.
        classes: Values of the classes to map.
        channels: The network's number of classes.
        method: ``gradcam`` or ``hirescam``.
        device: ``cpu`` or ``cuda``.
        layer_name: What to call the layer.
        card_classes: The card's classes, for the class decision's thresholds.
        cloud_threshold: See :class:`RunOptions`; None: argmax.
        shadow_threshold: See :class:`RunOptions`; None: argmax.
        output_logits: The network returns logits (probabilities are their softmax).
    """

    def __init__(
        self,
        network: Any,
        layer: Any,
        classes: list[int],
        channels: int,
        method: str = "gradcam",
        device: str = "cpu",
        layer_name: str = "",
        card_classes: list[Any] | None = None,
        cloud_threshold: float | None = None,
        shadow_threshold: float | None = None,
        output_logits: bool = True,
    ) -> None:
        import torch
        from captum.attr import LayerGradCam, LayerGradientXActivation

        if method not in METHODS:
            raise InputError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
        self.torch = torch
        self.network = network.to(device).eval()
        self.device = device
        self.classes = classes
        self.channels = channels
        self.method = method
        self.default_batch = 4 if device == "cuda" else 1
        self.layer_name = layer_name or type(layer).__name__
        self.description = (
            f"{method} on {self.layer_name} with torch {torch.__version__} "
            f"{'CUDA' if device == 'cuda' else 'CPU'}"
        )
        kind = LayerGradCam if method == "gradcam" else LayerGradientXActivation
        self._chosen: int = classes[0]
        self._attribution = kind(self._score, layer)
        self.card_classes = list(card_classes or [])
        self.thresholds = (cloud_threshold, shadow_threshold)
        self.output_logits = output_logits

    def _assigned(self, logits: Any) -> np.ndarray:
        """The class each pixel of the tiles gets: ``(N, H, W)``, the one class decision."""
        scores = logits.detach().float()
        if self.output_logits:
            scores = scores.softmax(dim=1)
        probabilities = np.moveaxis(scores.cpu().numpy(), 1, 0)  # (classes, N, H, W)
        return decide(probabilities, self.card_classes, *self.thresholds)

    def _score(self, x: Any) -> Any:
        """The chosen class's logit summed over the pixels the model assigns to it."""
        logits = self.network(x)
        assigned = self.torch.from_numpy(self._assigned(logits) == self._chosen)
        mine = assigned.to(logits.device, logits.dtype)
        return (logits[:, self._chosen] * mine).sum(dim=(1, 2))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Maps of the chosen classes for one batch of normalized tiles, ``(N, C, H, W)``."""
        from captum.attr import LayerAttribution

        torch = self.torch
        n, _, height, width = batch.shape
        out = np.zeros((n, self.channels, height, width), dtype=np.float32)
        x = torch.from_numpy(batch).to(self.device)
        for k in self.classes:
            self._chosen = k
            if self.method == "gradcam":
                cam = self._attribution.attribute(x, relu_attributions=True)
            else:
                cam = self._attribution.attribute(x).sum(dim=1, keepdim=True).clamp(min=0)
            cam = LayerAttribution.interpolate(cam.detach(), (height, width), "bilinear")
            out[:, k] = cam[:, 0].float().cpu().numpy()
        return out


@dataclass
class ExplainResult:
    """What ``explain`` wrote."""

    output: Path
    model: str
    method: str
    layer: str
    classes: list[str]
    #: The largest raw map value per class (what 1.0 stands for in the file).
    maxima: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    runner: str = ""
    #: Seconds by stage, km², seconds and joules per km² (see :mod:`..accounting`).
    accounting: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the result as JSON-serialisable data."""
        return self.__dict__ | {"output": str(self.output)}


def cam_runner(
    model: Any, classes: list[int], method: str, options: RunOptions | None = None
) -> CamRunner:
    """A :class:`CamRunner` for a registry model: its torch network and target layer.

    The device is the one :func:`.runners.plan_runner` chooses for torch in float32 (the
    maps need the network's gradients); the options' thresholds decide which pixels
    are each class's.

    Raises:
        ModelError: For an ONNX model that has no torch form, a runtime other than
            torch, bf16, or a device that cannot run here.
    """
    from ..models.networks import torch_importable, torch_network
    from .runners import plan_runner

    options = options or RunOptions()
    card = model.card
    if card.format == "onnx" and not torch_importable(card):
        raise ModelError(
            f"model {card.name} is ONNX only: explanations need its torch form (smp U-Nets "
            "with an EfficientNet encoder, or a model.pt from cloudseg train)"
        )
    if options.runtime not in ("auto", "torch"):
        raise ModelError(
            f"--runtime {options.runtime}: explanations need the network's gradients, which "
            "torch computes; use --runtime auto or torch"
        )
    if options.precision == "bf16":
        raise ModelError("--precision bf16: explanations are computed in float32; use fp32")
    plan = plan_runner(card, options.device, "fp32", "torch")
    network = torch_network(model)
    layer, name = target_layer(network)
    return CamRunner(
        network,
        layer,
        classes,
        len(card.classes),
        method,
        plan.device,
        name,
        card_classes=list(card.classes),
        cloud_threshold=options.cloud_threshold,
        shadow_threshold=options.shadow_threshold,
        output_logits=card.output == "logits",
    )


def explain(
    source: str | Path,
    output: str | Path,
    classes: list[str] | None = None,
    method: str = "gradcam",
    model: str | None = None,
    bounds: tuple[float, float, float, float] | None = None,
    product_level: str | None = None,
    bands: list[str] | None = None,
    device: str | None = None,
    overwrite: bool = False,
    progress: ProgressCallback = no_progress,
    cancelled: CancelCallback = never_cancelled,
    options: RunOptions | None = None,
) -> ExplainResult:
    """Write class activation maps of ``source`` as a float GeoTIFF on its grid.

    Args:
        source: Any input ``cloudseg segment`` reads.
        output: The GeoTIFF to write: one band per class, 0-1, NaN where no data.
        classes: Class names (default ``cloud``).
        method: ``gradcam`` or ``hirescam``.
        model: Model name or file; default the one ``segment`` would choose.
        bounds: Explain only this area (left, bottom, right, top in the input's CRS).
        product_level: ``L1C`` or ``L2A``, overriding detection.
        bands: Band names in file order, for files without band names.
        device: ``auto``, ``cpu`` or ``cuda``; None: the options' (``auto``).
        overwrite: Replace an existing output.
        progress: Called with (percent, message).
        cancelled: Polled once per tile; True stops and writes nothing.
        options: How to read the input and run the model, as for ``segment`` (the
            arguments above, when given, take the place of its fields); the runtime is
            torch and the precision float32.

    Returns:
        An :class:`ExplainResult`.

    Raises:
        CloudsegError: For an unknown class or method, a model without a torch form,
            an existing output, or cancellation (nothing is written then).
    """
    from ..atomic import atomic_path, check_target, claim

    started = time.perf_counter()
    given = {"model": model, "product_level": product_level, "bands": bands, "device": device}
    options = replace(options or RunOptions(), **{k: v for k, v in given.items() if v})
    output = Path(output).expanduser()
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if options.shadow_geometry:
        raise InputError(
            "explain maps what drove the network itself, before --shadow-geometry moves any "
            "shadow; run explain without it (the mask's own tags say what the step changed)"
        )
    if output.suffix.lower() not in (".tif", ".tiff"):
        raise InputError(f"the explanation must be a GeoTIFF (.tif), not {output.name}")
    check_target(output, overwrite)
    wanted = list(classes or ["cloud"])
    with open_input(source, options, bounds) as reader:
        plan = plan_reader(reader, options, options.max_memory_mib, gradients=True)
        card = plan.card
        indices = _class_values(card, wanted)
        runner = cam_runner(plan.model, indices, method, options)
        meter = RunMeter(runner.device)
        km2 = area_km2(reader.width, reader.height, reader.transform, reader.crs)
        with claim([output]), atomic_path(output) as partial:
            maxima = _write_maps(
                partial, reader, plan, runner, options, indices, progress, cancelled, meter
            )
            if cancelled():
                raise CancelledError("cancelled; no explanation was written")
            progress(96.0, "scaling to 0-1")
            with meter.stage("write"):
                _rescale(partial, maxima)
            accounting = meter.finish(km2)
            _describe(partial, wanted, method, card.name, runner.layer_name, maxima, accounting)
    progress(100.0, "done")
    return ExplainResult(
        output,
        card.name,
        method,
        runner.layer_name,
        wanted,
        {name: round(float(m), 6) for name, m in zip(wanted, maxima, strict=True)},
        round(time.perf_counter() - started, 2),
        runner.description,
        accounting.to_dict() | {"summary": accounting.summary()},
    )


def _class_values(card: ModelCard, wanted: list[str]) -> list[int]:
    """The values of the classes named ``wanted``.

    Raises:
        InputError: For a class the model does not have, with the ones it has.
    """
    names = card.class_names()
    unknown = [c for c in wanted if c not in names]
    if unknown:
        raise InputError(
            f"{card.name} has no class {', '.join(unknown)}; its classes: {', '.join(names)}"
        )
    return [names.index(c) for c in wanted]


def _write_maps(
    path: Path,
    reader: SceneReader,
    plan: RunPlan,
    runner: CamRunner,
    options: RunOptions,
    indices: list[int],
    progress: ProgressCallback,
    cancelled: CancelCallback,
    meter: RunMeter,
) -> np.ndarray:
    """Stream the scene through the engine with ``runner`` into a float GeoTIFF.

    Returns:
        The largest raw value of each class's map (what 1.0 will stand for).
    """
    import rasterio

    profile = {
        "driver": "GTiff",
        "width": reader.width,
        "height": reader.height,
        "count": len(indices),
        "dtype": "float32",
        "crs": reader.crs,
        "transform": reader.transform,
        "nodata": float("nan"),
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "predictor": 3,
    }
    maxima = np.zeros(len(indices), dtype=np.float64)
    with rasterio.open(path, "w", **profile) as dst:
        rows = reader_rows(
            reader,
            plan,
            runner,
            options,
            lambda p, m: progress(0.95 * p, m),
            cancelled,
            meter,
        )
        for row, col, maps, nodata in rows:
            values = maps[indices]
            values[:, nodata] = np.nan
            if np.isfinite(values).any():
                maxima = np.fmax(maxima, np.nanmax(values, axis=(1, 2)))
            with meter.stage("write"):
                height, width = values.shape[1:]
                dst.write(values, window=((row, row + height), (col, col + width)))
    return maxima


def _describe(
    path: Path,
    wanted: list[str],
    method: str,
    model: str,
    layer: str,
    maxima: np.ndarray,
    accounting: Accounting,
) -> None:
    """Name the bands and tag what made the maps."""
    import rasterio

    with rasterio.open(path, "r+") as dst:
        for i, name in enumerate(wanted, start=1):
            dst.set_band_description(i, f"{name} ({method})")
        dst.update_tags(
            CLOUDSEG_EXPLAIN=json.dumps(
                {
                    "method": method,
                    "classes": wanted,
                    "model": model,
                    "layer": layer,
                    "maxima": [round(float(m), 6) for m in maxima],
                    "score": "class logit summed over the pixels of that class",
                }
            ),
            CLOUDSEG_MODEL=model,
            CLOUDSEG_ACCOUNTING=json.dumps(accounting.to_dict()),
        )


def _rescale(path: Path, maxima: np.ndarray) -> None:
    """Divide each band by its maximum over the scene, block by block (0-1)."""
    import rasterio

    with rasterio.open(path, "r+") as dst:
        for row in range(0, dst.height, _BLOCK_ROWS):
            window = ((row, min(row + _BLOCK_ROWS, dst.height)), (0, dst.width))
            values = dst.read(window=window)
            scale = np.where(maxima > 0, maxima, 1.0).astype(np.float32)[:, None, None]
            dst.write(values / scale, window=window)

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
other architectures the decoder's output. The maps run through the engine's tiling and
blending tile by tile (any extent in bounded memory), and are scaled to 0-1 by their
maximum over the scene, per class.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..accounting import RunMeter, area_km2
from ..callbacks import CancelCallback, ProgressCallback, never_cancelled, no_progress
from ..choices import EXPLAIN_METHODS
from ..errors import CancelledError, InputError, ModelError

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

    def _score(self, x: Any) -> Any:
        """The chosen class's logit summed over the pixels the model assigns to it."""
        logits = self.network(x)
        mine = (logits.argmax(dim=1) == self._chosen).to(logits.dtype)
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


def cam_runner(model: Any, classes: list[int], method: str, device: str) -> CamRunner:
    """A :class:`CamRunner` for a registry model: its torch network and target layer.

    Raises:
        ModelError: For an ONNX model that has no torch form.
    """
    from ..models.networks import torch_importable, torch_network

    card = model.card
    if card.format == "onnx" and not torch_importable(card):
        raise ModelError(
            f"model {card.name} is ONNX only: explanations need its torch form (smp U-Nets "
            "with an EfficientNet encoder, or a model.pt from cloudseg train)"
        )
    network = torch_network(model)
    layer, name = target_layer(network)
    return CamRunner(network, layer, classes, len(card.classes), method, device, name)


def explain(
    source: str | Path,
    output: str | Path,
    classes: list[str] | None = None,
    method: str = "gradcam",
    model: str | None = None,
    bounds: tuple[float, float, float, float] | None = None,
    product_level: str | None = None,
    bands: list[str] | None = None,
    device: str = "auto",
    overwrite: bool = False,
    progress: ProgressCallback = no_progress,
    cancelled: CancelCallback = never_cancelled,
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
        device: ``auto``, ``cpu`` or ``cuda``.
        overwrite: Replace an existing output.
        progress: Called with (percent, message).
        cancelled: Polled once per tile; True stops and writes nothing.

    Returns:
        An :class:`ExplainResult`.

    Raises:
        CloudsegError: For an unknown class or method, a model without a torch form,
            an existing output, or cancellation (nothing is written then).
    """
    import rasterio

    from ..atomic import atomic_path, check_target, claim
    from ..raster.reader import open_scene
    from .engine import ReaderScene, resolve_model, scene_rows
    from .options import RunOptions
    from .resample import ModelGrid
    from .runners import cuda_usable

    started = time.perf_counter()
    output = Path(output).expanduser()
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if output.suffix.lower() not in (".tif", ".tiff"):
        raise InputError(f"the explanation must be a GeoTIFF (.tif), not {output.name}")
    check_target(output, overwrite)
    wanted = list(classes or ["cloud"])
    with open_scene(source, bands, product_level) as reader:
        if bounds is not None:
            reader.crop(bounds)
        options = RunOptions(model=model, precision="fp32")
        chosen, _ = resolve_model(reader.bands, reader.product_level, options, reader.path.name)
        card = chosen.card
        names = card.class_names()
        unknown = [c for c in wanted if c not in names]
        if unknown:
            raise InputError(
                f"{card.name} has no class {', '.join(unknown)}; its classes: {', '.join(names)}"
            )
        indices = [names.index(c) for c in wanted]
        run_on = "cuda" if device == "cuda" or (device == "auto" and cuda_usable()) else "cpu"
        runner = cam_runner(chosen, indices, method, run_on)
        grid = ModelGrid.choose(
            reader.height,
            reader.width,
            reader.resolution_m,
            card.resolution_m,
            options.resolution,
            reader.path.name,
        )
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
        meter = RunMeter(run_on)
        km2 = area_km2(reader.width, reader.height, reader.transform, reader.crs)
        with claim([output]), atomic_path(output) as partial:
            with rasterio.open(partial, "w", **profile) as dst:
                rows = scene_rows(
                    ReaderScene(reader),
                    grid,
                    card,
                    runner,
                    options,
                    lambda p, m: progress(0.95 * p, m),
                    cancelled,
                    meter,
                )
                for row, maps, nodata in rows:
                    values = maps[indices]
                    values[:, nodata] = np.nan
                    if np.isfinite(values).any():
                        maxima = np.fmax(maxima, np.nanmax(values, axis=(1, 2)))
                    with meter.stage("write"):
                        window = ((row, row + values.shape[1]), (0, reader.width))
                        dst.write(values, window=window)
            if cancelled():
                raise CancelledError("cancelled; no explanation was written")
            progress(96.0, "scaling to 0-1")
            with meter.stage("write"):
                _rescale(partial, maxima)
            accounting = meter.finish(km2)
            with rasterio.open(partial, "r+") as dst:
                for i, name in enumerate(wanted, start=1):
                    dst.set_band_description(i, f"{name} ({method})")
                dst.update_tags(
                    CLOUDSEG_EXPLAIN=json.dumps(
                        {
                            "method": method,
                            "classes": wanted,
                            "model": card.name,
                            "layer": runner.layer_name,
                            "maxima": [round(float(m), 6) for m in maxima],
                            "score": "class logit summed over the pixels of that class",
                        }
                    ),
                    CLOUDSEG_MODEL=card.name,
                    CLOUDSEG_ACCOUNTING=json.dumps(accounting.to_dict()),
                )
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


def _rescale(path: Path, maxima: np.ndarray) -> None:
    """Divide each band by its maximum over the scene, block by block (0-1)."""
    import rasterio

    with rasterio.open(path, "r+") as dst:
        for row in range(0, dst.height, _BLOCK_ROWS):
            window = ((row, min(row + _BLOCK_ROWS, dst.height)), (0, dst.width))
            values = dst.read(window=window)
            scale = np.where(maxima > 0, maxima, 1.0).astype(np.float32)[:, None, None]
            dst.write(values / scale, window=window)

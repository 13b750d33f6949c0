"""Model runners: a batch of normalised tiles in, class probabilities out.

``OnnxRunner`` uses onnxruntime (CPU, or CUDA when its provider is installed and a GPU
is visible); ``TorchRunner`` uses torch (CPU, or CUDA with bf16 autocast). Each says in
:attr:`Runner.description` what ran where, so users see whether the GPU was used.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Protocol

import numpy as np

from .cards import ModelCard
from .errors import ModelError
from .registry import Model

logger = logging.getLogger(__name__)
DEVICES = ("auto", "cpu", "cuda")


class Runner(Protocol):
    """Runs a model on a batch of tiles."""

    description: str
    device: str

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Map ``(n, bands, tile, tile)`` inputs to ``(n, classes, tile, tile)`` probabilities."""
        ...


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    """Numerically stable softmax along ``axis``, in float32."""
    shifted = logits - logits.max(axis=axis, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=axis, keepdims=True)
    return shifted


def _cpu_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class OnnxRunner:
    """Runs an ONNX model with onnxruntime."""

    def __init__(self, model: Model, device: str = "auto") -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        cuda_ok = "CUDAExecutionProvider" in available and _torch_sees_cuda_or_unknown()
        if device == "cuda" and "CUDAExecutionProvider" not in available:
            raise ModelError(
                "--device cuda: onnxruntime has no CUDA provider here (providers: "
                f"{', '.join(available)}); install onnxruntime-gpu or use --device cpu"
            )
        providers = ["CPUExecutionProvider"]
        if device == "cuda" or (device == "auto" and cuda_ok):
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = _cpu_threads()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(model.path), sess_options=options, providers=providers
            )
        except Exception as exc:  # onnxruntime raises its own unrelated exception types
            raise ModelError(f"onnxruntime cannot load {model.path}: {exc}") from exc
        used = self.session.get_providers()[0]
        self.device = "cuda" if used == "CUDAExecutionProvider" else "cpu"
        if device == "cuda" and self.device != "cuda":
            raise ModelError(
                "--device cuda: onnxruntime could not start its CUDA provider "
                "(no GPU visible, or CUDA libraries missing); use --device cpu"
            )
        self.input_name = self.session.get_inputs()[0].name
        self.output_logits = model.card.output == "logits"
        self.description = f"onnxruntime {ort.__version__} {used}"
        if self.device == "cuda":
            self.description += f" ({_gpu_name()})"
        _check_input_shape(self.session.get_inputs()[0].shape, model.card)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch; see :class:`Runner`."""
        (out,) = self.session.run(None, {self.input_name: batch})
        out = out.astype(np.float32, copy=False)
        return softmax(out) if self.output_logits else out


def _check_input_shape(shape: list[Any], card: ModelCard) -> None:
    channels = shape[1] if len(shape) == 4 else None
    if isinstance(channels, int) and channels != len(card.bands):
        raise ModelError(
            f"model {card.name} takes {channels} bands but its card lists {len(card.bands)}"
        )
    for dim in shape[2:]:
        if isinstance(dim, int) and dim != card.tile_size:
            raise ModelError(
                f"model {card.name} takes {dim} px tiles but its card says {card.tile_size}"
            )


def _torch_sees_cuda_or_unknown() -> bool:
    try:
        import torch
    except ImportError:
        return True
    return bool(torch.cuda.is_available())


def _gpu_name() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "GPU"
    except ImportError:
        return "GPU"


def build_torch_model(card: ModelCard) -> Any:
    """Create the segmentation-models-pytorch network a card describes (no weights).

    Raises:
        ModelError: If the card's architecture is not one smp knows.
    """
    import segmentation_models_pytorch as smp

    arch = card.architecture.get("name", "")
    encoder = card.architecture.get("encoder", "resnet34")
    try:
        return smp.create_model(
            arch,
            encoder_name=encoder,
            encoder_weights=None,
            in_channels=len(card.bands),
            classes=len(card.classes),
        )
    except (KeyError, ValueError) as exc:
        raise ModelError(
            f"model {card.name}: cannot build {arch!r} with encoder {encoder!r}: {exc}"
        ) from exc


def load_torch_network(model: Model) -> Any:
    """Build a torch checkpoint's network from its card and load its weights (CPU, eval).

    Raises:
        ModelError: If the file holds no state dict or the weights do not fit the card.
    """
    import torch

    checkpoint = torch.load(model.path, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ModelError(f"{model.path}: expected a state dict (or {{'state_dict': ...}})")
    network = build_torch_model(model.card)
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(
            f"{model.path}: weights do not fit {model.card.name}'s "
            f"architecture: {str(exc).splitlines()[0]}"
        ) from exc
    return network.eval()


class TorchRunner:
    """Runs a segmentation-models-pytorch checkpoint with torch."""

    def __init__(self, model: Model, device: str = "auto") -> None:
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise ModelError("--device cuda: torch sees no CUDA GPU here; use --device cpu")
        self.device = "cuda" if device != "cpu" and torch.cuda.is_available() else "cpu"
        self.network = load_torch_network(model).to(self.device)
        self.output_logits = model.card.output == "logits"
        self.torch = torch
        if self.device == "cuda":
            self.description = f"torch {torch.__version__} CUDA ({_gpu_name()}, bf16 autocast)"
        else:
            torch.set_num_threads(_cpu_threads())
            self.description = f"torch {torch.__version__} CPU"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch; see :class:`Runner`."""
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device == "cuda"):
                out = self.network(x)
            out = out.float()
            if self.output_logits:
                out = out.softmax(dim=1)
            return out.cpu().numpy()


def create_runner(model: Model, device: str = "auto") -> Runner:
    """Create the runner for a model's format.

    Args:
        model: The model.
        device: ``"auto"`` (CUDA when usable), ``"cpu"`` or ``"cuda"``.

    Raises:
        ModelError: On an unknown device, or ``cuda`` where no GPU is usable.
    """
    if device not in DEVICES:
        raise ModelError(f"device must be one of {', '.join(DEVICES)}, not {device!r}")
    if model.card.format == "onnx":
        return OnnxRunner(model, device)
    return TorchRunner(model, device)

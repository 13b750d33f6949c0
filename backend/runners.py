"""Model runners: a batch of normalised tiles in, class probabilities out.

``OnnxRunner`` uses onnxruntime (CPU, or CUDA when its provider is installed and a GPU
is visible); ``OpenVinoRunner`` runs ONNX models on the CPU in bf16 through OpenVINO
where the CPU computes bf16 natively (AVX512-BF16 or AMX: about 1.6x faster than
float32 there); ``TorchRunner`` uses torch (CPU, or CUDA with bf16 autocast). Each says
in :attr:`Runner.description` what ran where and in which precision, so users see
whether the GPU was used.
"""

from __future__ import annotations

import functools
import logging
import os
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .cards import ModelCard
from .choices import DEVICES, PRECISIONS
from .errors import ModelError
from .registry import Model

logger = logging.getLogger(__name__)


class Runner(Protocol):
    """Runs a model on a batch of tiles."""

    description: str
    device: str
    #: Tiles per call when the user gives no batch size: the fastest measured setting.
    default_batch: int

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
        if device == "cuda" and "CUDAExecutionProvider" not in available:
            raise ModelError(
                "--device cuda: onnxruntime has no CUDA provider here (providers: "
                f"{', '.join(available)}); install onnxruntime-gpu or use --device cpu"
            )
        providers = ["CPUExecutionProvider"]
        if device == "cuda" or (device == "auto" and onnx_cuda_usable()):
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
        # onnxruntime on the CPU: one tile a call was fastest and needs the least memory.
        self.default_batch = 16 if self.device == "cuda" else 1
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


def onnx_cuda_usable() -> bool:
    """Tell whether ``--device auto`` runs ONNX models on a CUDA GPU."""
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers() and (
        _torch_sees_cuda_or_unknown()
    )


@functools.cache
def openvino_bf16_problem() -> str | None:
    """Why ONNX models cannot run in bf16 on this CPU, or None when they can.

    bf16 needs OpenVINO and a CPU that computes bf16 natively (AVX512-BF16 or AMX);
    elsewhere OpenVINO would emulate it, slower than float32.
    """
    try:
        import openvino as ov
    except ImportError:
        return "OpenVINO is not installed (pip install openvino)"
    try:
        capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except RuntimeError as exc:
        return f"OpenVINO cannot use this CPU ({str(exc).splitlines()[0]})"
    if "BF16" not in capabilities:
        return "this CPU has no native bf16 (AVX512-BF16 or AMX)"
    return None


def _openvino_cache_dir() -> Path | None:
    """Folder for OpenVINO's compiled models (a second run loads in 0.1 s, not 0.6 s).

    ``$CLOUDSEG_CACHE_DIR/openvino``, else ``$XDG_CACHE_HOME/cloudseg/openvino`` or
    ``~/.cache/cloudseg/openvino``; None (no caching) where it cannot be created.
    OpenVINO keys each entry by the model's content and the settings.
    """
    if os.environ.get("CLOUDSEG_CACHE_DIR"):
        base = Path(os.environ["CLOUDSEG_CACHE_DIR"])
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "cloudseg"
    folder = base.expanduser() / "openvino"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        logger.debug("no OpenVINO model cache: %s", exc)
        return None
    return folder


class OpenVinoRunner:
    """Runs an ONNX model on the CPU in bf16 with OpenVINO.

    The weights stay as the file has them; convolutions and matrix products run in
    bf16 with float32 accumulation. On the ukis-csmask models this changes 0.3 to 0.8 %
    of mask pixels against float32, and is about 1.6x faster on CPUs with AVX512-BF16.
    """

    def __init__(self, model: Model) -> None:
        problem = openvino_bf16_problem()
        if problem:
            raise ModelError(f"--precision bf16: {problem}; use --precision fp32")
        import openvino as ov

        core = ov.Core()
        cache = _openvino_cache_dir()
        if cache is not None:
            core.set_property({"CACHE_DIR": str(cache)})
        try:
            self.compiled = core.compile_model(
                str(model.path),
                "CPU",
                {
                    "INFERENCE_PRECISION_HINT": "bf16",
                    "PERFORMANCE_HINT": "LATENCY",
                    "INFERENCE_NUM_THREADS": _cpu_threads(),
                },
            )
        except RuntimeError as exc:
            raise ModelError(
                f"OpenVINO cannot load {model.path}: {str(exc).splitlines()[0]}; "
                "use --precision fp32"
            ) from exc
        shape = self.compiled.input(0).get_partial_shape()
        _check_input_shape([d.get_length() if d.is_static else None for d in shape], model.card)
        self.request = self.compiled.create_infer_request()
        self.output_logits = model.card.output == "logits"
        self.device = "cpu"
        self.default_batch = 4  # 5-10 % faster than 1 tile a call on 2 cores
        self.description = f"openvino {metadata.version('openvino')} CPU (bf16)"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch; see :class:`Runner`."""
        out = self.request.infer({0: batch})[0].astype(np.float32, copy=False)
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

    def __init__(self, model: Model, device: str = "auto", precision: str = "auto") -> None:
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise ModelError("--device cuda: torch sees no CUDA GPU here; use --device cpu")
        self.device = "cuda" if device != "cpu" and torch.cuda.is_available() else "cpu"
        self.network = load_torch_network(model).to(self.device)
        self.default_batch = 16 if self.device == "cuda" else 1
        self.output_logits = model.card.output == "logits"
        self.torch = torch
        # bf16 by default on a GPU; on the CPU only when asked (torch gains little there).
        self.bf16 = precision == "bf16" or (precision == "auto" and self.device == "cuda")
        autocast = "bf16 autocast" if self.bf16 else "fp32"
        if self.device == "cuda":
            self.description = f"torch {torch.__version__} CUDA ({_gpu_name()}, {autocast})"
        else:
            torch.set_num_threads(_cpu_threads())
            self.description = f"torch {torch.__version__} CPU ({autocast})"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch; see :class:`Runner`."""
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device, non_blocking=True)
            with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.bf16):
                out = self.network(x)
            out = out.float()
            if self.output_logits:
                out = out.softmax(dim=1)
            return out.cpu().numpy()


def create_runner(model: Model, device: str = "auto", precision: str = "auto") -> Runner:
    """Create the runner for a model's format, device and precision.

    ONNX models run through onnxruntime, except on the CPU in bf16 (``precision="bf16"``,
    or ``"auto"`` where the CPU computes bf16 natively and OpenVINO is installed), where
    OpenVINO runs them. Torch checkpoints run through torch, in bf16 autocast on a GPU
    unless ``precision="fp32"``.

    Args:
        model: The model.
        device: ``"auto"`` (CUDA when usable), ``"cpu"`` or ``"cuda"``.
        precision: ``"auto"``, ``"fp32"`` or ``"bf16"``; see :data:`PRECISIONS`.

    Raises:
        ModelError: On an unknown device or precision, ``cuda`` where no GPU is usable,
            or ``bf16`` that cannot run here.
    """
    if device not in DEVICES:
        raise ModelError(f"device must be one of {', '.join(DEVICES)}, not {device!r}")
    if precision not in PRECISIONS:
        raise ModelError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if model.card.format != "onnx":
        return TorchRunner(model, device, precision)
    if precision == "fp32":
        return OnnxRunner(model, device)
    on_gpu = device == "cuda" or (device == "auto" and onnx_cuda_usable())
    if on_gpu:
        if precision == "bf16":
            raise ModelError(
                "--precision bf16: ONNX models run in bf16 on the CPU only; "
                "use --precision auto or fp32 with --device cuda"
            )
        return OnnxRunner(model, device)
    if precision == "bf16" or openvino_bf16_problem() is None:
        return OpenVinoRunner(model)
    return OnnxRunner(model, device)

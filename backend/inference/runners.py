"""Model runners: a batch of normalised tiles in, class probabilities out.

Which runtime runs a model, on which device and in which precision is decided in one
place, :func:`plan_runner`, so the engine, ``cloudseg info`` and the QGIS dock say the
same thing:

- **A CUDA GPU** (``--device auto`` when torch sees one, or ``cuda``): torch, with bf16
  autocast unless ``--precision fp32``. Torch checkpoints run as they are; ONNX exports
  of smp U-Nets, the built-in ukis-csmask models among them, are imported into the same
  smp network (:func:`cloudseg.backend.models.networks.network_from_onnx`). Other ONNX models
  use onnxruntime's CUDA provider where onnxruntime-gpu is installed.
- **The CPU**, ONNX models: OpenVINO in bf16 where the CPU computes bf16 natively
  (AVX512-BF16 or AMX), else onnxruntime in float32 on a float32 copy of the graph
  (:mod:`cloudseg.backend.inference.onnxgraph`). Torch checkpoints: torch, float32 unless asked.

Each runner says in :attr:`Runner.description` what ran where and in which precision,
so users see whether the GPU was used.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import threading
from dataclasses import dataclass
from importlib import metadata, util
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..choices import DEVICES, PRECISIONS, RUNTIMES
from ..errors import ModelError
from ..models.cards import ModelCard
from ..models.networks import torch_importable, torch_network
from ..models.registry import Model
from .onnxgraph import cache_folder, prepared_onnx

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


def cpu_threads() -> int:
    """Threads for inference: ``CLOUDSEG_THREADS`` if set, else every core we may use.

    A batch worker gets its share of the machine through ``CLOUDSEG_THREADS``.
    """
    share = os.environ.get("CLOUDSEG_THREADS", "")
    if share.isdigit() and int(share) > 0:
        return int(share)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# -- what the hardware offers ------------------------------------------------------------
@functools.cache
def cuda_usable() -> bool:
    """Whether torch can run on a CUDA GPU here.

    On Linux without an NVIDIA driver (no ``/dev/nvidiactl``, ``/proc/driver/nvidia`` or
    WSL's ``/dev/dxg``) the answer is no without importing torch (a second or two).
    """
    if platform.system() == "Linux" and not any(
        Path(p).exists() for p in ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/dxg")
    ):
        return False
    if util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def onnxruntime_has_cuda() -> bool:
    """Whether the installed onnxruntime has its CUDA provider (onnxruntime-gpu)."""
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


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


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "GPU"


# -- the plan ------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunnerPlan:
    """Which runtime runs a model, where, in which precision, and why.

    Attributes:
        runtime: ``"onnxruntime"``, ``"openvino"`` or ``"torch"``.
        device: ``"cpu"`` or ``"cuda"``.
        precision: ``"fp32"`` or ``"bf16"``.
        reason: One line for users: why this runtime, device and precision.
    """

    runtime: str
    device: str
    precision: str
    reason: str

    def summary(self) -> str:
        """Return e.g. ``torch on CUDA, bf16`` (before anything is loaded)."""
        device = "CUDA GPU" if self.device == "cuda" else "CPU"
        return f"{self.runtime} on the {device}, {self.precision}"


def _check_choices(device: str, precision: str, runtime: str) -> None:
    for name, value, allowed in (
        ("device", device, DEVICES),
        ("precision", precision, PRECISIONS),
        ("runtime", runtime, RUNTIMES),
    ):
        if value not in allowed:
            raise ModelError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")


def _torch_plan(card: ModelCard, device: str, precision: str, why: str) -> RunnerPlan:
    on_gpu = device == "cuda" or (device == "auto" and cuda_usable())
    if device == "cuda" and not cuda_usable():
        raise ModelError("--device cuda: torch sees no CUDA GPU here; use --device cpu")
    if card.format == "onnx" and not torch_importable(card):
        raise ModelError(
            f"--runtime torch: model {card.name} is not an ONNX export of an smp U-Net with "
            "an EfficientNet encoder, so torch cannot run it; use --runtime onnxruntime"
        )
    bf16 = precision == "bf16" or (precision == "auto" and on_gpu)
    return RunnerPlan("torch", "cuda" if on_gpu else "cpu", "bf16" if bf16 else "fp32", why)


def _cpu_onnx_plan(precision: str, runtime: str) -> RunnerPlan:
    problem = openvino_bf16_problem()
    if runtime == "openvino" or (runtime == "auto" and precision != "fp32"):
        if precision == "bf16" and problem:
            raise ModelError(f"--precision bf16: {problem}; use --precision fp32")
        if runtime == "openvino" and util.find_spec("openvino") is None:
            raise ModelError("--runtime openvino: OpenVINO is not installed (pip install openvino)")
        if problem is None and precision != "fp32":
            return RunnerPlan("openvino", "cpu", "bf16", "this CPU computes bf16 natively")
        if runtime == "openvino":
            return RunnerPlan("openvino", "cpu", "fp32", "asked for OpenVINO")
    if precision == "bf16":
        raise ModelError("--precision bf16: onnxruntime has no bf16 on the CPU; use OpenVINO")
    reason = "asked for float32" if precision == "fp32" else (problem or "asked for onnxruntime")
    return RunnerPlan("onnxruntime", "cpu", "fp32", reason)


def plan_runner(
    card: ModelCard, device: str = "auto", precision: str = "auto", runtime: str = "auto"
) -> RunnerPlan:
    """Decide which runtime runs a model, on which device and in which precision.

    Args:
        card: The model's card (its format and architecture matter).
        device: ``"auto"`` (a CUDA GPU when torch sees one), ``"cpu"`` or ``"cuda"``.
        precision: ``"auto"`` (bf16 where the hardware computes it natively), ``"fp32"``
            or ``"bf16"``.
        runtime: ``"auto"``, ``"onnxruntime"``, ``"openvino"`` or ``"torch"``.

    Raises:
        ModelError: For unknown values, and for combinations that cannot run here, with
            the option that fixes it.
    """
    _check_choices(device, precision, runtime)
    if card.format != "onnx":
        if runtime not in ("auto", "torch"):
            raise ModelError(
                f"--runtime {runtime}: model {card.name} is a torch checkpoint; export it "
                "to ONNX ('cloudseg export') to run it there"
            )
        return _torch_plan(card, device, precision, "a torch checkpoint")
    if runtime == "torch":
        return _torch_plan(card, device, precision, "asked for torch")
    wants_gpu = device == "cuda" or (device == "auto" and cuda_usable())
    if wants_gpu and runtime == "auto" and torch_importable(card) and cuda_usable():
        return _torch_plan(card, "cuda", precision, "a CUDA GPU is visible to torch")
    if wants_gpu and runtime in ("auto", "onnxruntime") and onnxruntime_has_cuda():
        if precision == "bf16":
            raise ModelError(
                "--precision bf16: onnxruntime runs this model in float32 on a GPU; "
                "use --precision auto or fp32 with --device cuda"
            )
        return RunnerPlan("onnxruntime", "cuda", "fp32", "onnxruntime-gpu is installed")
    if device == "cuda":
        if runtime == "openvino":
            raise ModelError("--runtime openvino runs on the CPU only; use --device cpu")
        raise ModelError(
            "--device cuda: no CUDA GPU is usable for this model here (torch sees none, "
            "and onnxruntime has no CUDA provider); use --device cpu"
        )
    return _cpu_onnx_plan(precision, runtime)


# -- the runners ---------------------------------------------------------------------------
class OnnxRunner:
    """Runs an ONNX model with onnxruntime, on a float32 graph (see :mod:`.onnxgraph`)."""

    def __init__(self, model: Model, device: str = "cpu") -> None:
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = cpu_threads()
        options.log_severity_level = 3
        graph = prepared_onnx(model)
        try:
            self.session = ort.InferenceSession(
                str(graph) if isinstance(graph, Path) else graph,
                sess_options=options,
                providers=providers,
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
        # onnxruntime on the CPU: one tile a call was as fast as four, in less memory.
        self.default_batch = 16 if self.device == "cuda" else 1
        self.output_logits = model.card.output == "logits"
        where = f"CUDA ({_gpu_name()})" if self.device == "cuda" else "CPU"
        self.description = f"onnxruntime {ort.__version__} {where} (fp32)"
        _check_bands(self.session.get_inputs()[0].shape, model.card)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch; see :class:`Runner`."""
        (out,) = self.session.run(None, {self.input_name: batch})
        out = out.astype(np.float32, copy=False)
        return softmax(out) if self.output_logits else out


class OpenVinoRunner:
    """Runs an ONNX model on the CPU with OpenVINO, in bf16 where the CPU computes it.

    The weights stay as the file has them; in bf16, convolutions and matrix products
    run in bf16 with float32 accumulation (about 1.6x faster than float32 on CPUs with
    AVX512-BF16). Compiled models are cached (:func:`.onnxgraph.cache_folder`).
    """

    def __init__(self, model: Model, precision: str, tile_size: int) -> None:
        import openvino as ov

        core = ov.Core()
        cache = cache_folder("openvino")
        if cache is not None:
            core.set_property({"CACHE_DIR": str(cache)})
        try:
            network = core.read_model(str(model.path))
            channels = len(model.card.bands)
            network.reshape(
                {network.input(0): ov.PartialShape([-1, channels, tile_size, tile_size])}
            )
            self.compiled = core.compile_model(
                network,
                "CPU",
                {
                    "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                    "PERFORMANCE_HINT": "LATENCY",
                    "INFERENCE_NUM_THREADS": cpu_threads(),
                },
            )
        except RuntimeError as exc:
            raise ModelError(
                f"OpenVINO cannot load {model.path}: {str(exc).splitlines()[0]}; "
                "use --runtime onnxruntime"
            ) from exc
        self.request = self.compiled.create_infer_request()
        self.output_logits = model.card.output == "logits"
        self.device = "cpu"
        self.default_batch = 4  # 5-10 % faster than 1 tile a call on 2 cores
        self.description = f"openvino {metadata.version('openvino')} CPU ({precision})"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch; see :class:`Runner`."""
        out = self.request.infer({0: batch})[0].astype(np.float32, copy=False)
        return softmax(out) if self.output_logits else out


def _check_bands(shape: list[Any], card: ModelCard) -> None:
    channels = shape[1] if len(shape) == 4 else None
    if isinstance(channels, int) and channels != len(card.bands):
        raise ModelError(
            f"model {card.name} takes {channels} bands but its card lists {len(card.bands)}"
        )


class TorchRunner:
    """Runs a torch checkpoint, or an smp U-Net imported from ONNX, with torch."""

    def __init__(
        self,
        model: Model,
        device: str = "cpu",
        precision: str = "fp32",
        network: Any = None,
    ) -> None:
        """Load the model's network (or take ``network``, already in memory, as it is).

        Args:
            model: The model (its card says whether the network returns logits).
            device: ``"cpu"`` or ``"cuda"``.
            precision: ``"fp32"`` or ``"bf16"`` (autocast).
            network: A network already built for this card (e.g. one being fine-tuned);
                None loads the model's weights.
        """
        import torch

        self.device = device
        network = torch_network(model) if network is None else network
        self.network = network.to(self.device)
        if self.device == "cuda":
            # Tensor cores want channels-last activations under autocast.
            self.network = self.network.to(memory_format=torch.channels_last)
        self.default_batch = 16 if self.device == "cuda" else 1
        self.output_logits = model.card.output == "logits"
        self.torch = torch
        self.bf16 = precision == "bf16"
        autocast = "bf16 autocast" if self.bf16 else "fp32"
        if self.device == "cuda":
            self.description = f"torch {torch.__version__} CUDA ({_gpu_name()}, {autocast})"
        else:
            torch.set_num_threads(cpu_threads())
            self.description = f"torch {torch.__version__} CPU ({autocast})"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch; see :class:`Runner`."""
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device, non_blocking=True)
            if self.device == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.bf16):
                out = self.network(x)
            out = out.float()
            if self.output_logits:
                out = out.softmax(dim=1)
            return out.cpu().numpy()


def create_runner(
    model: Model,
    device: str = "auto",
    precision: str = "auto",
    runtime: str = "auto",
    tile_size: int | None = None,
) -> Runner:
    """Create the runner :func:`plan_runner` chooses for a model.

    Args:
        model: The model.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        precision: ``"auto"``, ``"fp32"`` or ``"bf16"``.
        runtime: ``"auto"``, ``"onnxruntime"``, ``"openvino"`` or ``"torch"``.
        tile_size: The tile edge the runner will get (OpenVINO compiles for it);
            the card's when None.

    Raises:
        ModelError: When the combination cannot run here (see :func:`plan_runner`) or
            the model cannot be loaded.
    """
    plan = plan_runner(model.card, device, precision, runtime)
    logger.info("running %s with %s (%s)", model.card.name, plan.summary(), plan.reason)
    if plan.runtime == "torch":
        return TorchRunner(model, plan.device, plan.precision)
    if plan.runtime == "openvino":
        return OpenVinoRunner(model, plan.precision, tile_size or model.card.tile_size)
    return OnnxRunner(model, plan.device)


_SHARED = threading.local()


def shared_runner(
    model: Model,
    device: str = "auto",
    precision: str = "auto",
    runtime: str = "auto",
    tile_size: int | None = None,
) -> Runner:
    """A runner kept for the life of this thread: a batch worker loads its model once.

    Keyed by the model file (path, size, modification time) and the settings; the last
    runner only is kept, so a worker holds one model at a time. Per thread, because a
    runner's inference request is not to be shared between threads (OpenVINO's is not).
    """
    stat = model.path.stat()
    key = (str(model.path), stat.st_size, stat.st_mtime_ns, device, precision, runtime, tile_size)
    if getattr(_SHARED, "key", None) != key:
        _SHARED.runner = None  # the old model goes before the new one loads
        _SHARED.runner = create_runner(model, device, precision, runtime, tile_size)
        _SHARED.key = key
    return _SHARED.runner

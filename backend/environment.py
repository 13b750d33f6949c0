"""What this Python environment can run: versions, devices and why a GPU is or is not used.

Analysts' first question is whether the GPU is used; this module answers it for the
CLI (``cloudseg info``), the QGIS dock and the Processing algorithm alike.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any

from ._version import __version__
from .dependencies import PLUGIN_STEPS, SEGMENT, is_available, missing_requirements

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuInfo:
    """A CUDA device as torch sees it.

    Attributes:
        index: CUDA device index.
        name: Marketing name (``NVIDIA H100 80GB HBM3``).
        memory_gib: Total device memory in GiB.
        capability: Compute capability as ``"major.minor"``.
    """

    index: int
    name: str
    memory_gib: float
    capability: str


@dataclass(frozen=True)
class EnvironmentReport:
    """Versions and compute devices available to cloudseg.

    Attributes:
        cloudseg: cloudseg version.
        python: Python version.
        platform: Operating system and machine.
        packages: Installed versions of the packages cloudseg uses (None if missing).
        missing: Import names of the segmentation packages that are missing.
        missing_steps: Each install step with a package missing, and which
            (``{"training": ["torch", ...]}``).
        torch_cuda: Whether torch can use a CUDA GPU.
        torch_cuda_version: The CUDA version torch was built with (None for CPU builds).
        gpus: CUDA devices torch sees.
        onnxruntime_providers: onnxruntime's available execution providers.
        device: The device ``--device auto`` picks: ``"cuda"`` or ``"cpu"``.
        device_reason: One line that says which device is used and why.
        cpu_inference: One line that says how ONNX models run on the CPU
            (``--precision auto``): OpenVINO bf16, or onnxruntime float32 and why.
        builtin_runner: What really runs the built-in models with the defaults
            (``--device auto --precision auto --runtime auto``), and why.
    """

    cloudseg: str
    python: str
    platform: str
    packages: dict[str, str | None]
    missing: list[str]
    missing_steps: dict[str, list[str]]
    torch_cuda: bool
    torch_cuda_version: str | None
    gpus: list[GpuInfo] = field(default_factory=list)
    onnxruntime_providers: list[str] = field(default_factory=list)
    device: str = "cpu"
    device_reason: str = ""
    cpu_inference: str = ""
    builtin_runner: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the report as plain JSON-serialisable data."""
        return asdict(self)

    def summary(self) -> str:
        """Return a short human-readable report, one fact a line."""
        lines = [
            f"cloudseg {self.cloudseg} on Python {self.python} ({self.platform})",
            f"device: {self.device_reason}",
            f"CPU inference: {self.cpu_inference}",
            f"built-in models run with: {self.builtin_runner}",
        ]
        for name, version in self.packages.items():
            lines.append(f"  {name}: {version or 'not installed'}")
        for step, names in self.missing_steps.items():
            lines.append(f"missing for {step}: {', '.join(names)}")
        if self.onnxruntime_providers:
            lines.append(f"onnxruntime providers: {', '.join(self.onnxruntime_providers)}")
        return "\n".join(lines)


#: The packages whose versions the report lists: GDAL, then every package of the install
#: steps that cloudseg imports (from the one list, backend/dependencies.py).
_VERSIONED = (
    "GDAL",
    *dict.fromkeys(r.distribution for s in PLUGIN_STEPS for r in s.requirements if r.module),
)


def _version_of(distribution: str) -> str | None:
    if distribution == "GDAL":
        if not is_available("rasterio"):
            return None
        import rasterio

        return str(rasterio.__gdal_version__)
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _torch_devices() -> tuple[bool, str | None, list[GpuInfo], str]:
    """Probe torch for CUDA; returns (usable, cuda build version, gpus, reason)."""
    if not is_available("torch"):
        return False, None, [], "CPU only: torch is not installed"
    import torch

    built_with = torch.version.cuda
    if built_with is None:
        return False, None, [], "CPU only: this torch build has no CUDA support"
    if not torch.cuda.is_available():
        return (
            False,
            built_with,
            [],
            (
                f"CPU only: torch is built for CUDA {built_with} but sees no usable GPU "
                "(no NVIDIA driver, or CUDA_VISIBLE_DEVICES hides it)"
            ),
        )
    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        gpus.append(
            GpuInfo(
                index,
                props.name,
                round(props.total_memory / 2**30, 1),
                f"{props.major}.{props.minor}",
            )
        )
    return True, built_with, gpus, f"GPU: {gpus[0].name} (CUDA {built_with})"


def _onnxruntime_providers() -> list[str]:
    if not is_available("onnxruntime"):
        return []
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def _cpu_inference() -> str:
    from .inference.runners import openvino_bf16_problem

    problem = openvino_bf16_problem()
    if problem is None:
        return "OpenVINO, bf16 (this CPU computes bf16 natively; --precision fp32 to avoid)"
    return f"onnxruntime, float32 ({problem})"


def _builtin_runner() -> str:
    """What the defaults run the built-in models with, from the same plan the engine uses."""
    from .errors import CloudsegError
    from .inference.runners import plan_runner
    from .models.registry import builtin_models

    models = builtin_models()
    if not models:
        return "no built-in model is installed (pip install ukis-csmask)"
    try:
        plan = plan_runner(models[0].card)
    except CloudsegError as exc:
        return f"cannot run: {exc}"
    return f"{plan.summary()} ({plan.reason})"


def environment_report() -> EnvironmentReport:
    """Inspect the environment: package versions, CUDA devices, onnxruntime providers.

    Imports torch and onnxruntime when they are installed (a second or two).

    Returns:
        The report; ``device_reason`` says in one line what ``--device auto`` uses.
    """
    cuda, cuda_version, gpus, reason = _torch_devices()
    report = EnvironmentReport(
        cloudseg=__version__,
        python=platform.python_version(),
        platform=f"{platform.system()} {platform.machine()}",
        packages={name: _version_of(name) for name in _VERSIONED},
        missing=[req.module for req in missing_requirements(SEGMENT)],
        missing_steps={
            step.name: [req.label for req in missing_requirements(step)]
            for step in PLUGIN_STEPS
            if missing_requirements(step)
        },
        torch_cuda=cuda,
        torch_cuda_version=cuda_version,
        gpus=gpus,
        onnxruntime_providers=_onnxruntime_providers(),
        device="cuda" if cuda else "cpu",
        device_reason=reason,
        cpu_inference=_cpu_inference(),
        builtin_runner=_builtin_runner(),
    )
    logger.debug("environment: %s", report.device_reason)
    return report

"""Which heavy Python packages cloudseg needs, and how to install the missing ones.

The check uses :func:`importlib.util.find_spec`, so nothing heavy is imported: QGIS can
call it while loading the plugin without paying for ``import torch``.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Requirement:
    """A Python package cloudseg needs at run time.

    Attributes:
        module: The import name (``segmentation_models_pytorch``).
        distribution: The name to give pip (``segmentation-models-pytorch``).
        purpose: What cloudseg uses it for, shown to users.
    """

    module: str
    distribution: str
    purpose: str


REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement("numpy", "numpy<2", "arrays"),
    Requirement("rasterio", "rasterio", "reading and writing rasters"),
    Requirement("onnxruntime", "onnxruntime", "running ONNX models"),
    Requirement("torch", "torch", "running and training PyTorch models"),
    Requirement("segmentation_models_pytorch", "segmentation-models-pytorch", "model zoo"),
)

# Training, evaluation and export need these as well; segmentation does not.
TRAINING_REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement("torch", "torch", "training"),
    Requirement("segmentation_models_pytorch", "segmentation-models-pytorch", "model zoo"),
    Requirement("lightning", "lightning", "the training loop"),
    Requirement("kornia", "kornia", "augmentations"),
    Requirement("yaml", "pyyaml", "training configs"),
    Requirement("onnx", "onnx", "ONNX export"),
)


def is_available(module: str) -> bool:
    """Tell whether ``module`` can be imported, without importing it.

    Args:
        module: A top-level import name.

    Returns:
        True if an import of ``module`` would find it.
    """
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_requirements(
    requirements: tuple[Requirement, ...] = REQUIREMENTS,
) -> list[Requirement]:
    """List the requirements that cannot be imported.

    Args:
        requirements: The requirements to check; all of cloudseg's by default.

    Returns:
        The missing ones, in the order given.
    """
    return [req for req in requirements if not is_available(req.module)]


def python_command() -> str:
    """Return the command that runs the Python interpreter of this process.

    Inside QGIS ``sys.executable`` is often the QGIS binary itself, so the path is
    derived from the interpreter's prefix instead.

    Returns:
        A path to (or, failing that, the name of) a Python executable.
    """
    if sys.platform == "win32":
        candidate = Path(sys.exec_prefix) / "python.exe"
    else:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        candidate = Path(sys.exec_prefix) / "bin" / f"python{version}"
    if Path(sys.executable).name.startswith("python"):
        return sys.executable
    return str(candidate) if candidate.exists() else "python3"


def install_hint(missing: list[Requirement]) -> str:
    """Say in one line what is missing and the command that installs it.

    Args:
        missing: Requirements reported by :func:`missing_requirements`.

    Returns:
        A one-line, actionable message; empty if nothing is missing.
    """
    if not missing:
        return ""
    names = ", ".join(req.module for req in missing)
    packages = " ".join(f'"{req.distribution}"' for req in missing)
    where = " (on Windows, from the OSGeo4W Shell)" if sys.platform == "win32" else ""
    return (
        f"cloudseg needs Python packages that are missing: {names}. "
        f"Install them into QGIS's Python{where} with: "
        f"{python_command()} -m pip install {packages}, then restart QGIS."
    )

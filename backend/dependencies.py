"""The one list of the Python packages cloudseg needs, by what they are needed for.

Everything that names cloudseg's packages reads them from here: ``setup.py`` (the wheel's
dependencies and extras), ``make lock`` (the locked versions in ``resources/locks``),
the QGIS plugin's installer and its messages, *Check environment*, ``cloudseg info``,
``metadata.txt``'s ``about`` and the README's table (both written by ``make lock`` and
kept true by a test).

Two groups are install steps of the QGIS plugin: :data:`SEGMENT` (ONNX models, no torch;
offered when the plugin first starts) and :data:`TRAINING` (torch and friends; offered
when a tool that needs them is first opened). :data:`SERVE` and :data:`DEV` exist only
outside QGIS.

This module uses the standard library only: ``setup.py`` loads it by its path, and QGIS
calls :func:`missing_requirements` while loading the plugin (``find_spec`` imports
nothing heavy).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass


@dataclass(frozen=True)
class Requirement:
    """A Python package cloudseg needs.

    Attributes:
        distribution: The name on the package index (``segmentation-models-pytorch``).
        specifier: The versions cloudseg works with (``>=0.3.4``); the lock picks one.
        module: The import name checked at run time; empty for a package that is only
            installed (``bokeh`` serves Dask's dashboard but is never imported by us).
        purpose: What cloudseg uses it for, shown to users.
        extras: The package's own extras (``distributed`` for ``dask[distributed]``).
        qgis: Part of QGIS's own Python (numpy, rasterio on GDAL): used as QGIS ships
            it, never installed into cloudseg's folder.
        locked: Whether the lock pins it. rasterio is not: its wheels carry a GDAL of
            their own, which must never load beside QGIS's (or Debian's, in the venv).
    """

    distribution: str
    specifier: str = ""
    module: str = ""
    purpose: str = ""
    extras: str = ""
    qgis: bool = False
    locked: bool = True

    @property
    def pip(self) -> str:
        """The requirement as pip and setuptools write it (``dask[distributed]>=2024.1``)."""
        extras = f"[{self.extras}]" if self.extras else ""
        return f"{self.distribution}{extras}{self.specifier}"

    @property
    def label(self) -> str:
        """The name users know it by: the import name, else the distribution."""
        return self.module or self.distribution


@dataclass(frozen=True)
class Group:
    """Packages needed together for one kind of work.

    Attributes:
        name: The extra's name (``training``); ``segment`` is the core of the package.
        title: What the group is for, in a user's words.
        requirements: The packages, those cloudseg imports first.
        plugin_step: Whether the QGIS plugin's installer offers the group as a step.
    """

    name: str
    title: str
    requirements: tuple[Requirement, ...]
    plugin_step: bool = False

    @property
    def modules(self) -> tuple[str, ...]:
        """The import names checked at run time."""
        return tuple(req.module for req in self.requirements if req.module)


SEGMENT = Group(
    "segment",
    "Segmentation (the built-in ONNX models, no PyTorch)",
    (
        Requirement("numpy", ">=1.23,<2", "numpy", "arrays (QGIS's own)", qgis=True),
        # Debian's python3-rasterio (OSGeo4W's on Windows) is built on QGIS's GDAL.
        Requirement(
            "rasterio", ">=1.3", "rasterio", "raster I/O (QGIS's GDAL)", qgis=True, locked=False
        ),
        Requirement("onnxruntime", ">=1.16", "onnxruntime", "running ONNX models"),
        Requirement("onnx", ">=1.15", "onnx", "model cards and float32 graphs of ONNX models"),
        Requirement("openvino", ">=2024.0", "openvino", "bf16 inference on CPUs"),
        Requirement("ukis-csmask", ">=1.0", "ukis_csmask", "the built-in cloud/shadow models"),
        Requirement("scipy", ">=1.10", "scipy", "valid-data and buffer distances"),
        Requirement("tqdm", ">=4.64", "tqdm", "progress bars in the command line"),
        Requirement("pystac", ">=1.10", "pystac", "masks and inputs as STAC Items"),
        Requirement("rio-stac", ">=0.10", "rio_stac", "STAC Items from the rasters"),
        # Batches of scenes on a Dask cluster (cloudseg segment-batch).
        Requirement("dask", ">=2024.1", "dask", "batches of scenes", extras="distributed"),
        Requirement("psutil", ">=5.9", "psutil", "memory of batch workers"),
        # The lock beside each output (backend/atomic.py): the kernel's, so it goes with
        # a killed run, and two runs that find a dead run's lock cannot both take it.
        Requirement("filelock", ">=4.1", "filelock", "one run at a time per output"),
        # TLS with a key made for each run on the local Dask cluster (distributed's
        # Security.temporary), so other users of the machine cannot join it.
        Requirement("cryptography", ">=41", "cryptography", "TLS of the local Dask cluster"),
        # botocore loads pyOpenSSL where it is importable; one built for the locked
        # cryptography keeps Debian's older one (and its warnings) out of the venv.
        Requirement("pyopenssl", ">=24.2", "", "TLS for S3, matched to cryptography"),
        Requirement("boto3", ">=1.34", "boto3", "scenes and stores on S3"),
        Requirement("python-dotenv", ">=1.0", "dotenv", "S3 credentials from .env files"),
    ),
    plugin_step=True,
)

TRAINING = Group(
    "training",
    "Training, fine-tuning, explain and ingest (PyTorch)",
    (
        Requirement("torch", ">=2.1", "torch", "training and PyTorch models"),
        Requirement("torchvision", ">=0.16", "torchvision", "encoders of the model zoo"),
        Requirement(
            "segmentation-models-pytorch", ">=0.3.4", "segmentation_models_pytorch", "model zoo"
        ),
        Requirement("lightning", ">=2.2", "lightning", "the training loop"),
        Requirement("kornia", ">=0.7", "kornia", "augmentations"),
        Requirement("tensorboard", ">=2.15", "tensorboard", "training logs"),
        Requirement("pyyaml", ">=6.0", "yaml", "training configs"),
        # Grad-CAM and HiResCAM (cloudseg explain): pure PyTorch; pytorch-grad-cam would
        # pull opencv-python, which bundles a second Qt into the QGIS process.
        Requirement("captum", ">=0.7", "captum", "explain (Grad-CAM)"),
        # Confident learning for label issues (cloudseg labels check).
        Requirement("cleanlab", ">=2.6", "cleanlab", "label issues"),
        Requirement("zarr", ">=2.18,<3", "zarr", "the training store"),
        Requirement("numcodecs", ">=0.12", "numcodecs", "compression in the store"),
        Requirement("matplotlib", ">=3.5", "matplotlib", "plots of reports"),
        # The dataset dashboard (cloudseg report): interactive plots, plotly.js inlined.
        Requirement("plotly", ">=5.24", "plotly", "the dataset dashboard"),
        # NVIDIA's NVML bindings: the GPU's energy counter for the run accounting.
        Requirement("nvidia-ml-py", ">=12", "pynvml", "GPU energy of runs"),
    ),
    plugin_step=True,
)

SERVE = Group(
    "serve",
    "The cloudseg server (web page and OGC API - Processes) and the Dask dashboard",
    (
        # bokeh serves the Dask dashboard whose link segment-batch prints. Not in the
        # plugin's steps: it needs a newer contourpy than QGIS's matplotlib comes with.
        Requirement("bokeh", ">=3.1", "", "the Dask dashboard of batches"),
        # cloudseg serve: the web page (Gradio, on FastAPI/uvicorn) and OGC API -
        # Processes (pygeoapi's Starlette app, mounted beside it on the same job queue).
        Requirement("gradio", ">=5.0", "gradio", "the web page"),
        Requirement("pygeoapi", ">=0.19", "pygeoapi", "OGC API - Processes"),
        Requirement("pyyaml", ">=6.0", "yaml", "the OGC API configuration"),
        Requirement("matplotlib", ">=3.5", "matplotlib", "previews on the web page"),
    ),
)

DEV = Group(
    "dev",
    "Tests, lint and the lock (developers)",
    (
        Requirement("pytest", ">=7.4", "pytest", "tests"),
        Requirement("pytest-qgis", ">=5.0", "pytest_qgis", "plugin tests"),
        Requirement("pytest-timeout", ">=2.3", "pytest_timeout", "a hung test fails alone"),
        Requirement("ruff", ">=0.6", "", "lint and format"),
        Requirement("import-linter", ">=2.1", "importlinter", "architecture contracts"),
        Requirement("moto", ">=5.0", "moto", "a real S3 endpoint in tests", extras="server"),
        # Drives Debian's Chromium (chromium-driver) to check the pages we ship.
        Requirement("selenium", ">=4.20", "selenium", "pages in a headless browser"),
        Requirement("uv", ">=0.5", "", "make lock"),
        Requirement("setuptools", ">=64", "setuptools", "the editable install"),
    ),
)

#: Every group, the core first.
GROUPS: tuple[Group, ...] = (SEGMENT, TRAINING, SERVE, DEV)
#: The groups the QGIS plugin installs, in the order it offers them.
PLUGIN_STEPS: tuple[Group, ...] = tuple(group for group in GROUPS if group.plugin_step)
#: pip itself, locked like the rest: the plugin's installer runs this pip (24.1 and later
#: report download progress as numbers).
PIP = Requirement("pip", ">=24.1", "pip", "the installer")
#: What ``make lock`` holds the resolution to, beyond the groups' ranges, and why.
LOCK_CONSTRAINTS: tuple[str, ...] = (
    # QGIS 3.22 on Debian 12 ships numpy 1.24, which the plugin never replaces: every locked
    # package must work with it (contourpy and scipy releases that need numpy 1.25 would
    # not), and the venv holds the same numpy line, so what is tested is what QGIS runs.
    "numpy>=1.24,<1.25",
    # The torch and torchvision releases tested here (the newest the CI machines hold).
    "torch==2.14.1",
    "torchvision==0.29.1",
    # pandas 3 (from cleanlab) needs numpy>=1.26; pandas 2 works with QGIS's numpy 1.24.
    "pandas<3",
)
#: The Python versions the lock covers (one lock for every platform, from this one up).
LOCK_PYTHON = "3.10"


def group(name: str) -> Group:
    """Return the group called ``name``.

    Raises:
        KeyError: With the valid names, if there is none.
    """
    for candidate in GROUPS:
        if candidate.name == name:
            return candidate
    raise KeyError(f"no requirement group {name!r}; choose from {[g.name for g in GROUPS]}")


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


def missing_requirements(*groups: Group) -> list[Requirement]:
    """List the requirements of ``groups`` that cannot be imported.

    Args:
        groups: The groups to check; :data:`SEGMENT` if none is given.

    Returns:
        The missing ones, each once, in the order given.
    """
    missing: dict[str, Requirement] = {}
    for checked in groups or (SEGMENT,):
        for req in checked.requirements:
            if req.module and req.module not in missing and not is_available(req.module):
                missing[req.module] = req
    return list(missing.values())


def install_hint(
    missing: list[Requirement], where: str = "cli", groups: tuple[Group, ...] = ()
) -> str:
    """Say in one line what is missing and how to install it.

    Args:
        missing: Requirements reported by :func:`missing_requirements`.
        where: ``"cli"`` (a Python environment: pip and the extra) or ``"qgis"`` (the
            plugin's installer).
        groups: Where to look the packages up; :data:`GROUPS` by default.

    Returns:
        A one-line, actionable message; empty if nothing is missing.
    """
    if not missing:
        return ""
    names = ", ".join(req.label for req in missing)
    needed = [g for g in groups or GROUPS if any(req in g.requirements for req in missing)]
    for_what = needed[0].title if needed else "this step"
    if where == "qgis":
        step = needed[0].name if needed and needed[0].name != SEGMENT.name else SEGMENT.name
        return (
            f"cloudseg needs Python packages for {for_what} that are missing: {names}. "
            "Install them with Raster > Cloud segmentation > Install packages... (no "
            "terminal, no restart), or headless with qgis_process run "
            f"cloudseg:install_packages -- STEP={step}"
        )
    extras = ",".join(g.name for g in needed if g is not SEGMENT)
    target = f'"cloudseg[{extras}]"' if extras else "cloudseg"
    return (
        f"cloudseg needs Python packages for {for_what} that are missing: {names}. "
        f"Install them with: pip install {target} (the locked versions: make install)"
    )


def missing_from(exc: BaseException, where: str = "cli") -> str | None:
    """The one-line install hint for an import of one of cloudseg's packages that failed.

    Commands check their groups up front; this is the net under them: a
    ``ModuleNotFoundError`` of a declared package becomes the same line as the check's,
    never a traceback.

    Args:
        exc: Any exception.
        where: As for :func:`install_hint`.

    Returns:
        The line, or None when ``exc`` is not the import of a declared package.
    """
    if not isinstance(exc, ImportError):
        return None
    top = (exc.name or "").split(".")[0]
    for checked in GROUPS:
        for req in checked.requirements:
            if top and req.module == top:
                return install_hint([req], where=where)
    return None

"""Values of the options that the command line, the Python API and QGIS share.

A module of its own, with no heavy imports, so that the command line and the plugin
can offer the choices without importing numpy or a model runtime.
"""

from __future__ import annotations

#: ``auto``: CUDA when a GPU is usable, else the CPU.
DEVICES = ("auto", "cpu", "cuda")
#: ``auto``: bf16 where the hardware computes it natively (CUDA GPUs through torch,
#: CPUs with AVX512-BF16/AMX through OpenVINO for ONNX models), float32 elsewhere.
PRECISIONS = ("auto", "fp32", "bf16")
#: ``auto``: torch on a CUDA GPU (ONNX exports of smp U-Nets are imported into torch),
#: OpenVINO for ONNX models on CPUs with native bf16, onnxruntime elsewhere.
RUNTIMES = ("auto", "onnxruntime", "openvino", "torch")
#: ``native``: the input's own grid (the default: as accurate as the model gets);
#: ``preview``: the model card's resolution, faster on finer input but coarser.
RESOLUTIONS = ("native", "preview")
#: Older spellings still accepted: ``model`` was the card's resolution.
RESOLUTION_ALIASES = {"model": "preview"}


def resolution_choice(value: str) -> str:
    """Return the canonical resolution choice for ``value`` (aliases resolved).

    Raises:
        ValueError: For a value that is neither a choice nor an alias.
    """
    value = RESOLUTION_ALIASES.get(value, value)
    if value not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {', '.join(RESOLUTIONS)}, not {value!r}")
    return value


#: What ``--shadow-geometry`` measurably does (dev/study_shadow_geometry.py,
#: docs/shadow-geometry.md): said by the CLI's help, the Processing dialog and the dock
#: (no percent sign: argparse formats help texts with %).
SHADOW_GEOMETRY_EFFECT = (
    "off by default: on the labeled scenes here it changed shadow IoU by -0.001 to +0.012 "
    "(cloud unchanged), removing shadow that no cloud can cast; it adds about a tenth to a "
    "run's time (docs/shadow-geometry.md)"
)

#: Unlabeled image stored around each labeled box for fine-tuning, per side, as a share
#: of the box edge (16 px around a 64 px box): the network sees what surrounds what was
#: labeled. Measured with the simulated analyst (docs/active-learning.md): ahead of boxes
#: only in all 18 rounds (3 scenes, 2 strategies), most in the first round.
DEFAULT_CONTEXT_SHARE = 0.25

#: Class activation map methods of ``cloudseg explain``: Grad-CAM and HiResCAM.
EXPLAIN_METHODS = ("gradcam", "hirescam")
#: Run options an explanation does not take: a class activation map explains the
#: network itself, before the shadow geometry step (the server's explain process and the
#: Processing algorithm leave them out).
NOT_EXPLAINED = ("shadow_geometry",)

#: Buffers of the valid-pixel mask, metres: Fmask 4's defaults (3 pixels of 30 m for
#: cloud and for cloud shadow; Zhu & Woodcock 2012, Qiu et al. 2019).
DEFAULT_BUFFER_CLOUD_M = 90.0
DEFAULT_BUFFER_SHADOW_M = 90.0

"""Values of the options that the command line, the Python API and QGIS share.

A module of its own, with no heavy imports, so that the command line and the plugin
can offer the choices without importing numpy or a model runtime.
"""

from __future__ import annotations

#: ``auto``: CUDA when a GPU is usable, else the CPU.
DEVICES = ("auto", "cpu", "cuda")
#: ``auto``: bf16 where the hardware computes it natively (CUDA with torch models, CPUs
#: with AVX512-BF16/AMX through OpenVINO for ONNX models), float32 elsewhere.
PRECISIONS = ("auto", "fp32", "bf16")
#: ``model``: the model card's resolution; ``native``: the input's grid.
RESOLUTIONS = ("model", "native")

"""ONNX graphs as onnxruntime should see them, and the cache that keeps them.

The ukis-csmask graphs store float16 weights and cast every activation back to float16
after each operation. On an x86 CPU onnxruntime has no float16 kernels for most of
those operations, so it wraps each one in casts: about 25 % slower than the same
network in float32, and less precise. :func:`prepared_onnx` widens such a graph to
float32 once (weights and casts), frees its tile height and width so other tile sizes
run, and caches the result by the source file's SHA-256, so the conversion (about a
second) happens once per model and machine.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from .. import atomic
from ..models.registry import Model

logger = logging.getLogger(__name__)

#: Bump when the conversion changes, so cached graphs are made anew.
CONVERSION_VERSION = 1


def cache_folder(kind: str) -> Path | None:
    """A folder for cached derived files of ``kind`` (``openvino``, ``onnx``...).

    ``$CLOUDSEG_CACHE_DIR/<kind>``, else ``$XDG_CACHE_HOME/cloudseg/<kind>`` or
    ``~/.cache/cloudseg/<kind>``; None (no caching) where it cannot be created.
    """
    if os.environ.get("CLOUDSEG_CACHE_DIR"):
        base = Path(os.environ["CLOUDSEG_CACHE_DIR"])
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "cloudseg"
    folder = base.expanduser() / kind
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        logger.debug("no %s cache: %s", kind, exc)
        return None
    return folder


def onnx_as_float32(proto: Any) -> Any:
    """Return a copy of an ONNX graph with float16 weights and casts turned into float32.

    The same graph and weights, without float16 rounding of weights and activations.
    """
    import onnx
    from onnx import TensorProto, numpy_helper

    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    for init in proto.graph.initializer:
        if init.data_type == TensorProto.FLOAT16:
            array = numpy_helper.to_array(init).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(array, init.name))
    for node in proto.graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT16:
                attr.i = TensorProto.FLOAT
            if attr.t is not None and attr.t.data_type == TensorProto.FLOAT16:
                attr.t.CopyFrom(
                    numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float32))
                )
    del proto.graph.value_info[:]
    return proto


def _has_float16(proto: Any) -> bool:
    from onnx import TensorProto

    return any(init.data_type == TensorProto.FLOAT16 for init in proto.graph.initializer)


def _has_fixed_tile(proto: Any) -> bool:
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    return any(d.HasField("dim_value") for d in list(dims)[2:])


def _free_tile_size(proto: Any) -> None:
    """Make the input's height and width symbolic (the networks are fully convolutional)."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    if len(dims) == 4:
        dims[2].dim_param, dims[3].dim_param = "height", "width"
    for output in proto.graph.output:
        del output.type.tensor_type.shape.dim[:]


def prepared_onnx(model: Model) -> Path | bytes:
    """The graph onnxruntime should load for ``model``: a file path, or the bytes of one.

    A graph with float16 weights or a fixed tile size is converted (see the module
    docstring) and cached; others are returned as they are. Where the cache cannot be
    written, the converted graph is returned as bytes.
    """
    import onnx

    folder = cache_folder("onnx")
    target = (
        folder / f"{model.sha256[:24]}-float32-v{CONVERSION_VERSION}.onnx"
        if folder is not None
        else None
    )
    if target is not None and target.is_file():
        return target
    proto = onnx.load(str(model.path))
    if not _has_float16(proto) and not _has_fixed_tile(proto):
        return model.path
    converted = onnx_as_float32(proto) if _has_float16(proto) else proto
    _free_tile_size(converted)
    data = converted.SerializeToString()
    if target is None:
        return data
    try:
        atomic.write_bytes(target, data)  # a reader never sees half a file
    except OSError as exc:
        logger.debug("cannot cache %s: %s", target, exc)
        return data
    logger.info("cached a float32 graph of %s in %s", model.card.name, target)
    return target

"""The processing backend of cloudseg: pure Python, it never imports QGIS.

The public API, importable from here (loaded on first use, so ``import
cloudseg.backend`` stays cheap and works where numpy, GDAL or a model runtime is
missing)::

    from cloudseg.backend import SegmentOptions, segment, open_scene, predict

- segmentation: :func:`segment`, :class:`SegmentOptions`, :class:`SegmentResult`;
  in memory: :func:`predict`, :class:`ArrayScene`, :class:`RunOptions`
- reading scenes: :func:`open_scene`
- models: :func:`load_model`, :func:`builtin_models`
- labeled data: :func:`ingest`, :func:`open_dataset`
- errors: :class:`CloudsegError` and its kinds

The subpackages hold the stages: ``raster`` (bands, SAFE products, the reader, COG
writing, polygons), ``inference`` (tiling, resampling, runtimes, the engine,
segment), ``models`` (cards, registry, networks) and ``store`` (Zarr + STAC stores).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ._version import __version__
from .errors import (
    BandError,
    CancelledError,
    CloudsegError,
    InputError,
    ModelError,
    OutputExistsError,
)

#: Public name -> the module that defines it.
_LAZY = {
    "segment": "inference.segment",
    "SegmentOptions": "inference.options",
    "SegmentResult": "inference.segment",
    "RunOptions": "inference.options",
    "predict": "inference.engine",
    "ArrayScene": "inference.engine",
    "Prediction": "inference.engine",
    "open_scene": "raster.reader",
    "load_model": "models.registry",
    "builtin_models": "models.registry",
    "ingest": "store.ingest",
    "open_dataset": "store.dataset",
}

__all__ = [
    "ArrayScene",
    "BandError",
    "CancelledError",
    "CloudsegError",
    "InputError",
    "ModelError",
    "OutputExistsError",
    "Prediction",
    "RunOptions",
    "SegmentOptions",
    "SegmentResult",
    "__version__",
    "builtin_models",
    "ingest",
    "load_model",
    "open_dataset",
    "open_scene",
    "predict",
    "segment",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

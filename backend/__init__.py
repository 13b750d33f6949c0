"""Pure-Python processing backend of cloudseg: it never imports QGIS.

Heavy dependencies (torch, onnxruntime, rasterio) are imported inside the functions
that need them, so that ``import cloudseg.backend`` is cheap and works even where
they are missing.
"""

from ._version import __version__

__all__ = ["__version__"]

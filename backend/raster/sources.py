"""Which scene cloudseg reads for a layer's GDAL data source: the standard library only.

QGIS names a layer by GDAL's data source string (a Sentinel-2 subdataset, a ``/vsizip/``
path, one band file of a folder of band files). The plugin asks here what to read, in
QGIS's own Python, before any of cloudseg's runtime packages is imported: a run on a
cloudseg server needs to know what to send and nothing else.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .bands import band_from_filename


def scene_path_from_gdal_source(source: str) -> Path:
    """The scene cloudseg should read for a GDAL data source string (as QGIS shows it).

    - ``SENTINEL2_L2A:/p/S2..SAFE/MTD_MSIL2A.xml:10m:EPSG_32632`` (GDAL's Sentinel-2
      subdatasets) and ``.../MTD_MSIL1C.xml`` give the SAFE folder (or its ``.zip``).
    - A single-band file named like a band (``B04.tif``, ``..._B04_10m.jp2``) whose folder
      holds other band files gives the folder, so that all bands are used.
    - Anything else is the file itself.

    Raises:
        InputError: If the source is not a local file or folder.
    """
    text = source.split("|")[0]
    if text.upper().startswith("SENTINEL2_"):
        parts = text.split(":")
        # SENTINEL2_L2A:<path, may hold ':' on Windows>:10m:EPSG_32632
        text = ":".join(parts[1:-2]) if len(parts) >= 4 else ":".join(parts[1:])
    if text.startswith("/vsizip/"):
        zipped = text[len("/vsizip/") :]
        cut = zipped.lower().find(".zip")
        if cut >= 0:
            return Path(zipped[: cut + 4])
    path = Path(text)
    if path.name.upper().startswith("MTD_MSI") and path.parent.suffix.upper() == ".SAFE":
        return path.parent
    if path.is_file() and band_from_filename(path.stem):
        siblings = [p for p in path.parent.iterdir() if p != path and band_from_filename(p.stem)]
        if siblings:
            return path.parent
    if not path.exists():
        raise InputError(f"{source} is not a local file or folder that cloudseg can read")
    return path

"""Turn a class raster into polygons (clouds, cloud shadows) in a GeoPackage.

Uses rasterio's ``shapes`` (GDAL's polygonize) on the class COG and GDAL's OGR to
write the GeoPackage; both come with the GDAL that rasterio and QGIS already need.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..atomic import atomic_path, check_target
from ..callbacks import ProgressCallback, no_progress
from ..errors import InputError, WriteError

logger = logging.getLogger(__name__)
LAYER_NAME = "cloudseg"


def polygonize(
    mask_path: str | Path,
    output_path: str | Path,
    classes: list[str] | None = None,
    min_area_m2: float = 0.0,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> dict[str, int]:
    """Write the polygons of the chosen classes of a cloudseg class raster.

    Each polygon has the fields ``class`` (pixel value), ``name`` and ``area_m2``.
    Polygons smaller than ``min_area_m2`` are dropped. The GeoPackage is written under
    a temporary name and renamed when complete.

    Args:
        mask_path: A class raster written by :func:`cloudseg.backend.inference.segment.segment`.
        output_path: The GeoPackage to write.
        classes: Class names to keep; default every class but ``clear``.
        min_area_m2: Smallest polygon kept, in square metres (map units squared when the
            CRS is not metric).
        overwrite: Replace an existing output.
        progress: Called with (percent, message).

    Returns:
        Number of polygons written per class name.

    Raises:
        InputError: If the raster has no cloudseg class list or a class name is unknown.
        OutputExistsError: If the output exists and ``overwrite`` is False.
    """
    output = Path(output_path).expanduser()
    check_target(output, overwrite)
    with atomic_path(output, tag="part.gpkg") as tmp:
        counts = write_polygons(mask_path, tmp, classes, min_area_m2, progress)
    logger.info("polygons written to %s: %s", output, counts)
    return counts


def write_polygons(
    mask_path: str | Path,
    gpkg_path: Path,
    classes: list[str] | None = None,
    min_area_m2: float = 0.0,
    progress: ProgressCallback | None = None,
) -> dict[str, int]:
    """Write the polygons of a class raster into ``gpkg_path`` as it is (no rename).

    See :func:`polygonize`, which writes through a temporary name; callers that publish
    several outputs together write into their own temporary path with this.

    Returns:
        Number of polygons written per class name.

    Raises:
        InputError: If the raster has no cloudseg class list or a class name is unknown.
    """
    import rasterio
    from osgeo import gdal, ogr

    progress = progress or no_progress
    with rasterio.open(mask_path) as ds:
        tag = ds.tags().get("CLOUDSEG_CLASSES")
        if not tag:
            raise InputError(f"{mask_path} is not a cloudseg class raster (no CLOUDSEG_CLASSES)")
        names = {int(c["value"]): c["name"] for c in json.loads(tag)}
        wanted = classes or [n for n in names.values() if n != "clear"]
        unknown = sorted(set(wanted) - set(names.values()))
        if unknown:
            raise InputError(
                f"unknown class(es) {', '.join(unknown)}; the raster has "
                f"{', '.join(names.values())}"
            )
        values = [v for v, n in names.items() if n in wanted]
        crs, width, height = ds.crs, ds.width, ds.height

    # GDAL traces the raster block row by block row, so memory follows the raster's
    # width, not its size; the classes to keep are a lookup table in a virtual mask band.
    source = gdal.Open(str(mask_path))
    mask = gdal.Open(_mask_vrt(Path(mask_path), width, height, values))
    driver = ogr.GetDriverByName("GPKG")
    dataset = driver.CreateDataSource(str(gpkg_path))
    if dataset is None:
        raise InputError(f"cannot create a GeoPackage at {gpkg_path}")
    try:
        layer = dataset.CreateLayer(LAYER_NAME, ogr_srs(crs), ogr.wkbMultiPolygon)
        for name, kind in (("class", ogr.OFTInteger), ("name", ogr.OFTString)):
            layer.CreateField(ogr.FieldDefn(name, kind))
        layer.CreateField(ogr.FieldDefn("area_m2", ogr.OFTReal))

        def traced(complete: float, message: object, data: object) -> int:
            progress(80.0 * complete, "tracing polygons")
            return 1

        layer.StartTransaction()
        gdal.PushErrorHandler("CPLQuietErrorHandler")  # "polygon into a multipolygon layer"
        try:
            gdal.Polygonize(
                source.GetRasterBand(1), mask.GetRasterBand(1), layer, 0, ["8CONNECTED=8"], traced
            )
        finally:
            gdal.PopErrorHandler()
        layer.CommitTransaction()
        progress(80.0, "measuring polygons")
        counts = dict.fromkeys(wanted, 0)
        small = []
        layer.StartTransaction()
        layer.ResetReading()
        for feature in layer:
            value = feature.GetField("class")
            polygon = feature.GetGeometryRef()
            area = polygon.GetArea()
            if area < min_area_m2:
                small.append(feature.GetFID())
                continue
            feature.SetField("name", names[value])
            feature.SetField("area_m2", float(area))
            feature.SetGeometry(ogr.ForceToMultiPolygon(polygon.Clone()))
            layer.SetFeature(feature)
            counts[names[value]] += 1
        for fid in small:
            layer.DeleteFeature(fid)
        layer.CommitTransaction()
    except BaseException:
        # Closed here, not when the traceback goes: a run interrupted mid-write removes
        # the unfinished file next, and GDAL must not write into it afterwards.
        layer = feature = polygon = dataset = source = mask = None
        raise
    dataset = source = mask = None  # closes and flushes the GeoPackage
    progress(100.0, f"{sum(counts.values())} polygons")
    return counts


@contextmanager
def ogr_transaction(dataset: Any, what: str = "the write") -> Iterator[None]:
    """Run a block in one transaction of an OGR dataset: all of it is written, or none.

    A write refused inside the block (an error code passed to :func:`ogr_checked`, or
    GDAL's exception where exceptions are on) or a commit refused rolls everything back
    and raises :class:`WriteError` in one line. The dataset stays open; the caller closes
    it (``dataset = None``).

    Raises:
        WriteError: If the transaction cannot start, a write in it fails, or it cannot
            be committed; nothing of the block is kept.
    """
    from osgeo import gdal

    gdal.PushErrorHandler("CPLQuietErrorHandler")  # said once, in the WriteError's line
    try:
        ogr_checked(dataset.StartTransaction(), what)
        try:
            yield
        except RuntimeError as exc:  # GDAL's own exception, with osgeo.gdal.UseExceptions()
            dataset.RollbackTransaction()
            reason = (str(exc) or type(exc).__name__).splitlines()[0]
            raise WriteError(f"{what} was refused: {reason}; nothing was changed") from None
        except BaseException:
            dataset.RollbackTransaction()
            raise
        try:
            committed = dataset.CommitTransaction()
        except RuntimeError as exc:
            committed, message = 1, str(exc)
        else:
            message = ""
        if committed != 0:
            dataset.RollbackTransaction()
            ogr_checked(committed, what, message)
    finally:
        gdal.PopErrorHandler()


def ogr_checked(code: int, what: str, message: str = "") -> None:
    """Raise :class:`WriteError` when an OGR write returned an error code (0 is success).

    Args:
        code: What ``CreateFeature``, ``SetFeature``, ``CommitTransaction``... returned.
        what: The write, in a user's words ("adding labels to coast.gpkg").
        message: GDAL's message, when known; else GDAL's last error.
    """
    if code == 0:
        return
    from osgeo import gdal

    reason = (message or gdal.GetLastErrorMsg() or f"OGR error {code}").splitlines()[0]
    raise WriteError(f"{what} was refused: {reason}; nothing was changed")


def ogr_srs(crs: Any) -> Any:
    """An OGR spatial reference for a rasterio CRS (x, y axis order), or None without one."""
    from osgeo import osr

    if crs is None:
        return None
    srs = osr.SpatialReference()
    srs.ImportFromWkt(crs.to_wkt())
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def _mask_vrt(path: Path, width: int, height: int, values: list[int]) -> str:
    """A virtual raster (VRT XML) that is 1 where ``path``'s class is in ``values``, else 0."""
    from xml.sax.saxutils import escape

    lut = ",".join(f"{v}:{int(v in values)}" for v in range(256))
    return (
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">'
        '<VRTRasterBand dataType="Byte" band="1"><ComplexSource>'
        f'<SourceFilename relativeToVRT="0">{escape(str(path))}</SourceFilename>'
        f"<SourceBand>1</SourceBand><LUT>{lut}</LUT>"
        "</ComplexSource></VRTRasterBand></VRTDataset>"
    )

"""Turn a class raster into polygons (clouds, cloud shadows) in a GeoPackage.

Uses rasterio's ``shapes`` (GDAL's polygonize) on the class COG and GDAL's OGR to
write the GeoPackage; both come with the GDAL that rasterio and QGIS already need.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..atomic import atomic_path, check_target
from ..callbacks import ProgressCallback, no_progress
from ..errors import InputError

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
    from osgeo import ogr, osr
    from rasterio.features import shapes

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
        data = ds.read(1)
        transform, crs = ds.transform, ds.crs

    progress(10.0, "tracing polygons")
    keep = np.isin(data, values)
    counts = dict.fromkeys(wanted, 0)
    driver = ogr.GetDriverByName("GPKG")
    dataset = driver.CreateDataSource(str(gpkg_path))
    if dataset is None:
        raise InputError(f"cannot create a GeoPackage at {gpkg_path}")
    srs = None
    if crs is not None:
        srs = osr.SpatialReference()
        srs.ImportFromWkt(crs.to_wkt())
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    layer = dataset.CreateLayer(LAYER_NAME, srs, ogr.wkbMultiPolygon)
    for name, kind in (("class", ogr.OFTInteger), ("name", ogr.OFTString)):
        layer.CreateField(ogr.FieldDefn(name, kind))
    layer.CreateField(ogr.FieldDefn("area_m2", ogr.OFTReal))
    definition = layer.GetLayerDefn()
    layer.StartTransaction()
    for geometry, value in shapes(data, mask=keep, transform=transform, connectivity=8):
        polygon = ogr.CreateGeometryFromJson(json.dumps(geometry))
        area = polygon.GetArea()
        if area < min_area_m2:
            continue
        feature = ogr.Feature(definition)
        feature.SetField("class", int(value))
        feature.SetField("name", names[int(value)])
        feature.SetField("area_m2", float(area))
        feature.SetGeometry(ogr.ForceToMultiPolygon(polygon))
        layer.CreateFeature(feature)
        counts[names[int(value)]] += 1
    layer.CommitTransaction()
    dataset = None  # closes and flushes the GeoPackage
    progress(100.0, f"{sum(counts.values())} polygons")
    return counts

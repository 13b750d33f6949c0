"""The label loop's geometry: boxes on a scene's grid, label polygons and their CRS.

Pure geometry, no file format (the label project's GeoPackage is
:class:`.project.LabelProject`'s):

- a box of the scene's grid (:class:`Box`), the box a proposal's bounds make on a grid
  (:func:`box_on_grid`), the window of context around it (:func:`context_window`), a
  proposal's square as a grid of its own (:func:`box_grid`), and whether two
  rectangles share more than an edge (:func:`rectangles_touch`);
- a box's label polygons rasterized on the scene's grid (:func:`rasterize_box`);
- the one CRS rule (:func:`layer_transform`) and moving a geometry by it
  (:func:`moved`); label geometries as areas (:func:`polygonal`, :func:`valid_area`);
  a geometry's area on the ground (:func:`ground_area_km2`);
- GDAL's own messages held back while the caller says one line (:func:`quiet_gdal`).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from ..raster.vectorize import ogr_srs


@dataclass(frozen=True)
class Box:
    """A square of the scene's grid: rows ``row..row + size``, columns ``col..col + size``."""

    row: int
    col: int
    size: int

    def overlaps(self, other: Box) -> bool:
        """Whether the two boxes share a pixel."""
        return not (
            self.row + self.size <= other.row
            or other.row + other.size <= self.row
            or self.col + self.size <= other.col
            or other.col + other.size <= self.col
        )

    def polygon(self, transform: Any) -> dict[str, Any]:
        """The box as a GeoJSON polygon in the CRS of ``transform``."""
        corners = [
            transform * (self.col, self.row),
            transform * (self.col + self.size, self.row),
            transform * (self.col + self.size, self.row + self.size),
            transform * (self.col, self.row + self.size),
        ]
        return {"type": "Polygon", "coordinates": [[*map(list, corners), list(corners[0])]]}

    @property
    def square(self) -> tuple[int, int, int]:
        """The box as ``(row, col, size)``."""
        return (self.row, self.col, self.size)


def box_on_grid(bounds: tuple[float, float, float, float], transform: Any) -> Box:
    """The box whose ``(xmin, ymin, xmax, ymax)`` bounds lie on the grid of ``transform``."""
    xmin, ymin, xmax, ymax = bounds
    inverse = ~transform
    col0, row0 = inverse * (xmin, ymax)
    col1, _ = inverse * (xmax, ymin)
    return Box(round(row0), round(col0), round(col1 - col0))


def rasterize_box(
    shapes: list[tuple[dict[str, Any], int]], box: Box, transform: Any, clear: int = 0
) -> np.ndarray:
    """The labels of one box on the scene's grid: later polygons over earlier ones."""
    from rasterio.features import rasterize
    from rasterio.transform import Affine

    window_transform = transform * Affine.translation(box.col, box.row)
    if not shapes:
        return np.full((box.size, box.size), clear, np.uint8)
    return rasterize(
        shapes,
        out_shape=(box.size, box.size),
        transform=window_transform,
        fill=clear,
        dtype="uint8",
    )


def context_window(box: Box, context: int, rows: int, cols: int) -> tuple[int, int, int]:
    """The window around a box with ``context`` px on each side, shifted to stay inside.

    Every box of one size gets a window of one size (``size + 2 * context``, at most the
    scene's), so training windows need no padding; the box may sit off-centre at edges.

    Returns:
        ``(row, col, size)`` of the square window.
    """
    size = min(box.size + 2 * context, rows, cols)
    row = min(max(box.row - context, 0), rows - size)
    col = min(max(box.col - context, 0), cols - size)
    return row, col, size


def rectangles_touch(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """Whether two ``(xmin, ymin, xmax, ymax)`` rectangles share more than an edge."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def box_grid(geometry: Any, pixel: float) -> tuple[Any, int]:
    """A proposal's square as a grid of ``pixel`` (CRS units): its transform and edge."""
    from rasterio.transform import from_origin

    xmin, xmax, _, ymax = geometry.GetEnvelope()
    edge = max(round((xmax - xmin) / pixel), 1)
    step = (xmax - xmin) / edge
    return from_origin(xmin, ymax, step, step), edge


@contextlib.contextmanager
def quiet_gdal() -> Iterator[None]:
    """GDAL's own error printing held back: the caller reports one line instead."""
    from osgeo import gdal

    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        yield
    finally:
        gdal.PopErrorHandler()


def spatial_reference(crs: Any) -> Any:
    """An OGR spatial reference (x, y order) for an OGR one or a rasterio CRS; None for None."""
    from osgeo import osr

    if crs is None:
        return None
    if isinstance(crs, osr.SpatialReference):
        if (crs.GetName() or "").startswith("Undefined "):
            return None  # GDAL's stand-ins for a GeoPackage layer without a CRS (srs_id 0, -1)
        srs = crs.Clone()
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        return srs
    return ogr_srs(crs)


def _crs_name(srs: Any) -> str:
    """``EPSG:32632``, else the CRS's name."""
    code = srs.GetAuthorityCode(None)
    return f"{srs.GetAuthorityName(None)}:{code}" if code else (srs.GetName() or "a custom CRS")


def layer_transform(source: Any, target: Any, what: str) -> Any:
    """The one CRS rule: how ``what``'s geometries move from ``source`` into ``target``.

    Every label read (the project's layers, a user's polygons) and every write into the
    project goes through here.

    Args:
        source: The CRS the geometries are in (OGR spatial reference or rasterio CRS;
            None: none recorded).
        target: The CRS they are wanted in (the scene's, or the layer written to).
        what: What holds them, for the message (``the labels layer of coast.gpkg``).

    Returns:
        An OGR coordinate transformation; None when the two CRSs are one (or both are
        absent: a scene and project without georeferencing, in pixel units).

    Raises:
        InputError: If only one of the two has a CRS (the geometries cannot be placed),
            or GDAL knows no transformation between them.
    """
    from osgeo import osr

    source, target = spatial_reference(source), spatial_reference(target)
    if source is None and target is None:
        return None
    if source is None:
        raise InputError(
            f"{what} has no CRS, so its geometries cannot be placed in {_crs_name(target)}; "
            "assign the CRS they were drawn in (QGIS: Set Layer CRS; ogr2ogr -a_srs)"
        )
    if target is None:
        raise InputError(
            f"{what} is in {_crs_name(source)} but the scene has no CRS; its geometries "
            "cannot be placed on it"
        )
    if source.IsSame(target):
        return None
    with quiet_gdal():
        try:
            transformation = osr.CoordinateTransformation(source, target)
        except (RuntimeError, TypeError, ValueError):
            transformation = None
    if transformation is None:
        raise InputError(
            f"{what}: GDAL knows no transformation from {_crs_name(source)} to {_crs_name(target)}"
        )
    return transformation


def moved(geometry: Any, transformation: Any, what: str) -> Any:
    """A copy of an OGR geometry in the target CRS of ``transformation`` (None: as it is).

    Raises:
        InputError: If it cannot be transformed (coordinates outside its CRS's area: a
            layer whose CRS is wrong).
    """
    shape = geometry.Clone()
    if transformation is None:
        return shape
    with quiet_gdal():
        try:
            failed = shape.Transform(transformation) != 0
        except RuntimeError:
            failed = True
    if not failed:
        failed = not all(math.isfinite(v) for v in shape.GetEnvelope())
    if failed:
        raise InputError(
            f"{what} cannot be moved into the scene's CRS (its coordinates are not valid in "
            "its layer's CRS); is the layer's CRS right?"
        )
    return shape


def polygonal(geometry: Any, what: str) -> Any:
    """A label geometry as a linear polygon or multipolygon; None if it is empty.

    Raises:
        InputError: For points, lines and collections: a label is an area.
    """
    from osgeo import ogr

    if geometry is None or geometry.IsEmpty():
        return None
    flat = ogr.GT_Flatten(geometry.GetGeometryType())
    if flat in (ogr.wkbCurvePolygon, ogr.wkbMultiSurface):
        geometry = geometry.GetLinearGeometry()
        flat = ogr.GT_Flatten(geometry.GetGeometryType())
    if flat not in (ogr.wkbPolygon, ogr.wkbMultiPolygon):
        name = geometry.GetGeometryName().lower()
        raise InputError(f"{what} is a {name}, not a polygon; labels are areas")
    return geometry


def valid_area(geometry: Any, what: str) -> Any:
    """A label polygon whose rings cross themselves, repaired into the area it encloses.

    A ring drawn across itself (a bow-tie) is shown by QGIS as its filled parts, and
    the project's labels are rasterized the same way (labels-to-store, fine-tune); GEOS
    refuses such a polygon in every overlay. It is repaired with ``MakeValid`` (the
    GEOS "linework" rule: every part the rings enclose, a bow-tie's two lobes), and a
    warning names the polygon and where it crosses itself. A valid polygon is returned
    as it is.

    Raises:
        InputError: For a polygon whose rings enclose no area at all (a ring folded
            onto a line): one line naming it and where.
    """
    from osgeo import gdal, ogr

    with quiet_gdal():
        gdal.ErrorReset()
        if geometry.IsValid():
            return geometry
        reason = gdal.GetLastErrorMsg().strip() or "its rings are not valid"
        try:
            repaired = geometry.MakeValid()
        except RuntimeError:
            repaired = None
    parts = ogr.Geometry(ogr.wkbMultiPolygon)
    if repaired is not None:
        flat = ogr.GT_Flatten(repaired.GetGeometryType())
        pieces = (
            [repaired.GetGeometryRef(i) for i in range(repaired.GetGeometryCount())]
            if flat in (ogr.wkbGeometryCollection, ogr.wkbMultiPolygon)
            else [repaired]
        )
        for piece in pieces:
            kind = ogr.GT_Flatten(piece.GetGeometryType())
            if kind == ogr.wkbPolygon:
                parts.AddGeometry(piece)
            elif kind == ogr.wkbMultiPolygon:
                for i in range(piece.GetGeometryCount()):
                    parts.AddGeometry(piece.GetGeometryRef(i))
    if parts.IsEmpty() or parts.GetArea() <= 0:
        raise InputError(f"{what} encloses no area ({reason}); draw it again")
    logging.getLogger(__name__).warning(
        "%s is not a valid polygon (%s): stored as the area its rings enclose", what, reason
    )
    return parts


def ground_area_km2(geometry: Any, srs: Any) -> float:
    """The area of an OGR ``geometry`` in ``srs`` on the ground, km².

    Measured in a Lambert azimuthal equal-area projection centred on the geometry, so a
    layer in degrees (EPSG:4326) or in Web Mercator gives the area a UTM layer gives;
    without a CRS, in the geometry's own units (pixels of an unreferenced scene).
    """
    from osgeo import osr

    if srs is None or not (srs.IsProjected() or srs.IsGeographic()):
        return geometry.GetArea() / 1e6
    source = srs.Clone()
    source.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    degrees = source.CloneGeogCS()
    degrees.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    centre = geometry.Centroid()
    centre.Transform(osr.CoordinateTransformation(source, degrees))
    equal_area = osr.SpatialReference()
    equal_area.SetLAEA(centre.GetY(), centre.GetX(), 0, 0)
    equal_area.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    on_ground = geometry.Clone()
    on_ground.Transform(osr.CoordinateTransformation(source, equal_area))
    return on_ground.GetArea() / 1e6


__all__ = [
    "Box",
    "box_grid",
    "box_on_grid",
    "context_window",
    "ground_area_km2",
    "layer_transform",
    "moved",
    "polygonal",
    "quiet_gdal",
    "rasterize_box",
    "rectangles_touch",
    "spatial_reference",
    "valid_area",
]

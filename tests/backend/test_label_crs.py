"""The label project's one CRS rule and its checks of label values, as functions."""

from __future__ import annotations

import pytest
from osgeo import ogr, osr
from rasterio.crs import CRS

from cloudseg.backend.active.geometry import ground_area_km2, layer_transform, moved, polygonal
from cloudseg.backend.active.project import class_value
from cloudseg.backend.errors import InputError


def _srs(code: int) -> osr.SpatialReference:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(code)
    return srs


def test_the_same_crs_needs_no_transformation_and_two_missing_ones_neither():
    assert layer_transform(_srs(32632), CRS.from_epsg(32632), "layer") is None
    assert layer_transform(None, None, "layer") is None


def test_a_vertex_moved_into_degrees_and_back_lands_where_it_was():
    square = ogr.CreateGeometryFromWkt(
        "POLYGON((500000 5290000,501920 5290000,501920 5288080,500000 5288080,500000 5290000))"
    )
    there = moved(square, layer_transform(_srs(32632), CRS.from_epsg(4326), "l"), "square")
    assert 8.9 < there.GetEnvelope()[0] < 9.1  # longitude of UTM 32N's central meridian
    back = moved(there, layer_transform(_srs(4326), _srs(32632), "l"), "square")
    for a, b in zip(square.GetEnvelope(), back.GetEnvelope(), strict=True):
        assert abs(a - b) < 1e-6


@pytest.mark.parametrize("missing", ["layer", "scene"])
def test_a_missing_crs_on_one_side_is_refused(missing):
    source, target = (None, _srs(32632)) if missing == "layer" else (_srs(32632), None)
    with pytest.raises(InputError, match="no CRS"):
        layer_transform(source, target, "the labels layer of p.gpkg")


def test_gdal_s_undefined_srs_of_a_geopackage_counts_as_none(tmp_path):
    path = tmp_path / "p.gpkg"
    dataset = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    dataset.CreateLayer("labels", None, ogr.wkbMultiPolygon)
    dataset = None
    dataset = ogr.Open(str(path))  # kept open while its layer is used
    layer_srs = dataset.GetLayerByName("labels").GetSpatialRef()
    with pytest.raises(InputError, match="has no CRS"):
        layer_transform(layer_srs, _srs(32632), "the labels layer of p.gpkg")
    dataset = None


def test_coordinates_invalid_in_their_crs_are_refused():
    utm = ogr.CreateGeometryFromWkt("POINT(500000 5290000)")  # metres read as degrees
    with pytest.raises(InputError, match="is the layer's CRS right"):
        moved(utm, layer_transform(_srs(4326), _srs(32632), "l"), "polygon 1")


@pytest.mark.parametrize(
    ("raw", "value"), [(1, 1), ("2", 2), (" 0 ", 0), (1.0, 1), (255, 255), (None, None)]
)
def test_class_values_are_whole_numbers(raw, value):
    assert class_value(raw, "polygon 1") == value


@pytest.mark.parametrize("raw", ["cloud", "", 1.5, 256, -1, "3.5"])
def test_other_class_values_are_refused(raw):
    with pytest.raises(InputError, match="not a class value"):
        class_value(raw, "polygon 1")


@pytest.mark.parametrize(
    ("wkt", "ok"),
    [
        ("POLYGON((0 0,1 0,1 1,0 0))", True),
        ("MULTIPOLYGON(((0 0,1 0,1 1,0 0)))", True),
        ("CURVEPOLYGON(CIRCULARSTRING(0 0,1 1,2 0,1 -1,0 0))", True),
        ("POINT(0 0)", False),
        ("LINESTRING(0 0,1 1)", False),
        ("GEOMETRYCOLLECTION(POLYGON((0 0,1 0,1 1,0 0)))", False),
    ],
)
def test_labels_are_polygons(wkt, ok):
    shape = ogr.CreateGeometryFromWkt(wkt)
    if ok:
        assert ogr.GT_Flatten(polygonal(shape, "x").GetGeometryType()) in (
            ogr.wkbPolygon,
            ogr.wkbMultiPolygon,
        )
    else:
        with pytest.raises(InputError, match="not a polygon"):
            polygonal(shape, "x")


@pytest.mark.parametrize("code", [32632, 4326, 3857])
def test_a_box_s_ground_area_is_the_same_in_any_crs_of_its_layer(code):
    """The dock's "km² labeled" of a project reprojected to degrees is not 0.00."""
    square = ogr.CreateGeometryFromWkt(
        "POLYGON((500000 5290000,501920 5290000,501920 5288080,500000 5288080,500000 5290000))"
    )
    there = moved(square, layer_transform(_srs(32632), _srs(code), "l"), "square")
    area = ground_area_km2(there, _srs(code))
    assert area == pytest.approx(1.92 * 1.92, rel=2e-3)  # UTM's scale factor: 0.08 %

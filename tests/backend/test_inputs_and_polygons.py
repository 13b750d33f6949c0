"""Layer sources map to the scene cloudseg reads; extents crop; masks become polygons."""

import numpy as np
import pytest
import rasterio

from cloudseg.backend.errors import InputError
from cloudseg.backend.inference.segment import SegmentOptions, segment
from cloudseg.backend.raster.sources import scene_path_from_gdal_source
from cloudseg.backend.raster.vectorize import polygonize


def test_gdal_sentinel2_subdataset_gives_the_safe_folder(tmp_path):
    safe = tmp_path / "S2A_MSIL2A_20200101T101421_N0214_R022_T32TQM_20200101T122121.SAFE"
    safe.mkdir()
    source = f"SENTINEL2_L2A:{safe}/MTD_MSIL2A.xml:10m:EPSG_32632"
    assert scene_path_from_gdal_source(source) == safe
    zipped = f"SENTINEL2_L1C:/vsizip/{tmp_path}/S2B.zip/S2B.SAFE/MTD_MSIL1C.xml:20m:EPSG_32632"
    assert scene_path_from_gdal_source(zipped) == tmp_path / "S2B.zip"


def test_one_band_file_of_a_band_folder_gives_the_folder(band_folder):
    assert scene_path_from_gdal_source(str(band_folder / "B04.tif")) == band_folder


def test_a_multiband_file_is_itself_and_a_missing_one_is_an_error(multiband, tmp_path):
    assert scene_path_from_gdal_source(f"{multiband}|option:x") == multiband
    with pytest.raises(InputError, match="not a local file"):
        scene_path_from_gdal_source("https://example.com/tile.tif")


@pytest.mark.slow
def test_extent_crops_to_whole_pixels_and_outside_is_refused(multiband, tmp_path):
    with rasterio.open(multiband) as ds:
        b, res = ds.bounds, ds.res[0]
    bounds = (b.left + 10.5 * res, b.bottom + 3 * res, b.left + 200 * res, b.top - 7.2 * res)
    result = segment(
        multiband, tmp_path / "m.tif", SegmentOptions(product_level="L2A", bounds=bounds)
    )
    with rasterio.open(tmp_path / "m.tif") as ds:
        assert ds.bounds.left == pytest.approx(b.left + 10 * res)
        assert ds.bounds.top == pytest.approx(b.top - 7 * res)
        assert (ds.width, ds.height) == (190, result.height)
        assert ds.height == 512 - 3 - 7
    with pytest.raises(InputError, match="does not overlap"):
        segment(
            multiband,
            tmp_path / "n.tif",
            SegmentOptions(bounds=(b.right + 10, b.bottom, b.right + 100, b.top)),
        )
    assert not (tmp_path / "n.tif").exists()


@pytest.mark.slow
def test_polygons_keep_cloud_and_shadow_above_the_minimum_area(multiband, tmp_path):
    from osgeo import ogr

    mask = tmp_path / "m.tif"
    segment(multiband, mask, SegmentOptions(product_level="L2A"))
    with rasterio.open(mask) as ds:
        classes = ds.read(1)
        pixel = abs(ds.transform.a * ds.transform.e)
    counts = polygonize(mask, tmp_path / "all.gpkg")
    assert set(counts) == {"cloud", "cloud shadow"} and counts["cloud"] > 0
    dataset = ogr.Open(str(tmp_path / "all.gpkg"))
    features = list(dataset.GetLayer(0))
    area = {name: 0.0 for name in counts}
    for feature in features:
        area[feature.GetField("name")] += feature.GetField("area_m2")
    assert area["cloud"] == pytest.approx((classes == 1).sum() * pixel)
    assert area["cloud shadow"] == pytest.approx((classes == 2).sum() * pixel)

    big = polygonize(mask, tmp_path / "big.gpkg", classes=["cloud"], min_area_m2=50 * pixel)
    assert set(big) == {"cloud"} and 0 < big["cloud"] < counts["cloud"]
    with pytest.raises(InputError, match="unknown class"):
        polygonize(mask, tmp_path / "x.gpkg", classes=["snow"])
    with pytest.raises(InputError, match="not a cloudseg class raster"):
        polygonize(multiband, tmp_path / "y.gpkg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.gpkg", "big.gpkg", "m.tif"]
    assert np.isin(classes, [0, 1, 2]).all()


@pytest.mark.slow
def test_segment_writes_polygons_and_a_late_cancel_removes_everything(multiband, tmp_path):
    mask, polygons = tmp_path / "m.tif", tmp_path / "p.gpkg"
    options = SegmentOptions(product_level="L2A", polygons=polygons, min_polygon_area_m2=2000)
    result = segment(multiband, mask, options)
    assert result.polygons == polygons and polygons.is_file()
    assert result.polygon_counts == polygonize(mask, tmp_path / "again.gpkg", min_area_m2=2000)

    from cloudseg.backend.errors import CancelledError

    late = tmp_path / "late"
    late.mkdir()
    seen = []
    options = SegmentOptions(
        product_level="L2A", polygons=late / "p.gpkg", probabilities=late / "probs.tif"
    )
    with pytest.raises(CancelledError):
        segment(
            multiband,
            late / "m.tif",
            options,
            progress=lambda percent, message: seen.append(percent),
            cancelled=lambda: bool(seen) and seen[-1] >= 99.0,
        )
    assert list(late.iterdir()) == []

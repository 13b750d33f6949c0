"""BlockRowWriter: rows arrive in chunks of any size; the file gets them all, in place."""

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from cloudseg.backend.raster.cog import BlockRowWriter, block_profile

PROFILE = {
    "width": 300,
    "height": 1100,
    "crs": "EPSG:32633",
    "transform": from_origin(500000, 5000000, 10, 10),
}


def test_chunks_of_any_size_land_in_the_right_rows(tmp_path):
    expected = np.random.default_rng(0).integers(0, 250, (2, 1100, 300), dtype=np.uint8)
    path = tmp_path / "out.tif"
    with rasterio.open(path, "w", **block_profile(PROFILE, 2, "uint8", 255)) as ds:
        writer = BlockRowWriter(ds)
        row = 0
        for size in (1, 203, 204, 511, 100, 81):
            writer.write(row, expected[:, row : row + size])
            row += size
        writer.close()
    with rasterio.open(path) as ds:
        np.testing.assert_array_equal(ds.read(), expected)


def test_rows_out_of_order_or_missing_are_refused(tmp_path):
    with rasterio.open(tmp_path / "out.tif", "w", **block_profile(PROFILE, 1, "uint8", 255)) as ds:
        writer = BlockRowWriter(ds)
        writer.write(0, np.zeros((1, 10, 300), np.uint8))
        with pytest.raises(ValueError, match="in order"):
            writer.write(20, np.zeros((1, 10, 300), np.uint8))
        with pytest.raises(ValueError, match="only 0 of 1100 rows"):
            writer.close()

"""Same model, same resolution: our engine agrees with ukis-csmask's own CSmask."""

import numpy as np
import pytest
import rasterio
from ukis_csmask.mask import CSmask

from cloudseg.backend.inference.segment import SegmentOptions, segment

UKIS_BANDS = ["blue", "green", "red", "nir", "swir16", "swir22"]


@pytest.mark.slow
@pytest.mark.parametrize("scene", ["landsat5", "landsat7"])
def test_pixel_agreement_with_ukis_csmask_on_labeled_real_scenes(real_data, tmp_path, scene):
    data = np.load(real_data / "ukis_landsat" / f"{scene}.npz")
    img = data["img"].astype(np.float32)  # (512, 512, 6) TOA reflectance 0-1
    raster = tmp_path / f"{scene}.tif"
    with rasterio.open(
        raster, "w", driver="GTiff", width=512, height=512, count=6, dtype="float32"
    ) as dst:
        dst.write(np.moveaxis(img, -1, 0))
        for i, name in enumerate(UKIS_BANDS, start=1):
            dst.set_band_description(i, name)

    ours = tmp_path / "ours.tif"
    result = segment(
        raster, ours, SegmentOptions(model="ukis-csmask-6b-l1c", resolution="native", scale=1.0)
    )
    with rasterio.open(ours) as ds:
        mask = ds.read(1)
    theirs = CSmask(img.copy(), band_order=UKIS_BANDS, product_level="l1c").csm[..., 0]
    agreement = (mask == theirs).mean()
    assert agreement >= 0.99, f"{agreement:.4f}"

    # Against the labels (0 shadow, 4 cloud, 1/3 clear): both are far better than chance.
    labels = data["msk"][..., 0]
    truth = np.select([labels == 4, labels == 0], [1, 2], default=0)
    assert (mask == truth).mean() > 0.8
    assert result.class_percent["cloud"] > 1

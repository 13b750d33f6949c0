#!/usr/bin/env python3
"""Build a Sentinel-2 SAFE product (folder or zip) from real single-band GeoTIFFs.

The layout and metadata follow ESA's products (MTD_MSIL1C.xml / MTD_MSIL2A.xml,
GRANULE/<id>/IMG_DATA[/R10m]/<tile>_<time>_<band>[_10m].jp2, lossless JPEG 2000). With
``baseline >= 04.00`` the digital numbers carry the +1000 radiometric offset that real
products have, and the metadata lists it, so reading the product must undo it.

Usage: make_safe.py BAND_DIR OUT_DIR [--level L2A] [--baseline 04.00] [--zip]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import rasterio

BAND_IDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10",
            "B11", "B12"]  # fmt: skip
TILE, TIME = "T36MXX", "20200101T080000"


def make_safe(
    band_dir: Path,
    out_dir: Path,
    level: str = "L2A",
    baseline: str = "04.00",
    as_zip: bool = False,
    sun: tuple[float, float] | None = None,
) -> Path:
    """Write the product; return the .SAFE folder or the .zip path.

    ``sun`` (zenith, azimuth in degrees) also writes the granule's ``MTD_TL.xml``.
    """
    offset = 1000 if tuple(int(p) for p in baseline.split(".")) >= (4, 0) else 0
    name = f"S2B_MSI{level}_{TIME}_N{baseline.replace('.', '')}_R000_{TILE}_{TIME}.SAFE"
    root = out_dir / name
    granule = f"GRANULE/{level}_{TILE}_A000000_{TIME}/IMG_DATA"
    image_files = []
    for src_path in sorted(band_dir.glob("B*.tif")):
        band = src_path.stem
        with rasterio.open(src_path) as src:
            data = src.read(1).astype(np.uint16)
            profile = src.profile
        valid = data > 0
        data[valid] += offset  # real products: DN = reflectance * 10000 + 1000
        if level == "L2A":
            rel = f"{granule}/R10m/{TILE}_{TIME}_{band}_10m"
        else:
            rel = f"{granule}/{TILE}_{TIME}_{band}"
        target = root / f"{rel}.jp2"
        target.parent.mkdir(parents=True, exist_ok=True)
        profile.update(
            driver="JP2OpenJPEG", dtype="uint16", count=1, nodata=0, QUALITY=100, REVERSIBLE="YES"
        )
        for key in ("tiled", "blockxsize", "blockysize", "compress", "interleave"):
            profile.pop(key, None)
        with rasterio.open(target, "w", **profile) as dst:
            dst.write(data, 1)
        image_files.append(rel)

    files = "\n".join(f"<IMAGE_FILE>{rel}</IMAGE_FILE>" for rel in image_files)
    if level == "L2A":
        quant = '<BOA_QUANTIFICATION_VALUE unit="none">10000</BOA_QUANTIFICATION_VALUE>'
        offsets = "".join(
            f'<BOA_ADD_OFFSET band_id="{i}">{-offset}</BOA_ADD_OFFSET>'
            for i in range(len(BAND_IDS))
        )
        offsets = f"<BOA_ADD_OFFSET_VALUES_LIST>{offsets}</BOA_ADD_OFFSET_VALUES_LIST>"
        tag, xsd = "Level-2A_User_Product", "User_Product_Level-2A.xsd"
    else:
        quant = '<QUANTIFICATION_VALUE unit="none">10000</QUANTIFICATION_VALUE>'
        offsets = "".join(
            f'<RADIO_ADD_OFFSET band_id="{i}">{-offset}</RADIO_ADD_OFFSET>'
            for i in range(len(BAND_IDS))
        )
        offsets = f"<Radiometric_Offset_List>{offsets}</Radiometric_Offset_List>"
        tag, xsd = "Level-1C_User_Product", "User_Product_Level-1C.xsd"
    if offset == 0:
        offsets = ""
    xml = f"""<?xml version="1.0" encoding="UTF-8"?>
<n1:{tag} xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/{xsd}">
<n1:General_Info><Product_Info>
<PRODUCT_START_TIME>2020-01-01T08:00:00.024Z</PRODUCT_START_TIME>
<PROCESSING_LEVEL>Level-{level[1:]}</PROCESSING_LEVEL>
<PRODUCT_TYPE>S2MSI{level[1:]}</PRODUCT_TYPE>
<PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE>
<Product_Organisation><Granule_List><Granule granuleIdentifier="{TILE}" imageFormat="JPEG2000">
{files}
</Granule></Granule_List></Product_Organisation>
</Product_Info>
<Product_Image_Characteristics>
<QUANTIFICATION_VALUES_LIST>{quant}</QUANTIFICATION_VALUES_LIST>
{offsets}
</Product_Image_Characteristics>
</n1:General_Info>
</n1:{tag}>
"""
    (root / f"MTD_MSI{level}.xml").write_text(xml, encoding="utf-8")
    if sun is not None:  # the tile metadata's mean sun angles, as ESA writes them
        zenith, azimuth = sun
        tile_xml = f"""<?xml version="1.0" encoding="UTF-8"?>
<n1:Level-{level[1:]}_Tile_ID xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/S2_PDI_Level-{level[1:]}_Tile_Metadata.xsd">
<n1:Geometric_Info><Tile_Angles>
<Mean_Sun_Angle>
<ZENITH_ANGLE unit="deg">{zenith}</ZENITH_ANGLE>
<AZIMUTH_ANGLE unit="deg">{azimuth}</AZIMUTH_ANGLE>
</Mean_Sun_Angle>
</Tile_Angles></n1:Geometric_Info>
</n1:Level-{level[1:]}_Tile_ID>
"""
        granule_dir = root / granule.removesuffix("/IMG_DATA")
        (granule_dir / "MTD_TL.xml").write_text(tile_xml, encoding="utf-8")
    if not as_zip:
        return root
    archive = shutil.make_archive(str(out_dir / name.replace(".SAFE", "")), "zip", out_dir, name)
    shutil.rmtree(root)
    return Path(archive)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("band_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--level", choices=["L1C", "L2A"], default="L2A")
    parser.add_argument("--baseline", default="04.00")
    parser.add_argument("--zip", action="store_true")
    args = parser.parse_args()
    print(make_safe(args.band_dir, args.out_dir, args.level, args.baseline, args.zip))


if __name__ == "__main__":
    main()

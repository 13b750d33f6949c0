#!/usr/bin/env python3
"""docs/serve.png: the web page of ``cloudseg serve`` after a run, in headless Chromium.

Starts a real loopback server, uploads a real Sentinel-2 L2A chip (On Cloud N ``adwp``,
stacked into one GeoTIFF with named bands), asks for the L2A model and Grad-CAM, waits for
the result and saves the page; the page must show it without console errors.

Usage: screenshot_serve.py --data ../shared/data/real --out docs/serve.png
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from browser import chromium, upload, wait_for  # noqa: E402
from serving import start_server  # noqa: E402

#: The command of the Python running this script (its venv's).
CLOUDSEG = Path(sys.executable).parent / "cloudseg"

BANDS = ("B02", "B03", "B04", "B08")


def stack(chip: Path, target: Path) -> Path:
    """The chip's band files as one GeoTIFF whose band descriptions name the bands."""
    import numpy as np
    import rasterio

    arrays = [rasterio.open(chip / f"{b}.tif").read(1) for b in BANDS]
    with rasterio.open(chip / "B02.tif") as src:
        profile = src.profile | {"count": len(BANDS)}
    with rasterio.open(target, "w", **profile) as dst:
        dst.write(np.stack(arrays))
        for i, band in enumerate(BANDS, start=1):
            dst.set_band_description(i, band)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scene = stack(args.data / "oncloudn_l2a/adwp", Path(tmp) / "adwp.tif")
        server = start_server(None, Path(tmp) / "work", command=CLOUDSEG)
        try:
            url = server.url
            browser = chromium(1500, 1150)
            try:
                browser.get(url + "/")
                upload(browser, "scene-upload", scene)
                level = browser.find_element("css selector", "#option-product_level input")
                level.click()
                option = "//*[@role='option' and contains(normalize-space(), 'L2A')]"
                wait_for(lambda: browser.find_elements("xpath", option), 10, "the level choices")
                browser.find_element("xpath", option).click()
                browser.find_element("xpath", "//label[contains(., 'Grad-CAM')]").click()
                browser.find_element("id", "run").click()
                wait_for(
                    lambda: "Done" in browser.find_element("id", "status").text, 600, "the run"
                )
                errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
                if errors:
                    raise SystemExit(f"console errors: {errors}")
                browser.save_screenshot(str(args.out))
            finally:
                browser.quit()
        finally:
            server.stop()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

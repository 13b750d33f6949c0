#!/usr/bin/env python3
"""docs/dashboard.png: the dataset dashboard of a real store, as headless Chromium shows it.

The labeled ukis-csmask Sentinel-2 scene of the shared data is cut into 16 chips of
128 px (two of them labeled all clear, as a mislabeled archive would have), ingested,
checked with ukis-csmask-6b-l1c (which did not train on it), and the store's dashboard
is opened in Debian's Chromium; the page must load without console errors.

Usage: screenshot_dashboard.py --data ../shared/data/real --out docs/dashboard.png
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

CHIP = 128
MISLABELED = ("chip-r256-c384", "chip-r000-c256")


def checked_store(data: Path, work: Path) -> tuple[Path, Path]:
    """Build the store of chips (two mislabeled) in ``work`` and check it.

    Returns:
        The store and the check's report (``label_issues.json``).
    """
    from rasterio.transform import from_origin

    from cloudseg.backend.active.labels import LabeledWindow, windows_to_store
    from cloudseg.training.label_check import check_labels

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dev"))  # the labeled scenes
    from reference_scenes import SIX_BANDS, labeled_scenes

    scene = next(s for s in labeled_scenes(data, work / "s") if s.name == "ukis-s2-l1c")
    image, truth = np.moveaxis(scene.reflectance, -1, 0), scene.reference()
    windows = []
    for r in range(0, 512, CHIP):
        for c in range(0, 512, CHIP):
            name = f"chip-r{r:03d}-c{c:03d}"
            mask = truth[r : r + CHIP, c : c + CHIP]
            mask = np.zeros_like(mask) if name in MISLABELED else mask
            transform = from_origin(500000 + c * 30, 5300000 - r * 30, 30, 30)
            reflectance = image[:, r : r + CHIP, c : c + CHIP]
            windows.append(LabeledWindow(name, reflectance, mask, transform, "EPSG:32632"))
    store = work / "ukis-s2-chips"
    classes = ["clear", "cloud", "cloud shadow"]
    windows_to_store(windows, list(SIX_BANDS), classes, store, env_file=None,
                     name="cloudseg-dataset")  # fmt: skip
    result = check_labels(store, "ukis-csmask-6b-l1c", work / "check", window=64)
    return store, result.report


def main() -> int:
    """Build and check the store, render its dashboard, save the screenshot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("docs/dashboard.png"))
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from browser import chromium, load

    from cloudseg.backend.store.dashboard import dashboard_html
    from cloudseg.backend.store.dataset import open_dataset

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        store, _ = checked_store(args.data, work)
        page = work / "dashboard.html"
        page.write_text(dashboard_html(open_dataset(store)), encoding="utf-8")
        browser = chromium(1280, 2400)
        try:
            errors = load(browser, page, plots=6)
            height = browser.execute_script("return document.body.scrollHeight")
            browser.set_window_size(1280, height + 40)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(str(args.out))
        finally:
            browser.quit()
    if errors:
        print(f"console errors: {errors}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

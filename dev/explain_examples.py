#!/usr/bin/env python3
"""Real examples for docs/explain.md: image, labels, mask and class activation maps.

On the labeled ukis-csmask Sentinel-2 scene (6 bands, 30 m) of the shared data, a
256 x 256 px window is segmented by the built-in ``ukis-csmask-6b-l1c`` and explained
with ``cloudseg explain`` (Grad-CAM and HiResCAM, cloud and cloud shadow). Writes the
figure (``--plot``) and what each map took (``--out``, JSON with the machine).

Usage: explain_examples.py --data ../shared/data/real --plot docs/explain.png \
           --out dev/results/explain_examples.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from benchmark_common import write_results

from cloudseg.backend.inference.explain import explain
from cloudseg.backend.inference.segment import SegmentOptions, segment

MODEL = "ukis-csmask-6b-l1c"
#: The window: rows and columns 128-384 of the 512 x 512 scene (clouds, shadows, land).
WINDOW = (128, 128, 256)


def main() -> int:
    """Segment and explain the window; write the figure and the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--plot", type=Path, default=Path("docs/explain.png"))
    parser.add_argument("--out", type=Path, default=Path("dev/results/explain_examples.json"))
    args = parser.parse_args()
    import rasterio
    from reference_scenes import labeled_scenes

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        scene = next(
            s for s in labeled_scenes(args.data, work / "scenes") if s.name == "ukis-s2-l1c"
        )
        row, col, size = WINDOW
        with rasterio.open(scene.image) as ds:
            t = ds.transform
            left, top = t * (col, row)
            right, bottom = t * (col + size, row + size)
        bounds = (left, bottom, right, top)
        mask = work / "mask.tif"
        seg = segment(scene.image, mask, SegmentOptions(model=MODEL, bounds=bounds))
        maps, runs = {}, {}
        for method in ("gradcam", "hirescam"):
            out = work / f"{method}.tif"
            result = explain(
                scene.image, out, ["cloud", "cloud shadow"], method, MODEL, bounds=bounds
            )
            with rasterio.open(out) as ds:
                maps[method] = ds.read()
            runs[method] = {
                "seconds": result.seconds,
                "layer": result.layer,
                "runner": result.runner,
            }
        with rasterio.open(mask) as ds:
            predicted = ds.read(1)
        truth = scene.reference()[row : row + size, col : col + size]
        rgb = scene.reflectance[row : row + size, col : col + size, [2, 1, 0]]
    plot(rgb, truth, predicted, maps, args.plot)
    report = {
        "what": "class activation maps of a 256 x 256 px window of the ukis-csmask Sentinel-2 "
        "scene (30 m), cloud and cloud shadow",
        "model": MODEL,
        "window": {"row": row, "col": col, "size": size},
        "segment_seconds": seg.seconds,
        "explain": runs,
        "share_of_cloud_map_on_predicted_cloud": {
            m: round(float(maps[m][0][predicted == 1].sum() / max(maps[m][0].sum(), 1e-9)), 3)
            for m in maps
        },
        "predicted_cloud_share": round(float((predicted == 1).mean()), 3),
    }
    write_results(report, ("cloudseg", "torch", "captum", "numpy"), args.out)
    return 0


def plot(
    rgb: np.ndarray,
    truth: np.ndarray,
    predicted: np.ndarray,
    maps: dict[str, np.ndarray],
    path: Path,
) -> None:
    """Image, labels, mask, and the four maps, in one row of panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    classes = ListedColormap(["#3a7d44", "#00e5ff", "#7b1fa2"])
    stretch = np.clip(rgb / np.percentile(rgb, 99), 0, 1)
    panels = [
        ("image (B04, B03, B02)", stretch, None),
        ("labels", truth, classes),
        ("mask (ukis-csmask-6b-l1c)", predicted, classes),
        ("Grad-CAM: cloud", maps["gradcam"][0], "inferno"),
        ("HiResCAM: cloud", maps["hirescam"][0], "inferno"),
        ("Grad-CAM: cloud shadow", maps["gradcam"][1], "inferno"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.2))
    for ax, (title, data, cmap) in zip(axes, panels, strict=True):
        if cmap is None:
            ax.imshow(data)
        elif isinstance(cmap, str):
            ax.imshow(np.nan_to_num(data), cmap=cmap, vmin=0, vmax=1)
        else:
            ax.imshow(
                np.where(data == 255, 0, data), cmap=cmap, vmin=0, vmax=2, interpolation="nearest"
            )
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())

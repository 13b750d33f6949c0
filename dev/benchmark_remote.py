#!/usr/bin/env python3
"""What running on a cloudseg server costs over running here, on the same machine.

What the QGIS plugin does in each mode, timed in one process against a real
``cloudseg serve --token`` on a loopback port of the same machine (so the difference
is the protocol's cost, not another machine's speed):

- **local**: :func:`cloudseg.backend.inference.segment.segment` with the mask, the
  valid-pixel mask and the polygons (what the dock writes by default plus both
  optional outputs), in this process, as the plugin's task runs it.
- **server, upload**: :func:`cloudseg.backend.remote.run_on_server` with the scene
  outside the server's roots: the scene streamed to ``PUT /uploads``, the job followed
  over OGC API - Processes, the same three files downloaded. The server's job also
  writes what every job writes (probabilities, uncertainty, statistics, STAC Item,
  previews).
- **server, path**: the same with the scene under the server's ``--root`` (a shared
  folder): no upload.

Each is run once untimed (the model loads: in this process, in the server's job
thread), then ``--repeat`` times; the median is reported, with the parts of a server
run (sending, the job as the server timed it, the rest: queue, polling, downloads,
the job's extra outputs). Two scenes: the real On Cloud N L2A chip ``adwp``
(512 x 512 px, 4 bands) and a 4096 x 4096 px scene made of it tiled 8 x 8 (the same
bands and grid spacing, 128 MiB as uint16).

The masks are compared too: a server's mask must be the local one, pixel for pixel.

Usage: benchmark_remote.py --data ../shared/data/real --out dev/results/remote.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from benchmark_common import write_results

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests")]

from conftest import BANDS, CHIP, stack_bands, tiled_scene  # noqa: E402
from serving import start_server  # noqa: E402

TOKEN = "a-long-token-for-the-remote-benchmark"
OPTIONS: dict[str, Any] = {"product_level": "L2A"}
OUTPUTS = ("mask", "valid", "polygons")
SUFFIXES = {"mask": ".tif", "valid": ".tif", "polygons": ".gpkg"}


def local_run(scene: Path, folder: Path) -> dict[str, Any]:
    """One run here, as the plugin's task makes it; seconds and the mask."""
    from cloudseg.backend.inference.segment import SegmentOptions, segment

    folder.mkdir(parents=True, exist_ok=True)
    paths = {k: folder / f"{k}{SUFFIXES[k]}" for k in OUTPUTS}
    started = time.perf_counter()
    result = segment(scene, paths["mask"], SegmentOptions(
        **OPTIONS, valid=paths["valid"], polygons=paths["polygons"], overwrite=True))  # fmt: skip
    return {"seconds": time.perf_counter() - started, "engine_seconds": result.seconds,
            "runner": result.runner, "mask": paths["mask"]}  # fmt: skip


def server_run(client: Any, scene: Path, folder: Path) -> dict[str, Any]:
    """One run on the server, as the plugin makes it; seconds, their parts and the mask."""
    from cloudseg.backend.remote import run_on_server

    folder.mkdir(parents=True, exist_ok=True)
    marks: dict[str, float] = {}

    def progress(percent: float, message: str) -> None:
        now = time.perf_counter() - started
        if percent >= 20 and "sent" not in marks:
            marks["sent"] = now
        if message.startswith("downloading") and "job" not in marks:
            marks["job"] = now

    outputs = {k: folder / f"{k}{SUFFIXES[k]}" for k in OUTPUTS}
    started = time.perf_counter()
    run = run_on_server(client, "segment", scene, OPTIONS, outputs, progress)
    total = time.perf_counter() - started
    return {
        "seconds": total,
        "sending_seconds": marks.get("sent", 0.0),
        "server_engine_seconds": run.summary["seconds"],
        "downloading_seconds": total - marks.get("job", total),
        "runner": run.summary["runner"],
        "mask": run.files["mask"],
    }


def same_pixels(a: Path, b: Path) -> bool:
    """Whether two masks hold the same pixels on the same grid."""
    with rasterio.open(a) as one, rasterio.open(b) as two:
        return one.transform == two.transform and np.array_equal(one.read(), two.read())


def measure(name: str, scene: Path, client: Any, root_scene: Path, folder: Path,
            repeat: int) -> dict[str, Any]:  # fmt: skip
    """The three modes on one scene: an untimed run each, then ``repeat`` timed ones."""
    runs: dict[str, list[dict[str, Any]]] = {"local": [], "server_upload": [], "server_path": []}
    for i in range(repeat + 1):
        for mode, run in (
            ("local", lambda f: local_run(scene, f)),
            ("server_upload", lambda f: server_run(client, scene, f)),
            ("server_path", lambda f: server_run(client, root_scene, f)),
        ):
            out = run(folder / f"{name}-{mode}-{i}")
            if i:
                runs[mode].append(out)
            print(f"{name} {mode} run {i}: {out['seconds']:.2f} s", flush=True)
    report: dict[str, Any] = {}
    for mode, outs in runs.items():
        keys = [k for k in outs[0] if k.endswith("seconds")]
        report[mode] = {k: round(statistics.median(o[k] for o in outs), 3) for k in keys}
        report[mode]["seconds_each_run"] = [round(o["seconds"], 3) for o in outs]
        report[mode]["runner"] = outs[0]["runner"]
    local = report["local"]["seconds"]
    for mode in ("server_upload", "server_path"):
        report[mode]["overhead_seconds"] = round(report[mode]["seconds"] - local, 3)
        report[mode]["mask_equals_local"] = all(
            same_pixels(o["mask"], runs["local"][0]["mask"]) for o in runs[mode]
        )
    with rasterio.open(scene) as src:
        report["scene"] = {"width": src.width, "height": src.height, "bands": src.count,
                           "mib": round(scene.stat().st_size / 2**20, 1)}  # fmt: skip
    return report


def main() -> int:
    """Run the benchmark and write its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "real")
    parser.add_argument("--out", type=Path, default=ROOT / "dev" / "results" / "remote.json")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--large", type=int, default=8, help="tiles per side of the large scene")
    args = parser.parse_args()

    from cloudseg.backend.remote import ServerClient

    with tempfile.TemporaryDirectory(prefix="cloudseg-remote-bench-") as tmp:
        folder = Path(tmp)
        here, root = folder / "here", folder / "root"
        here.mkdir()
        root.mkdir()
        chip = stack_bands(args.data / CHIP, here / "adwp.tif", BANDS)
        large = tiled_scene(chip, here / f"adwp_x{args.large}.tif", args.large, tiled=True,
                            blockxsize=512, blockysize=512)  # fmt: skip
        for scene in (chip, large):
            shutil.copy(scene, root / scene.name)
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        server = start_server(env, folder / "work", "--root", str(root), "--token", TOKEN,
                              token=TOKEN)  # fmt: skip
        try:
            client = ServerClient(server.url, TOKEN)
            scenes = {}
            for name, scene in (("chip", chip), ("scene4096", large)):
                scenes[name] = measure(name, scene, client, root / scene.name,
                                       folder / "out", args.repeat)  # fmt: skip
        finally:
            server.stop()
    report = {
        "benchmark": "a run on a cloudseg server (same machine, loopback) over a local run",
        "what": __doc__.split("\n\n")[1],
        "options": OPTIONS,
        "outputs": list(OUTPUTS),
        "repeat": args.repeat,
        "scenes": scenes,
    }
    write_results(report, ("cloudseg", "onnxruntime", "rasterio", "numpy"), args.out)
    for name, result in scenes.items():
        upload, path = result["server_upload"], result["server_path"]
        print(
            f"{name}: local {result['local']['seconds']:.2f} s, "
            f"server (upload) {upload['seconds']:.2f} s (+{upload['overhead_seconds']:.2f}), "
            f"server (path) {path['seconds']:.2f} s (+{path['overhead_seconds']:.2f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Time and energy of inference and training on real data, per km² (docs/run-cost.md).

Runs, ``repeats`` times each, on the chosen device:

- ``segment``: a real Sentinel-2 L2A chip of the shared data (On Cloud N ``adwp``, 10 m,
  512 x 512 px) with the default options;
- ``segment-30m``: the labeled ukis-csmask Sentinel-2 scene (6 bands, 30 m, 512 x 512);
- ``train``: a short training (one epoch of 24 windows of 128 px) on a store of the real
  CloudSEN12 patches.

Each run's accounting (:mod:`cloudseg.backend.accounting`) gives seconds, km², seconds
per km² and energy with its method. The JSON holds every run and, per task, the median
and the spread (min, max); the plot shows seconds per km² (and J/km² where measured).
Energy comes from NVML (CUDA GPUs) or RAPL (CPUs) only; elsewhere it says 'not measured'.

Usage: benchmark_run_cost.py --data ../shared/data/real [--repeats 3] [--device cpu]
(writes dev/results/run_cost.json and docs/run_cost.png)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from cloudseg.backend.accounting import machine_info
from cloudseg.backend.callbacks import ProgressCallback, no_progress
from cloudseg.backend.cli import bar_progress, percent_bar
from cloudseg.backend.errors import InputError

#: The figures summarized per task.
FIGURES = ("seconds", "seconds_per_km2", "joules", "joules_per_km2")


def _spread(values: list[float | None]) -> dict[str, float | None]:
    """Median, min and max of the measured values (None when none was measured)."""
    measured = [v for v in values if v is not None]
    if not measured:
        return {"median": None, "min": None, "max": None}
    return {
        "median": round(statistics.median(measured), 4),
        "min": round(min(measured), 4),
        "max": round(max(measured), 4),
    }


def run_benchmark(
    data: str | Path,
    repeats: int = 3,
    device: str = "auto",
    progress: ProgressCallback = no_progress,
) -> dict[str, Any]:
    """Run the tasks and return the report (see the module doc).

    Raises:
        InputError: If ``data`` is not the shared real-data folder.
    """
    from reference_scenes import labeled_scenes

    from cloudseg.backend.inference.segment import SegmentOptions, segment
    from cloudseg.backend.store.ingest import ingest
    from cloudseg.training.config import Config
    from cloudseg.training.train import train

    data = Path(data).expanduser()
    chip = data / "oncloudn_l2a" / "adwp"
    if not chip.is_dir() or not (data / "cloudsen12_figures").is_dir():
        raise InputError(f"{data} is not the shared real-data folder (no oncloudn_l2a/adwp)")
    if repeats < 1:
        raise InputError("repeats must be at least 1")
    runs: dict[str, list[dict[str, Any]]] = {"segment": [], "segment-30m": [], "train": []}
    total = 3 * repeats

    def done() -> int:
        return sum(len(r) for r in runs.values())

    with tempfile.TemporaryDirectory(prefix="cloudseg-benchmark-") as tmp:
        work = Path(tmp)
        scene = next(s for s in labeled_scenes(data, work / "scenes") if s.name == "ukis-s2-l1c")
        store = work / "store"
        ingest(data / "cloudsen12_figures", store, env_file=None, report=False)
        inputs = {"segment": chip, "segment-30m": scene.image}
        for i in range(repeats):
            for task, source in inputs.items():
                progress(100 * done() / total, f"{task}, run {i + 1}")
                result = segment(source, work / f"{task}-{i}.tif", SegmentOptions(device=device))
                runs[task].append(result.accounting | {"runner": result.runner})
            progress(100 * done() / total, f"train, run {i + 1}")
            config = Config.from_dict(
                {
                    "name": "benchmark",
                    "output": str(work / f"train-{i}"),
                    "data": {
                        "store": str(store),
                        "bands": ["B02", "B03", "B04"],
                        "classes": ["clear", "cloud", "cloud shadow"],
                        "window": 128,
                        "samples_per_epoch": 24,
                        "product_level": "L1C",
                        "split": {"val_scenes": ["ROI_2507-low-cloudy"]},
                    },
                    "model": {"architecture": "Unet", "encoder": "resnet18"},
                    "train": {"epochs": 1, "batch_size": 4, "device": device, "seed": i},
                }
            )
            trained = train(config)
            runs["train"].append(trained.accounting | {"runner": trained.device})
    progress(100.0, "done")
    summary = {
        task: {figure: _spread([r[figure] for r in results]) for figure in FIGURES}
        | {"km2": results[0]["km2"], "energy_method": results[0]["energy_method"]}
        for task, results in runs.items()
    }
    return {
        "benchmark": "time and energy per km²: segmentation of two real scenes and a short "
        "training on the real CloudSEN12 store",
        "device": device,
        "repeats": repeats,
        "summary": summary,
        "runs": runs,
        "machine": machine_info(),
        "versions": {
            p: metadata.version(p) for p in ("cloudseg", "torch", "onnxruntime", "openvino")
        },
    }


def plot_benchmark(report: dict[str, Any], path: str | Path) -> Path:
    """Median seconds per km² per task, with the min-max spread (and J/km² if measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    summary = report["summary"]
    tasks = list(summary)
    energy = any(summary[t]["joules_per_km2"]["median"] is not None for t in tasks)
    fig, axes = plt.subplots(1, 2 if energy else 1, figsize=(9 if energy else 5, 3.2))
    axes = list(axes) if energy else [axes]
    shown = (("seconds_per_km2", "seconds per km²"), ("joules_per_km2", "joules per km²"))
    for ax, (figure, label) in zip(axes, shown[: len(axes)], strict=True):
        medians = [summary[t][figure]["median"] or 0 for t in tasks]
        low = [m - (summary[t][figure]["min"] or 0) for t, m in zip(tasks, medians, strict=True)]
        high = [(summary[t][figure]["max"] or 0) - m for t, m in zip(tasks, medians, strict=True)]
        ax.bar(tasks, medians, yerr=[low, high], capsize=4, color="tab:blue")
        ax.set_ylabel(label)
        ax.set_yscale("log")
    method = summary[tasks[0]]["energy_method"]
    fig.suptitle(
        f"{report['machine']['cpu_model']}, device {report['device']}, "
        f"{report['repeats']} runs each; energy: {method}",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
    return path


def write_benchmark(report: dict[str, Any], out: str | Path) -> Path:
    """Write the report as JSON."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return out


def publish_benchmark(report: dict[str, Any], out: str | Path, plot: str | Path) -> None:
    """Write the JSON and the plot as one step: both new, or (on a failure) both as they were."""
    from cloudseg.backend.atomic import claim, cleanup_on_failure, publish, temporary_sibling

    out, plot = Path(out), Path(plot)
    json_tmp, plot_tmp = temporary_sibling(out), temporary_sibling(plot)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot.parent.mkdir(parents=True, exist_ok=True)
    with claim([out, plot]), cleanup_on_failure(json_tmp, plot_tmp):
        write_benchmark(report, json_tmp)
        plot_benchmark(report, plot_tmp)
        publish([(json_tmp, out), (plot_tmp, plot)])


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: run, publish the JSON and the plot, print the summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the shared real data folder")
    parser.add_argument("--repeats", type=int, default=3, help="runs per task (default 3)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda... (default auto)")
    parser.add_argument("--out", default="dev/results/run_cost.json", help="the JSON to write")
    parser.add_argument("--plot", default="docs/run_cost.png", help="the plot to write")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        with percent_bar(args.quiet) as bar:
            report = run_benchmark(args.data, args.repeats, args.device, bar_progress(bar))
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    publish_benchmark(report, args.out, args.plot)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for task, figures in report["summary"].items():
        rate, joules = figures["seconds_per_km2"], figures["joules_per_km2"]
        energy = (
            f"{joules['median']} J/km²"
            if joules["median"] is not None
            else f"energy {figures['energy_method']}"
        )
        print(
            f"{task}: {rate['median']} s/km² (min {rate['min']}, max {rate['max']}) "
            f"on {figures['km2']} km²; {energy}"
        )
    print(f"wrote {args.out} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Dataset report of an ingested store: JSON figures and PNG plots under ``report/``.

Built from the STAC Items alone (each holds its class counts and band statistics), so
it costs no pixel reads, locally or on S3.
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from typing import Any

from ..models.cards import class_kind
from .keys import COLLECTION_KEY, report_key, stored_items
from .storage import Storage


def dataset_report(storage: Storage, items: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Figures of the dataset: class balance, cloud fractions, bands, dates, places.

    Args:
        storage: The store.
        items: Its STAC Items, if already read; read from the store when None.
    """
    collection = json.loads(storage.read_bytes(COLLECTION_KEY))
    items = stored_items(storage) if items is None else items
    classes = [c["name"] for c in collection["cloudseg:scheme"]["classes"]]
    bands = collection["cloudseg:scheme"]["bands"]
    balance: Counter[str] = Counter()
    fractions: dict[str, float] = {}
    sums = {b: [0.0, 0.0, 0, math.inf, -math.inf] for b in bands}  # sum, sum sq, n, min, max
    dates: Counter[str] = Counter()
    places = []
    for item in items:
        props = item["properties"]
        counts = props["cloudseg:class_pixels"]
        balance.update(counts)
        labeled = sum(v for k, v in counts.items() if k != "ignore")
        cloudy = sum(v for k, v in counts.items() if class_kind(k) == "cloud")
        fractions[item["id"]] = round(cloudy / labeled, 6) if labeled else 0.0
        n = sum(counts.values())
        for band, stats in props["cloudseg:band_stats"].items():
            total = sums[band]
            total[0] += stats["mean"] * n
            total[1] += (stats["std"] ** 2 + stats["mean"] ** 2) * n
            total[2] += n
            total[3], total[4] = min(total[3], stats["min"]), max(total[4], stats["max"])
        when = props.get("datetime")
        dates[when[:7] if when else "unknown"] += 1
        if item.get("bbox"):
            west, south, east, north = item["bbox"]
            places.append(
                {"scene": item["id"], "lon": (west + east) / 2, "lat": (south + north) / 2}
            )
    labeled_total = sum(v for k, v in balance.items() if k != "ignore")
    band_stats = {}
    for band, (s, sq, n, lo, hi) in sums.items():
        mean = s / n if n else 0.0
        band_stats[band] = {
            "mean": round(mean, 6),
            "std": round(math.sqrt(max(sq / n - mean**2, 0.0)), 6) if n else 0.0,
            "min": lo if n else None,
            "max": hi if n else None,
        }
    return {
        "scenes": len(items),
        "class_pixels": {c: int(balance.get(c, 0)) for c in [*classes, "ignore"]},
        "class_percent": {
            c: round(100 * balance.get(c, 0) / labeled_total, 3) if labeled_total else 0.0
            for c in classes
        },
        "cloud_fraction_by_scene": fractions,
        "cloud_fraction_histogram": _histogram(list(fractions.values())),
        "band_stats": band_stats,
        "scenes_by_month": dict(sorted(dates.items())),
        "places": places,
    }


def _histogram(values: list[float], bins: int = 10) -> dict[str, int]:
    counts = [0] * bins
    for v in values:
        counts[min(int(v * bins), bins - 1)] += 1
    return {f"{i / bins:.1f}-{(i + 1) / bins:.1f}": c for i, c in enumerate(counts)}


def _save_png(storage: Storage, figure: Any, name: str) -> None:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    storage.write_bytes(report_key(name), buffer.getvalue())


def write_report(storage: Storage, items: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write ``report/report.json`` and its PNG plots into the store; return the report."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    report = dataset_report(storage, items)
    storage.write_bytes(
        report_key("report.json"), (json.dumps(report, indent=2, sort_keys=True) + "\n").encode()
    )
    plots = {
        "class_balance.png": ("Class balance (% of labeled pixels)", report["class_percent"]),
        "cloud_fraction.png": ("Scenes by cloud fraction", report["cloud_fraction_histogram"]),
        "band_means.png": (
            "Band means (bars) and standard deviations",
            {b: s["mean"] for b, s in report["band_stats"].items()},
        ),
        "scenes_by_month.png": ("Scenes by month", report["scenes_by_month"]),
    }
    for name, (title, values) in plots.items():
        figure = Figure(figsize=(6, 3.2), dpi=100)
        axes = figure.subplots()
        errors = (
            [s["std"] for s in report["band_stats"].values()] if name == "band_means.png" else None
        )
        axes.bar(list(values), list(values.values()), yerr=errors, color="#00838f")
        axes.set_title(title)
        axes.tick_params(axis="x", labelrotation=30)
        _save_png(storage, figure, name)
    if report["places"]:
        figure = Figure(figsize=(5, 4), dpi=100)
        axes = figure.subplots()
        axes.scatter([p["lon"] for p in report["places"]], [p["lat"] for p in report["places"]])
        axes.set_xlabel("longitude")
        axes.set_ylabel("latitude")
        axes.set_title("Scenes by place")
        _save_png(storage, figure, "places.png")
    return report

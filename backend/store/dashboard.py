"""The dataset dashboard: one self-contained HTML page about an ingested store.

``cloudseg report STORE`` (and every ingestion) writes it. Its plots are plotly figures
with plotly.js inlined once, so the page opens offline, from a folder, an S3 download
or an e-mail: class balance, the cloud-fraction histogram, band statistics, the scenes
on a map and by month, the label-quality scores of ``cloudseg labels check`` and the
worst windows as thumbnails (image, stored label). The figures come from the STAC Items
(no pixel reads) except the thumbnails, which read only their windows.

The map draws the scenes' footprints by longitude and latitude with no base layer:
tiles (folium/Leaflet, plotly's MapLibre maps) and plotly's world outlines are fetched
from the internet, and MapLibre's WebGL worker is refused on pages opened from a file,
so either would break a page meant to open offline without errors.
"""

from __future__ import annotations

import base64
import html
import io
import json
from string import Template
from typing import Any

import numpy as np

from .._version import __version__
from ..models.cards import class_color
from .dataset import StoredDataset
from .keys import COLLECTION_KEY, report_key, stored_items
from .report import dataset_report

#: How many of the worst windows get a thumbnail.
THUMBNAILS = 8
DASHBOARD = "dashboard.html"
TEAL, RED = "#00838f", "#c62828"

PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>cloudseg dataset: $title</title>
<style>
body { font-family: sans-serif; margin: 1.5em auto; max-width: 1200px; color: #212121; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.15em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.meta { color: #616161; margin-top: 0; }
.grid { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
.thumbs { display: grid; grid-template-columns: repeat(4, 1fr); gap: 1em; }
figure { margin: 0; } figure img { width: 100%; }
figcaption { font-size: 0.85em; color: #424242; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { border-bottom: 1px solid #eee; padding: 0.2em 0.6em; text-align: right; }
td:first-child, th:first-child { text-align: left; }
.flagged { color: $red; font-weight: bold; }
</style>
<script type="text/javascript">$plotlyjs</script>
</head>
<body>
<h1>Dataset: $title</h1>
<p class="meta">$meta</p>
<h2>Labels</h2>
<div class="grid">$balance $fractions</div>
<h2>Bands</h2>
<div class="grid">$bands</div>
<h2>Where and when</h2>
<div class="grid">$map $months</div>
<h2>Label quality</h2>
$quality
<h2>Worst windows</h2>
$thumbnails
</body>
</html>
""")


#: Plot widths in pixels: two side by side, or one across the page.
HALF, FULL = 570, 1160


def _figure_html(figure: Any, name: str, width: int = HALF) -> str:
    """A plotly figure as a ``div`` (plotly.js is inlined once in the page head)."""
    figure.update_layout(
        margin={"l": 50, "r": 20, "t": 50, "b": 50}, height=360, width=width, autosize=False
    )
    return f'<div class="plot" id="{name}">' + figure.to_html(
        full_html=False, include_plotlyjs=False, div_id=f"{name}-plot",
        config={"displaylogo": False},
    ) + "</div>"  # fmt: skip


def _bar(title: str, values: dict[str, float], name: str, width: int = HALF, **kwargs: Any) -> str:
    import plotly.graph_objects as go

    figure = go.Figure(go.Bar(x=list(values), y=list(values.values()), marker_color=TEAL, **kwargs))
    figure.update_layout(title=title)
    return _figure_html(figure, name, width)


def _map(items: list[dict[str, Any]]) -> str:
    """Scene footprints and centres by longitude and latitude (equal scale)."""
    import plotly.graph_objects as go

    placed = [i for i in items if i.get("bbox")]
    if not placed:
        return "<p>No scene is georeferenced: nothing to map.</p>"
    lons: list[float | None] = []
    lats: list[float | None] = []
    for item in placed:
        west, south, east, north = item["bbox"]
        lons += [west, east, east, west, west, None]
        lats += [south, south, north, north, south, None]
    centres = [
        ((i["bbox"][0] + i["bbox"][2]) / 2, (i["bbox"][1] + i["bbox"][3]) / 2) for i in placed
    ]
    figure = go.Figure(
        [
            go.Scatter(x=lons, y=lats, mode="lines", line={"color": TEAL}, hoverinfo="skip"),
            go.Scatter(x=[c[0] for c in centres], y=[c[1] for c in centres], mode="markers",
                       marker={"size": 9, "color": TEAL}, text=[i["id"] for i in placed],
                       hovertemplate="%{text}<br>%{x:.4f}, %{y:.4f}<extra></extra>"),
        ]
    )  # fmt: skip
    figure.update_layout(
        title="Scenes on a map (footprints; longitude, latitude)",
        showlegend=False,
        xaxis={"title": "longitude"},
        yaxis={"title": "latitude", "scaleanchor": "x"},
    )
    return _figure_html(figure, "map")


def _quality(items: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """The label-quality plot and table, and the scenes checked (worst first)."""
    import plotly.graph_objects as go

    checked = [
        {"scene": i["id"]} | i["properties"]["cloudseg:label_quality"]
        for i in items
        if "cloudseg:label_quality" in i["properties"]
    ]
    if not checked:
        return (
            "<p>No label check yet: run <code>cloudseg labels check STORE --model MODEL "
            "--out DIR</code> (or <code>--folds K --config CONFIG</code>).</p>",
            [],
        )
    checked.sort(key=lambda q: q["score"])
    colours = [RED if q.get("flagged") else TEAL for q in checked]
    figure = go.Figure(
        go.Bar(x=[q["scene"] for q in checked], y=[q["score"] for q in checked],
               marker_color=colours, customdata=[100 * q["flagged_share"] for q in checked],
               hovertemplate="%{x}<br>quality %{y:.3f}<br>%{customdata:.1f} % flagged"
               "<extra></extra>")
    )  # fmt: skip
    figure.update_layout(title="Label quality by scene (red: flagged), worst first")
    rows = "".join(
        ('<tr class="flagged">' if q.get("flagged") else "<tr>")
        + f"<td>{html.escape(q['scene'])}</td><td>{q['score']:.3f}</td>"
        f"<td>{100 * q['flagged_share']:.1f} %</td>"
        f"<td>{'yes' if q.get('flagged') else 'no'}</td></tr>"
        for q in checked[:20]
    )
    model = html.escape(str(checked[0].get("model", "")))
    table = (
        f"<p>Checked with {model} on {html.escape(str(checked[0].get('checked', '')))}: "
        f"{sum(bool(q.get('flagged')) for q in checked)} of {len(checked)} scenes flagged.</p>"
        '<table id="quality-table"><tr><th>scene</th><th>quality</th><th>flagged pixels</th>'
        f"<th>flagged</th></tr>{rows}</table>"
    )
    return _figure_html(figure, "quality", FULL) + table, checked


def _stretch(rgb: np.ndarray) -> np.ndarray:
    """2-98 % stretch of a (3, rows, cols) window to 0-1 (NaN-safe)."""
    low, high = np.nanpercentile(rgb, [2, 98]) if np.isfinite(rgb).any() else (0.0, 1.0)
    return np.clip((np.nan_to_num(rgb, nan=low) - low) / max(high - low, 1e-6), 0, 1)


def _thumbnail(dataset: StoredDataset, scene: str, window: list[int], caption: str) -> str:
    """Image (true colour where the bands allow) and stored label of one window, as a figure."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    row, col, height, width = window
    image, mask = dataset.read(scene, (row, col, height, width))
    bands = dataset.bands
    order = [bands.index(b) for b in ("B04", "B03", "B02") if b in bands]
    rgb = image[order] if len(order) == 3 else image[[0, 0, 0]]
    colours = ["#000000"] * 256
    for c in dataset.classes:
        colours[c["value"]] = class_color(c["name"], c.get("color"))[:7]
    colours[255] = "#ffffff"
    figure = Figure(figsize=(5.4, 2.8), dpi=60)
    left, right = figure.subplots(1, 2)
    left.imshow(np.moveaxis(_stretch(rgb.astype(np.float32)), 0, -1))
    right.imshow(mask, cmap=ListedColormap(colours), vmin=0, vmax=255, interpolation="nearest")
    for axes, title in ((left, "image"), (right, "stored label")):
        axes.set_axis_off()
        axes.set_title(title, fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _worst_windows(dataset: StoredDataset, checked: list[dict[str, Any]]) -> str:
    """Thumbnails of the windows with most flagged pixels (the worst scenes without them)."""
    candidates = []
    for q in checked:
        windows = q.get("windows") or []
        if windows:
            candidates += [(w["flagged_share"], q["scene"], w["window"]) for w in windows[:3]]
        else:
            rows, cols = dataset.shape(q["scene"])
            candidates.append((q["flagged_share"], q["scene"], [0, 0, rows, cols]))
    if not candidates:
        return "<p>The worst windows are shown once a label check has run.</p>"
    candidates.sort(key=lambda c: -c[0])
    parts = [
        _thumbnail(dataset, scene, window,
                   f"{scene} rows {window[0]}-{window[0] + window[2]}, cols {window[1]}-"
                   f"{window[1] + window[3]}: {100 * share:.1f} % of labeled pixels flagged")
        for share, scene, window in candidates[:THUMBNAILS]
    ]  # fmt: skip
    return '<div class="thumbs">' + "".join(parts) + "</div>"


def dashboard_html(dataset: StoredDataset) -> str:
    """The dashboard page of ``dataset`` (see module doc)."""
    import plotly.graph_objects as go
    from plotly.offline import get_plotlyjs

    storage = dataset.storage
    items = stored_items(storage)
    report = dataset_report(storage, items)
    fractions = list(report["cloud_fraction_by_scene"].values())
    histogram = go.Figure(go.Histogram(x=fractions, xbins={"start": 0, "end": 1, "size": 0.1},
                                       marker_color=TEAL))  # fmt: skip
    histogram.update_layout(title="Scenes by cloud fraction", xaxis_title="cloud fraction",
                            yaxis_title="scenes")  # fmt: skip
    stats = report["band_stats"]
    quality, checked = _quality(items)
    # Nothing here depends on where the store is or when the page is made: the same
    # store gives the same page (a resumed ingestion writes the bytes a clean one does).
    collection = json.loads(storage.read_bytes(COLLECTION_KEY))
    meta = (
        f"{report['scenes']} scene(s); bands {html.escape(', '.join(dataset.bands))}; "
        f"classes {html.escape(', '.join(c['name'] for c in dataset.classes))}. Made by "
        f"cloudseg {__version__} from the store's STAC Items."
    )
    return PAGE.substitute(
        title=html.escape(collection.get("id", "dataset")),
        meta=meta,
        red=RED,
        plotlyjs=get_plotlyjs(),
        balance=_bar("Class balance (% of labeled pixels)", report["class_percent"], "balance"),
        fractions=_figure_html(histogram, "fractions"),
        bands=_bar(
            "Band means and standard deviations (stored values)",
            {b: s["mean"] for b, s in stats.items()},
            "bands",
            FULL,
            error_y={"type": "data", "array": [s["std"] for s in stats.values()]},
        ),
        map=_map(items),
        months=_bar("Scenes by month", report["scenes_by_month"], "months"),
        quality=quality,
        thumbnails=_worst_windows(dataset, checked),
    )


def write_dashboard(dataset: StoredDataset) -> str:
    """Write the dashboard into the store (``report/dashboard.html``); return its key."""
    key = report_key(DASHBOARD)
    dataset.storage.write_bytes(key, dashboard_html(dataset).encode("utf-8"))
    return key

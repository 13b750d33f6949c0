"""Hostile inputs: non-finite pixels, bad extents, URLs, cards that lie, runs too big.

Every case runs the real ``cloudseg`` command on the real crop of the workspace and
checks what a user relies on. Non-finite values (+-Inf, NaN, fill values such as
-3.4e38) are nodata: the mask of a scene holding them is the mask of the same scene
with those pixels declared nodata, pixel for pixel (both are NaN to the engine, which
fills them from their neighbours in the same way), and the pixels themselves are 255.
A scene whose sample is more than 2 % such values is refused in one line.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio

from .conftest import error_line

pytestmark = pytest.mark.real_data

MODEL = "ukis-csmask-4b-l2a"
FLOAT32_MAX = float(np.finfo(np.float32).max)
#: Pixels (row, col) of the 256 x 256 crop: inside, a corner, an edge, a tile seam.
POSITIONS = [(100, 120), (0, 0), (255, 17), (128, 200)]


def _float_copy(workspace, name: str, change) -> Path:
    """A float32 copy of the workspace scene (nodata 0 declared), changed by ``change``."""
    with rasterio.open(workspace.scene) as src:
        profile, descriptions = src.profile | {"dtype": "float32"}, src.descriptions
        data = src.read().astype(np.float32)
    change(data)
    path = workspace.root / name
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = descriptions
    return path


def _segment(workspace, scene: str, name: str, *more: str) -> tuple[np.ndarray, np.ndarray]:
    """Segment ``scene``; the class mask and the valid mask."""
    result = workspace.cli(
        *("segment", scene, f"mask-{name}.tif", "-q", "--product-level", "L2A"),
        *("--valid", f"valid-{name}.tif", *more),
    )
    assert result.returncode == 0, result.stderr
    with rasterio.open(workspace.root / f"mask-{name}.tif") as mask:
        classes = mask.read(1)
    with rasterio.open(workspace.root / f"valid-{name}.tif") as valid:
        return classes, valid.read(1)


def _put(values: list[float], positions: list[tuple[int, int]], bands=slice(None)):
    def change(data: np.ndarray) -> None:
        for value, (row, col) in zip(values, positions, strict=True):
            data[bands, row, col] = value

    return change


# -- 1. non-finite values are nodata and change no other pixel ---------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("resolution", ["native", "preview"])
def test_non_finite_pixels_are_nodata_and_leave_every_other_pixel_as_declared_nodata_does(
    workspace, resolution
):
    payloads = [np.inf, -np.inf, np.nan, FLOAT32_MAX, -FLOAT32_MAX]
    positions = [*POSITIONS, (60, 60)]
    _float_copy(workspace, "hostile.tif", _put(payloads, positions))
    _float_copy(workspace, "declared.tif", _put([0.0] * len(positions), positions))
    flags = ("--resolution", resolution)
    hostile, hostile_valid = _segment(workspace, "hostile.tif", "hostile", *flags)
    declared, declared_valid = _segment(workspace, "declared.tif", "declared", *flags)
    np.testing.assert_array_equal(hostile, declared)
    np.testing.assert_array_equal(hostile_valid, declared_valid)
    for row, col in positions:
        assert hostile[row, col] == 255 and hostile_valid[row, col] == 255
    assert (hostile != 255).sum() == hostile.size - len(positions)


@pytest.mark.slow
@pytest.mark.parametrize("band", [0, 3])
def test_inf_in_one_band_of_a_folder_of_band_files_is_nodata_too(workspace, band):
    """Another reader (a folder of band files), one band only: the same rule."""
    name = ["B02", "B03", "B04", "B08"][band]
    path = workspace.chip / f"{name}.tif"
    with rasterio.open(path) as src:
        profile, data = src.profile | {"dtype": "float32"}, src.read().astype(np.float32)
    declared_data = data.copy()
    data[0, 7, 9], declared_data[0, 7, 9] = np.inf, 0.0
    hostile_folder = workspace.root / "hostile-chip"
    declared_folder = workspace.root / "declared-chip"
    for folder, values in ((hostile_folder, data), (declared_folder, declared_data)):
        folder.mkdir()
        for other in workspace.chip.iterdir():
            (folder / other.name).write_bytes(other.read_bytes())
        with rasterio.open(folder / f"{name}.tif", "w", **profile) as dst:
            dst.write(values)
    hostile, _ = _segment(workspace, "hostile-chip", "hostile")
    declared, _ = _segment(workspace, "declared-chip", "declared")
    np.testing.assert_array_equal(hostile, declared)
    assert hostile[7, 9] == 255


@pytest.mark.slow
def test_one_inf_pixel_gets_a_warning_not_a_silent_change(workspace):
    _float_copy(workspace, "hostile.tif", _put([np.inf], [(100, 120)]))
    result = workspace.cli(
        "segment", "hostile.tif", "m.tif", "-q", "--product-level", "L2A", "--json"
    )
    assert result.returncode == 0, result.stderr
    assert "not finite" in result.stdout  # the result's warnings


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "change"),
    [
        ("rows of +-Inf", lambda d: d.__setitem__((slice(None), slice(50, 150)), np.inf)),
        ("rows of -Inf", lambda d: d.__setitem__((slice(None), slice(0, 100)), -np.inf)),
        ("a band all Inf", lambda d: d.__setitem__(2, np.inf)),
        ("fill values", lambda d: d.__setitem__((slice(None), slice(200, 256)), -FLOAT32_MAX)),
    ],
)
def test_a_scene_largely_non_finite_is_refused_in_one_line(workspace, case, change):
    def hostile(data: np.ndarray) -> None:
        change(data)
        if case == "rows of +-Inf":
            data[:, 50:150:2] = -np.inf  # alternating signs

    _float_copy(workspace, "hostile.tif", hostile)
    before = workspace.snapshot()
    line = error_line(
        workspace.cli("segment", "hostile.tif", "m.tif", "-q", "--product-level", "L2A")
    )
    assert "not finite" in line and "nodata" in line and "--no-reflectance-check" in line
    assert workspace.snapshot() == before


@pytest.mark.slow
def test_rows_of_inf_run_anyway_are_nodata_and_the_rest_as_declared_nodata(workspace):
    _float_copy(
        workspace, "hostile.tif", lambda d: d.__setitem__((slice(None), slice(0, 40)), np.inf)
    )
    _float_copy(workspace, "declared.tif", lambda d: d.__setitem__((slice(None), slice(0, 40)), 0))
    hostile, _ = _segment(workspace, "hostile.tif", "hostile", "--no-reflectance-check")
    declared, _ = _segment(workspace, "declared.tif", "declared")
    np.testing.assert_array_equal(hostile, declared)
    assert (hostile[:40] == 255).all() and (hostile[40:] != 255).all()


# -- 5. explain within a memory budget -----------------------------------------------------------
#: Runs a command and writes its peak resident memory (KiB, Linux) to a file.
_PEAK = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[2:]); "
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); "
    "sys.exit(r.returncode)"
)


def _peak_run(workspace, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``cloudseg`` with ``args``; the finished process and its peak RSS in MiB."""
    peak = workspace.root.parent / "peak.txt"
    result = subprocess.run(
        [sys.executable, "-c", _PEAK, str(peak), "cloudseg", *args],
        capture_output=True,
        text=True,
        env=workspace.env,
        cwd=workspace.root,
        timeout=120,
    )
    return result, int(peak.read_text()) / 1024


@pytest.fixture(scope="module")
def cards_that_lie(tmp_path_factory) -> dict[str, Path]:
    """The built-in ONNX model with cards that do not fit it: huge tiles, other counts."""
    from cloudseg.backend.models.cards import ClassInfo
    from cloudseg.backend.models.registry import embed_onnx_card, load_model

    model = load_model(MODEL)
    card = model.card
    folder = tmp_path_factory.mktemp("cards")
    cards = {
        "huge-tiles": replace(card, name="huge-tiles", tile_size=10**9, overlap=32),
        "four-classes": replace(
            card, name="four-classes", classes=(*card.classes, ClassInfo(3, "snow", "#ffffff"))
        ),
        "two-classes": replace(card, name="two-classes", classes=card.classes[:2]),
        "three-bands": replace(
            card,
            name="three-bands",
            bands=card.bands[:3],
            normalization={k: v[:3] for k, v in card.normalization.items()},
        ),
    }
    return {
        name: embed_onnx_card(model.path, c, folder / f"{name}.onnx") for name, c in cards.items()
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        ("--model", "{huge-tiles}"),
        ("--tile-size", "1000000000"),
        ("--tile-size", "4096"),
        ("--max-memory", "900M"),
    ],
    ids=["card-tile-1e9", "flag-tile-1e9", "tile-4096", "budget-900M"],
)
def test_explain_refuses_a_run_that_does_not_fit_up_front_in_bounded_memory(
    workspace, cards_that_lie, args
):
    args = tuple(a.format(**cards_that_lie) if "{" in a else a for a in args)
    before = workspace.snapshot()
    start = time.monotonic()
    result, peak_mib = _peak_run(
        workspace, "explain", "scene.tif", "map.tif", "-q", "--product-level", "L2A", *args
    )
    line = error_line(result)
    assert "needs about" in line and "GiB of memory" in line and "--max-memory" in line
    assert peak_mib < 1024, f"{peak_mib:.0f} MiB before refusing"
    assert time.monotonic() - start < 60
    assert workspace.snapshot() == before


@pytest.mark.slow  # one explanation on the CPU: about 30 s
def test_explain_within_its_budget_never_spreads_an_inf_pixel(workspace):
    _float_copy(workspace, "hostile.tif", _put([np.inf, np.nan], [(100, 120), (3, 250)]))
    result, peak_mib = _peak_run(
        workspace, "explain", "hostile.tif", "map.tif", "-q", "--product-level", "L2A",
        "--max-memory", "1800M",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert peak_mib < 1800, f"peak {peak_mib:.0f} MiB over the 1800 MiB budget"
    with rasterio.open(workspace.root / "map.tif") as src:
        cam = src.read(1)
    assert np.isnan(cam[100, 120]) and np.isnan(cam[3, 250])
    assert np.isfinite(cam).sum() == cam.size - 2


# -- 9. extents, URLs and cards that do not describe their network ------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("command", ["segment", "explain"])
@pytest.mark.parametrize(
    ("extent", "words"),
    [
        (("483495", "9717255", "480000", "9719815"), "not a box"),  # left > right
        (("483495", "9719815", "486055", "9717255"), "not a box"),  # bottom > top
        (("483495", "9717255", "483495", "9719815"), "not a box"),  # no width
        (("nan", "9717255", "486055", "9719815"), "not a finite number"),
        (("483495", "9717255", "inf", "9719815"), "not a finite number"),
    ],
)
def test_an_extent_that_is_not_a_box_gets_one_line(workspace, unchanged, command, extent, words):
    line = error_line(workspace.cli(command, "scene.tif", "x.tif", "-q", "--extent", *extent))
    assert words in line and "extent" in line
    unchanged()


@pytest.mark.slow
@pytest.mark.parametrize("command", ["segment", "explain", "evaluate"])
@pytest.mark.parametrize("card", ["four-classes", "two-classes", "three-bands"])
def test_a_card_that_does_not_fit_its_network_is_refused_at_load(
    workspace, unchanged, cards_that_lie, command, card
):
    model = str(cards_that_lie[card])
    args = {
        "segment": ["segment", "scene.tif", "m.tif", "-q", "--model", model],
        "explain": ["explain", "scene.tif", "m.tif", "-q", "--model", model],
        "evaluate": [
            *("evaluate", "--model", model, "--images", "scene.tif"),
            *("--labels", "out/mask.tif", "--out", "report", "-q"),
        ],
    }[command]
    line = error_line(workspace.cli(*args))
    what = "band(s)" if card == "three-bands" else "class channel(s)"
    assert f"{card}.onnx" in line and what in line and "fix the card" in line
    unchanged()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://example.invalid/scenes/T32TQM.tif", "https://example.invalid/scenes/T32TQM.tif"),
        ("http://127.0.0.1:9/a%20b.tif", "http://127.0.0.1:9/a%20b.tif"),
        ("https://user:secret@example.invalid/x.tif", "https://***@example.invalid/x.tif"),
        ("/vsicurl/https://example.invalid/x.tif", "/vsicurl/https://example.invalid/x.tif"),
    ],
)
@pytest.mark.parametrize("command", ["segment", "explain"])
def test_a_url_is_named_intact_in_one_line(workspace, unchanged, url, shown, command):
    result = workspace.cli(command, url, "m.tif", "-q")
    line = error_line(result)
    assert shown in line and "not a local file" in line and "does not exist" not in line
    assert "secret" not in result.stderr + result.stdout
    unchanged()


# -- ingest reads whole arrays for a store, not through the scene reader ------------------------
@pytest.mark.slow
def test_ingest_refuses_a_scene_with_inf_in_one_line_and_keeps_the_others(workspace, real_data):
    """A store holds training arrays without nodata: such a scene is not ingested."""
    source = workspace.root / "dataset"
    for level in ("clear", "cloudy"):
        patch = real_data / "cloudsen12_figures" / "ROI_1746" / "high" / level
        target = source / "ROI_1746" / "high" / level
        target.mkdir(parents=True)
        for file in patch.iterdir():
            (target / file.name).write_bytes(file.read_bytes())
    image = source / "ROI_1746" / "high" / "cloudy" / "S2L1C.tif"
    with rasterio.open(image, "r+") as dst:
        data = dst.read()
        data[1, 300, 200] = -np.inf
        dst.write(data)
    result = workspace.cli("ingest", source, "store", "--json")
    assert result.returncode == 0, result.stderr
    failed = [line for line in result.stderr.splitlines() if line.startswith("not ingested")]
    assert len(failed) == 1 and "cloudy" in failed[0] and "not finite" in failed[0], failed
    assert '"ingested"' in result.stdout and "clear" in result.stdout

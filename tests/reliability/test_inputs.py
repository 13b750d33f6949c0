"""Bad input gets one line and changes nothing: scale, corrupt data, models, grids, S3."""

from __future__ import annotations

import time

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine

from .conftest import error_line

pytestmark = pytest.mark.real_data


def _write_like(path, data, source, **changes):
    with rasterio.open(source) as src:
        profile, descriptions = src.profile | changes, src.descriptions
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = descriptions
    return path


# -- 2. values that are not reflectance ----------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(("factor", "words"), [(10, "above reflectance 1.6"), (0.01, "darker")])
def test_reflectance_on_the_wrong_scale_is_refused(workspace, factor, words):
    with rasterio.open(workspace.scene) as src:
        data = np.clip(src.read().astype(np.float64) * factor, 0, 65535).astype("uint16")
    _write_like(workspace.root / "scaled.tif", data, workspace.scene)
    before = workspace.snapshot()
    line = error_line(workspace.cli("segment", "scaled.tif", "m.tif", "-q"))
    assert words in line and "--scale" in line and "--no-reflectance-check" in line
    assert workspace.snapshot() == before
    # Told to, it runs; the warning stays.
    forced = workspace.cli("segment", "scaled.tif", "m.tif", "-q", "--no-reflectance-check")
    assert forced.returncode == 0 and words in forced.stderr


# -- 5. data that cannot be read, models that cannot be loaded -------------------------------------
@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_a_damaged_geotiff_names_the_file_and_the_window(workspace, damage):
    with rasterio.open(workspace.scene) as src:
        pixels = src.read()
    compressed = workspace.root / "compressed.tif"  # as delivered: tiled, deflate
    _write_like(compressed, pixels, workspace.scene, tiled=True, compress="deflate")
    data = bytearray(compressed.read_bytes())
    compressed.unlink()
    with rasterio.open(workspace.scene) as src:  # the header says where the pixels are
        offset = int(src.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))
    if damage == "truncated":
        data = data[: offset + 100]
    else:
        data[offset : offset + 4096] = bytes(range(256)) * 16
    (workspace.root / "bad.tif").write_bytes(bytes(data))
    before = workspace.snapshot()
    line = error_line(workspace.cli("segment", "bad.tif", "m.tif", "-q", "--product-level", "L2A"))
    assert "cannot read bad.tif at rows" in line and "truncated or corrupt" in line
    assert workspace.snapshot() == before


@pytest.mark.slow
@pytest.mark.parametrize("content", [b"not a checkpoint", b"PK\x03\x04broken zip"])
@pytest.mark.parametrize("command", ["segment", "export", "evaluate"])
def test_a_model_file_that_cannot_be_loaded_gets_one_line(workspace, content, command):
    (workspace.root / "bad.pt").write_bytes(content)
    args = {
        "segment": ["segment", "scene.tif", "m.tif", "--model", "bad.pt", "-q"],
        "export": ["export", "bad.pt", "m.onnx"],
        "evaluate": [
            *("evaluate", "--model", "bad.pt", "--images", "scene.tif"),
            *("--labels", "out/mask.tif", "--out", "report", "-q"),
        ],
    }[command]
    before = workspace.snapshot()
    line = error_line(workspace.cli(*args))
    assert "bad.pt is not a torch checkpoint cloudseg can load" in line
    assert workspace.snapshot() == before


# -- 6. a scene too wide for the memory budget -------------------------------------------------
@pytest.mark.slow
def test_a_budget_too_small_is_refused_up_front_with_the_estimate(workspace, unchanged):
    line = error_line(workspace.cli("segment", "scene.tif", "m.tif", "-q", "--max-memory", "500M"))
    assert "needs about" in line and "GiB of memory" in line and "--max-memory" in line
    unchanged()


# -- 8. grids, products, stores and S3 ---------------------------------------------------------
def test_a_band_off_the_grid_by_half_a_pixel_is_refused(workspace):
    band = workspace.chip / "B08.tif"
    with rasterio.open(band) as src:
        data, transform = src.read(), src.transform
    _write_like(band, data, band, transform=transform * Affine.translation(0.5, 0))
    before = workspace.snapshot()
    line = error_line(workspace.cli("segment", "chip", "m.tif", "-q"))
    assert "B08.tif differs from the others in extent" in line
    assert workspace.snapshot() == before


@pytest.mark.slow
def test_safe_metadata_pointing_outside_the_product_is_refused(workspace, make_safe):
    safe = make_safe(workspace.chip, workspace.root / "products")
    metadata = next(safe.glob("MTD_MSI*.xml"))
    text = metadata.read_text()
    start = text.index("<IMAGE_FILE>") + len("<IMAGE_FILE>")
    metadata.write_text(text[:start] + "../../../chip/B02" + text[text.index("</IMAGE_FILE>") :])
    before = workspace.snapshot()
    line = error_line(workspace.cli("segment", safe, "m.tif", "-q"))
    assert "outside the product" in line
    assert workspace.snapshot() == before


#: A real labeled dataset to ingest (CloudSEN12 scenes).
DATASET = "cloudsen12_figures"


@pytest.mark.slow
def test_an_s3_endpoint_that_never_answers_times_out_with_one_line(
    workspace, silent_server, real_data
):
    workspace.env |= {
        "CLOUDSEG_S3_READ_TIMEOUT": "1",
        "MINIO_ACCESS_KEY": "key",
        "MINIO_SECRET_KEY": "secret",
    }
    before = workspace.snapshot()
    start = time.monotonic()
    line = error_line(
        workspace.cli(
            "ingest", real_data / DATASET, "s3://bucket/store", "--endpoint-url", silent_server
        )
    )
    assert "did not answer within 1 s" in line
    assert time.monotonic() - start < 30
    assert workspace.snapshot() == before


def test_credentials_in_an_endpoint_url_are_never_echoed(workspace, real_data):
    workspace.env |= {"MINIO_ACCESS_KEY": "key", "MINIO_SECRET_KEY": "other"}
    endpoint = "http://admin:hunter2@127.0.0.1:9"  # nothing listens on port 9
    result = workspace.cli(
        "ingest", real_data / DATASET, "s3://b/store", "--endpoint-url", endpoint
    )
    line = error_line(result)
    assert "***@127.0.0.1:9" in line
    assert "hunter2" not in result.stderr + result.stdout


def test_a_missing_env_file_is_an_error(workspace, unchanged):
    line = error_line(workspace.cli("ingest", "chip", "store", "--env-file", "missing.env"))
    assert "--env-file missing.env does not exist" in line
    unchanged()


@pytest.mark.slow
def test_training_and_evaluating_a_missing_store_create_nothing(workspace):
    config = workspace.root / "train.yaml"
    config.write_text("data:\n  store: no-store\noutput: run\n")
    before = workspace.snapshot()
    line = error_line(workspace.cli("train", "--config", "train.yaml", "-q"))
    assert "store" in line and "does not exist" in line
    line = error_line(
        workspace.cli("evaluate", "--model", "ukis-csmask-4b-l2a", "--store", "no-store", "-q")
    )
    assert "does not exist" in line
    assert workspace.snapshot() == before
    assert not (workspace.root / "no-store").exists() and not (workspace.root / "run").exists()


def test_ingesting_into_the_source_folder_is_refused(workspace, unchanged):
    line = error_line(workspace.cli("ingest", "chip", "chip/store", "-q"))
    assert "overlap" in line
    unchanged()

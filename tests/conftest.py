"""Fixtures shared by all test groups. Imports nothing from QGIS."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA_ENV = "CLOUDSEG_REAL_DATA"
REQUIRE_REAL_DATA_ENV = "CLOUDSEG_REQUIRE_REAL_DATA"

# Model versions that tests register go into a folder of this run, never the user's
# (subprocesses and QGIS under test inherit it).
os.environ["CLOUDSEG_MODELS_DIR"] = tempfile.mkdtemp(prefix="cloudseg-test-models-")
atexit.register(shutil.rmtree, os.environ["CLOUDSEG_MODELS_DIR"], ignore_errors=True)

_IMPORT_ALL = """
import importlib, json, pkgutil, sys
package = importlib.import_module(sys.argv[1])
names = [sys.argv[1]] + [m.name for m in pkgutil.walk_packages(package.__path__, sys.argv[1] + ".")]
for name in names:
    importlib.import_module(name)
bad = sorted(m for m in sys.modules if m.split(".")[0] in {"qgis", "PyQt5", "processing"})
print(json.dumps({"modules": names, "qgis_modules": bad}))
"""


def real_data_dir() -> Path:
    """Where the real data lives: $CLOUDSEG_REAL_DATA, else ../shared/data/real."""
    configured = os.environ.get(REAL_DATA_ENV)
    return Path(configured) if configured else ROOT.parent / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The folder of real Sentinel-2 / Landsat data (see its PROVENANCE.md).

    Tests that use it skip when it is absent, and fail instead when
    CLOUDSEG_REQUIRE_REAL_DATA=1 (as in CI), so that CI never passes by skipping.
    """
    path = real_data_dir()
    if not (path / "PROVENANCE.md").is_file():
        reason = (
            f"real data folder {path} is absent: put the shared folder beside the checkout "
            f"or set {REAL_DATA_ENV}"
        )
        if os.environ.get(REQUIRE_REAL_DATA_ENV) == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def venv_env() -> dict[str, str]:
    """Environment for subprocesses that must see this venv (as an activated one would)."""
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(Path(sys.executable).parents[1])
    env.setdefault("QT_QPA_PLATFORM", "offscreen")
    return env


@pytest.fixture(scope="session")
def import_all() -> Callable[[str], dict[str, list[str]]]:
    """Import a package and all its submodules in a fresh interpreter.

    Returns a function ``package -> {"modules": [...], "qgis_modules": [...]}`` where
    ``qgis_modules`` lists the qgis / PyQt5 / processing modules that got loaded.
    """

    def run(package: str) -> dict[str, list[str]]:
        out = subprocess.run(
            [sys.executable, "-c", _IMPORT_ALL, package], check=True, capture_output=True, text=True
        )
        return json.loads(out.stdout)

    return run


CHIP = "oncloudn_l2a/adwp"
BANDS = ["B02", "B03", "B04", "B08"]


@pytest.fixture(scope="session")
def band_folder(real_data) -> Path:
    """A real Sentinel-2 L2A chip as a folder of single-band files (B02.tif ...)."""
    return real_data / CHIP


def stack_bands(
    band_folder: Path, target: Path, order: list[str], describe: bool = True, **profile_changes
) -> Path:
    """Write the chip's bands into one multi-band GeoTIFF in ``order``."""
    import rasterio

    arrays = []
    for band in order:
        with rasterio.open(band_folder / f"{band}.tif") as src:
            arrays.append(src.read(1))
            profile = src.profile
    profile.update(count=len(order), **profile_changes)
    with rasterio.open(target, "w", **profile) as dst:
        dst.write(np.stack(arrays))
        if describe:
            for i, band in enumerate(order, start=1):
                dst.set_band_description(i, band)
    return target


def tiled_scene(chip: Path, target: Path, times: int = 3, **profile_changes: Any) -> Path:
    """The chip tiled ``times`` x ``times``: a larger scene of real pixels, bands named.

    3 x 3 runs long enough to cancel mid-run; 8 x 8 of the 512 px chip is 4096 px a side.
    An existing ``target`` is kept (several tests share one).
    """
    import rasterio

    if target.exists():
        return target
    with rasterio.open(chip) as src:
        data, profile, names = src.read(), src.profile, src.descriptions
    profile.update(width=data.shape[2] * times, height=data.shape[1] * times, **profile_changes)
    with rasterio.open(target, "w", **profile) as dst:
        dst.write(np.tile(data, (1, times, times)))
        for i, name in enumerate(names, start=1):
            dst.set_band_description(i, name)
    return target


@pytest.fixture(scope="session")
def labeled_s2(real_data, tmp_path_factory):
    """The labeled ukis Sentinel-2 scene as files (30 m, UTM) and the 4-band model's doubt.

    Returns ``(scene, doubt)``: a ``LabeledScene`` (image and label GeoTIFFs) and the
    uncertainty raster of ``ukis-csmask-4b-l1c`` on it, to propose boxes from.
    """
    from reference_scenes import labeled_scenes

    from cloudseg.backend.inference.segment import SegmentOptions, segment

    work = tmp_path_factory.mktemp("labeled-s2")
    scene = next(labeled_scenes(real_data, work))
    doubt = work / "doubt.tif"
    options = SegmentOptions(model="ukis-csmask-4b-l1c", uncertainty=doubt)
    segment(scene.image, work / "mask.tif", options)
    return scene, doubt


@pytest.fixture(scope="session")
def multiband(band_folder, tmp_path_factory) -> Path:
    """The same chip as one 4-band GeoTIFF whose band descriptions name the bands."""
    return stack_bands(band_folder, tmp_path_factory.mktemp("mb") / "chip.tif", BANDS)


def start_moto(port: int, **popen: Any) -> subprocess.Popen:
    """A real moto S3 server on ``127.0.0.1:port``, started and answering."""
    import time
    import urllib.request

    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        **popen,
    )
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    return server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 endpoint over HTTP: moto's server on 127.0.0.1, with IAM auth on.

    Yields ``{"endpoint", "access_key", "secret_key"}`` of a user allowed everything;
    other credentials are refused, as MinIO or AWS would refuse them.
    """
    import socket

    import boto3

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    server = start_moto(
        port, env=dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3"), stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        setup = {"endpoint_url": endpoint, "region_name": "us-east-1"}
        iam = boto3.client("iam", aws_access_key_id="setup", aws_secret_access_key="setup", **setup)
        iam.create_user(UserName="cloudseg")
        key = iam.create_access_key(UserName="cloudseg")["AccessKey"]
        iam.put_user_policy(
            UserName="cloudseg",
            PolicyName="all",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
                }
            ),
        )
        yield {
            "endpoint": endpoint,
            "access_key": key["AccessKeyId"],
            "secret_key": key["SecretAccessKey"],
        }
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()


@pytest.fixture
def s3_bucket(s3_server, monkeypatch, request):
    """A fresh bucket on the moto endpoint, with MINIO_* variables pointing at it."""
    import boto3

    name = "t-" + "".join(c for c in request.node.name.lower() if c.isalnum())[:40]
    boto3.client(
        "s3",
        endpoint_url=s3_server["endpoint"],
        aws_access_key_id=s3_server["access_key"],
        aws_secret_access_key=s3_server["secret_key"],
        region_name="us-east-1",
    ).create_bucket(Bucket=name)
    monkeypatch.setenv("MINIO_ENDPOINT", s3_server["endpoint"])
    monkeypatch.setenv("MINIO_ACCESS_KEY", s3_server["access_key"])
    monkeypatch.setenv("MINIO_SECRET_KEY", s3_server["secret_key"])
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(variable, raising=False)
    return name


@pytest.fixture(scope="session")
def planted_store(real_data, tmp_path_factory):
    """A store of four 128 px chips of the labeled Sentinel-2 scene; the cloudiest labeled clear.

    Returns the store, the planted chip's id and every chip's stored labels.
    """
    from rasterio.transform import from_origin
    from reference_scenes import SIX_BANDS, labeled_scenes

    from cloudseg.backend.active.labels import LabeledWindow, windows_to_store

    work = tmp_path_factory.mktemp("labels")
    scene = next(s for s in labeled_scenes(real_data, work / "s") if s.name == "ukis-s2-l1c")
    image, truth = np.moveaxis(scene.reflectance, -1, 0), scene.reference()
    chips = {f"chip-{r}-{c}": (r, c) for r in (0, 128) for c in (256, 384)}
    cloudiest = max(chips, key=lambda n: (truth[_window(chips[n])] == 1).mean())
    stored, windows = {}, []
    for name, (r, c) in chips.items():
        mask = truth[_window((r, c))].copy()
        if name == cloudiest:
            mask[:] = 0  # "no cloud" over a cloud bank
        stored[name] = mask
        transform = from_origin(500000 + c * 30, 5300000 - r * 30, 30, 30)
        reflectance = image[(slice(None), *_window((r, c)))]
        windows.append(LabeledWindow(name, reflectance, mask, transform, "EPSG:32632"))
    classes = ["clear", "cloud", "cloud shadow"]
    windows_to_store(windows, list(SIX_BANDS), classes, work / "store", env_file=None,
                     name="cloudseg-dataset")  # fmt: skip
    return work / "store", cloudiest, stored


def _window(corner: tuple[int, int]) -> tuple[slice, slice]:
    r, c = corner
    return slice(r, r + 128), slice(c, c + 128)


@pytest.fixture(scope="session")
def checked_store(planted_store, tmp_path_factory):
    """A copy of the planted store after ``cloudseg labels check`` (64 px windows).

    Returns the store, the planted chip's id and the check's result. Tests that change
    the store further copy it first.
    """
    import shutil

    from cloudseg.training.label_check import check_labels

    store, cloudiest, _ = planted_store
    work = tmp_path_factory.mktemp("checked")
    shutil.copytree(store, work / "store")
    result = check_labels(work / "store", "ukis-csmask-6b-l1c", work / "check", window=64)
    return work / "store", cloudiest, result


@pytest.fixture(scope="session")
def batch_scenes(real_data, tmp_path_factory):
    """Ten real scenes (top and bottom halves of the On Cloud N chips) and a broken one."""
    folder = tmp_path_factory.mktemp("batch") / "in"
    folder.mkdir()
    import rasterio

    for chip in sorted(p for p in (real_data / "oncloudn_l2a").iterdir() if p.is_dir()):
        stack = []
        for band in ("B02", "B03", "B04", "B08"):
            with rasterio.open(chip / f"{band}.tif") as ds:
                stack.append(ds.read(1))
                profile = ds.profile
        image = np.stack(stack)
        for half, start in (("top", 0), ("bottom", 256)):
            out = profile | {"count": 4, "height": 256, "driver": "GTiff"}
            out["transform"] = profile["transform"] * rasterio.Affine.translation(0, start)
            with rasterio.open(folder / f"{chip.name}-{half}.tif", "w", **out) as ds:
                ds.write(image[:, start : start + 256])
                ds.descriptions = ("B02", "B03", "B04", "B08")
    (folder / "broken.tif").write_text("not a raster")
    return folder

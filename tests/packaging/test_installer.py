"""The QGIS plugin's installer, with real pip, into Debian's own Python (QGIS's), offline.

The wheel folder is made the way the README tells an offline user to make it (``pip
download -r resources/locks/segment.txt``); the installer then reads nothing from the
network. What it installs is used by ``/usr/bin/python3`` (QGIS's Python on Debian) with
cloudseg's folder after its own packages: a real segmentation runs there without torch,
with Debian's numpy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from cloudseg.backend.dependencies import SEGMENT
from cloudseg.backend.errors import CancelledError
from cloudseg.backend.installer import RECEIPT, InstallError, PackageInstaller
from cloudseg.backend.locks import lock_file

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
QGIS_PYTHON = "/usr/bin/python3"


def qgis_python_has(name: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({name!r}))"
    return subprocess.run([QGIS_PYTHON, "-c", code], capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="session")
def wheels(tmp_path_factory) -> Path:
    """The segmentation step's locked wheels, downloaded as the README says."""
    if not Path(QGIS_PYTHON).is_file():
        pytest.fail(f"{QGIS_PYTHON} (QGIS's Python on Debian) is missing: run make install")
    folder = tmp_path_factory.mktemp("wheels")
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "-q"),
            *("--only-binary=:all:", "-d", str(folder), "-r", str(lock_file("segment"))),
        ],
        check=True,
    )
    return folder


@pytest.fixture(scope="session")
def plugin_parent(tmp_path_factory) -> Path:
    """A folder holding this checkout as ``cloudseg``, as a QGIS plugins folder does."""
    parent = tmp_path_factory.mktemp("plugins")
    (parent / "cloudseg").symlink_to(ROOT)
    return parent


@pytest.fixture(scope="session")
def installed(wheels, tmp_path_factory) -> tuple[Path, object, list[tuple[float, str]]]:
    """The segmentation step installed offline for QGIS's Python: (root, plan, progress)."""
    root = tmp_path_factory.mktemp("profile") / "cloudseg" / "python3.11"
    installer = PackageInstaller(root, python=QGIS_PYTHON, wheels=wheels)
    plan = installer.plan(SEGMENT)
    seen: list[tuple[float, str]] = []
    installer.install(plan, lambda percent, message: seen.append((percent, message)))
    return root, plan, seen


def test_the_plan_says_the_size_first_and_leaves_qgis_packages_alone(installed, wheels):
    _root, plan, _seen = installed
    names = {pin.name for pin in plan.pins}
    assert "onnxruntime" in names and "ukis-csmask" in names
    assert "torch" not in names
    # QGIS's own numpy (Debian's) and what else its Python has are used as they are.
    assert plan.from_python["numpy"] == qgis_python_has("numpy")
    assert "numpy" not in names and "pip" not in names
    on_disk = {f.name: f.stat().st_size for f in wheels.iterdir()}
    assert plan.files == {name: on_disk[name] for name in plan.files}
    assert plan.download_bytes == sum(plan.files.values()) > 50 * 2**20
    assert "MB to download from the wheel folder" in plan.summary()


def test_install_reports_progress_and_publishes_a_receipt(installed):
    root, plan, seen = installed
    percents = [p for p, _ in seen]
    assert percents == sorted(percents) and percents[-1] == 100.0
    assert any("downloading" in m or "fetching" in m for _, m in seen)
    receipt = json.loads((root / "segment" / RECEIPT).read_text())
    assert receipt["packages"] == {p.name: p.version for p in plan.pins}
    assert receipt["from_python"]["numpy"] == qgis_python_has("numpy")
    assert not [p for p in root.iterdir() if p.name.startswith(".")], "temporaries left"
    assert PackageInstaller(root).status(SEGMENT).startswith("installed")


@pytest.mark.real_data
def test_qgis_python_segments_without_torch_with_its_own_numpy(
    installed, plugin_parent, real_data, tmp_path, venv_env
):
    """Segment, valid mask, thresholds and polygons in QGIS's Python with the step."""
    root, _plan, _seen = installed
    chip = real_data / "oncloudn_l2a" / "adwp"
    code = f"""
import json, sys
from pathlib import Path
from cloudseg.backend.installer import activate
activate(Path({str(root)!r}))
from cloudseg.backend.inference.segment import SegmentOptions, segment
out = Path({str(tmp_path)!r})
options = SegmentOptions(product_level="L2A", valid=out / "valid.tif", polygons=out / "p.gpkg",
                         cloud_threshold=0.6, shadow_threshold=0.4)
segment(Path({str(chip)!r}), out / "mask.tif", options)
import numpy
print(json.dumps({{"numpy": numpy.__file__, "torch": "torch" in sys.modules,
                  "paths": [p for p in sys.path if "cloudseg" in p]}}))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PYTHONPATH"] = str(plugin_parent)
    env["PATH"] = "/usr/bin:/bin"
    done = subprocess.run([QGIS_PYTHON, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["numpy"].startswith("/usr/lib/python3/dist-packages/")
    assert seen["torch"] is False
    assert seen["paths"][-1].endswith("/segment")  # after QGIS's own packages
    assert (tmp_path / "valid.tif").is_file() and (tmp_path / "p.gpkg").is_file()
    # The same run in the project's venv (its numpy, everything locked): the same mask.
    reference = tmp_path / "venv-mask.tif"
    subprocess.run(
        ["cloudseg", "segment", str(chip), str(reference), "-q", "--product-level", "L2A",
         "--cloud-threshold", "0.6", "--shadow-threshold", "0.4"],
        env=venv_env, check=True,
    )  # fmt: skip
    with rasterio.open(tmp_path / "mask.tif") as a, rasterio.open(reference) as b:
        assert np.array_equal(a.read(1), b.read(1))


def test_cancel_leaves_nothing_behind(wheels, tmp_path):
    root = tmp_path / "cloudseg" / "python3.11"
    installer = PackageInstaller(root, python=QGIS_PYTHON, wheels=wheels)
    plan = installer.plan(SEGMENT)
    calls = []

    def cancelled() -> bool:
        calls.append(1)
        return len(calls) > 3  # while pip runs

    with pytest.raises(CancelledError):
        installer.install(plan, cancelled=cancelled)
    assert not (root / "segment").exists()
    assert [p.name for p in root.iterdir()] == ["pip"]  # the cached pip wheel only


def test_a_changed_wheel_is_refused_and_nothing_is_installed(wheels, tmp_path):
    changed = linked_without(wheels, tmp_path / "wheels", "\0")
    victim = next(changed.glob("tqdm-*.whl"))
    data = victim.read_bytes()
    victim.unlink()  # a new file: the hard link to the fixture's stays intact
    victim.write_bytes(data + b"\0")
    root = tmp_path / "root"
    installer = PackageInstaller(root, python=QGIS_PYTHON, wheels=changed)
    with pytest.raises(InstallError) as error:
        installer.install(installer.plan(SEGMENT))
    assert "SHA-256" in str(error.value) and "\n" not in str(error.value)
    assert not (root / "segment").exists()


def linked_without(wheels: Path, folder: Path, prefix: str) -> Path:
    """``folder`` with hard links to every wheel but those whose name starts ``prefix``."""
    folder.mkdir()
    for wheel in wheels.iterdir():
        if not wheel.name.startswith(prefix):
            os.link(wheel, folder / wheel.name)
    return folder


def test_a_missing_wheel_offline_is_named(wheels, tmp_path):
    partial = linked_without(wheels, tmp_path / "wheels", "tqdm-")
    installer = PackageInstaller(tmp_path / "root", python=QGIS_PYTHON, wheels=partial)
    with pytest.raises(InstallError) as error:
        installer.plan(SEGMENT)
    message = str(error.value)
    assert "tqdm" in message and "wheel folder" in message and "\n" not in message


def test_a_wheel_folder_without_pip_says_how_to_add_it(wheels, tmp_path):
    partial = linked_without(wheels, tmp_path / "wheels", "pip-")
    installer = PackageInstaller(tmp_path / "root", python=QGIS_PYTHON, wheels=partial)
    with pytest.raises(InstallError) as error:
        installer.plan(SEGMENT)
    assert "pip download --no-deps pip==" in str(error.value)


def test_uninstall_removes_every_file(wheels, tmp_path):
    root = tmp_path / "cloudseg" / "python3.11"
    installer = PackageInstaller(root, python=QGIS_PYTHON, wheels=wheels)
    installer.install(installer.plan(SEGMENT))
    freed = installer.uninstall()
    assert freed > 50 * 2**20
    assert not root.exists()
    assert root.parent.exists()  # only cloudseg's own folder went


@pytest.mark.real_data
def test_before_the_install_segment_names_the_package_that_brings_the_models(
    plugin_parent, real_data, tmp_path
):
    """QGIS's Python with the plugin but no step installed: not "no model for L2A"."""
    code = f"""
from pathlib import Path
from cloudseg.backend.errors import CloudsegError
from cloudseg.backend.inference.segment import SegmentOptions, segment
try:
    segment(Path({str(real_data / "oncloudn_l2a" / "adwp")!r}), Path({str(tmp_path / "m.tif")!r}),
            SegmentOptions(product_level="L2A"))
except CloudsegError as exc:
    print(exc)
"""
    env = {"PYTHONPATH": str(plugin_parent), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run([QGIS_PYTHON, "-c", code], capture_output=True, text=True, env=env)
    line = done.stdout.strip()
    assert done.returncode == 0 and "\n" not in line, done.stderr[-2000:]
    assert line.startswith("no built-in model is installed")
    assert "ukis-csmask" in line and "L2A" not in line
    assert list(tmp_path.iterdir()) == []

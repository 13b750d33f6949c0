"""A new analyst installs cloudseg as QGIS users do, in the real QGIS, with no terminal.

Fresh HOME, QGIS's own Python only (nothing of the project's venv on PYTHONPATH), the
zip of ``make package`` through QGIS's *Install from ZIP* code, packages from the package
index as pip is configured on this machine. Then ``qgis_process`` in the same profile,
the optional training step with a fine-tune round and explain, and the uninstall.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.real_data, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory, real_data) -> dict:
    """A fresh HOME, the plugin zip and an environment without the venv."""
    home = tmp_path_factory.mktemp("home")
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(["/usr/bin/python3", str(ROOT / "scripts" / "package_plugin.py"),
                    "--output-dir", str(dist)], check=True)  # fmt: skip
    keep = ("LANG", "LC_ALL", "PIP_CERT", "PIP_DEFAULT_TIMEOUT", "PIP_FIND_LINKS", "TMPDIR")
    env = {k: v for k, v in os.environ.items() if k in keep or k.startswith("CLOUDSEG_GUI")}
    env |= {"HOME": str(home), "PATH": "/usr/bin:/bin", "CLOUDSEG_REAL_DATA": str(real_data)}
    env["CLOUDSEG_MODELS_DIR"] = str(home / "models")
    return {"home": home, "zip": next(dist.glob("cloudseg-*.zip")), "env": env}


def run_phase(run_qgis, fresh, phase: str, timeout: int) -> dict:
    return run_qgis(
        "install_flow",
        timeout=timeout,
        _replace_env=fresh["env"]
        | {"CLOUDSEG_GUI_PHASE": phase, "CLOUDSEG_GUI_ZIP": str(fresh["zip"])},
        _profiles=False,
    )


def test_zip_then_one_button_then_a_mask_then_qgis_process_then_training(
    run_qgis, fresh, real_data, tmp_path
):
    seen = run_phase(run_qgis, fresh, "segment", timeout=900)
    assert seen["errors"] == [], seen["errors"]
    assert seen["plugin_started"]
    assert any("Install packages..." in text for text in seen["bar"]), seen["bar"]
    assert "MB to download from the package index" in seen["plan_text"], seen["plan_text"]
    assert "ready to use" in seen["after_install"], seen["after_install"]
    assert seen["mask_layers"], "no mask layer appeared"
    # QGIS's own Python is unchanged: same numpy and GDAL, from the same place.
    assert seen["after"] == seen["before"]
    assert seen["before"]["numpy_file"].startswith("/usr/lib/python3/dist-packages/")
    assert seen["torch"] is False
    root = Path(seen["packages_root"])
    assert root.is_relative_to(fresh["home"])
    assert seen["paths"] == [str(root / "segment")]
    # Check environment names what the training step would bring, nothing of segmenting.
    missing = seen["environment_missing"].split(",")
    assert {"torch", "zarr", "captum"} <= set(missing) and "onnxruntime" not in missing
    (tmp_path / "first.json").write_text(json.dumps(seen))

    # qgis_process in the same profile finds the plugin (enabled by the install from the
    # zip) and its packages.
    env = fresh["env"] | {"QT_QPA_PLATFORM": "offscreen"}
    done = subprocess.run(
        ["qgis_process.bin", "--json", "run", "cloudseg:segment", "--",
         f"INPUT={real_data / 'oncloudn_l2a' / 'adwp' / 'B04.tif'}", "PRODUCT_LEVEL=L2A",
         f"OUTPUT={tmp_path / 'mask.tif'}"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (tmp_path / "mask.tif").is_file()
    results = json.loads(done.stdout)["results"]
    assert results["CLOUD_PERCENT"] > 0

    first = seen
    seen = run_phase(run_qgis, fresh, "training", timeout=1500)
    report = os.environ.get("CLOUDSEG_INSTALL_REPORT")
    if report:  # clicks, minutes and megabytes to a first mask and a first fine-tune
        Path(report).write_text(json.dumps({"segment": first, "training": seen}, indent=1))
    assert seen["errors"] == [], seen["errors"]
    assert seen["offered"] and seen["focus"] == "training"
    assert "to download from the package index" in seen["training_plan"]
    # "ready to use", or a restart asked for where QGIS had loaded a package replaced
    assert "installed" in seen["after_install"], seen["after_install"]
    assert seen["rounds"] == 1, seen["after_fine_tune"]
    assert seen["explain"] and Path(seen["explain"]).is_file()
    assert seen["after"] == seen["before"]
    assert seen["left_after_uninstall"] is False
    assert not root.exists()

"""GUI tests: the real QGIS desktop under Xvfb, driven by a script as a user would drive it.

Each test starts ``qgis --code DRIVER`` with a fresh profile in which cloudseg (this
checkout) is enabled; the driver (``drivers/``) acts through ``iface`` and the plugin,
writes what it saw as JSON, and quits. pytest-qgis's mocked ``iface`` cannot open
Processing dialogs or unload a plugin the way the Plugin Manager does; this can.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DRIVERS = Path(__file__).resolve().parent / "drivers"


@pytest.fixture(scope="session")
def run_qgis(tmp_path_factory, real_data) -> Callable[..., dict]:
    """``run_qgis(driver, **env)``: run a driver in the real QGIS; return its JSON."""
    for tool in ("qgis", "xvfb-run"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed; run make install")
    plugins = tmp_path_factory.mktemp("plugins")
    (plugins / "cloudseg").symlink_to(ROOT)

    def run(
        driver: str,
        timeout: int = 120,
        _replace_env: dict[str, str] | None = None,
        _profiles: bool = True,
        **env: str,
    ) -> dict:
        """Run ``driver``; ``_replace_env``: the whole environment instead of this venv's
        (a user's QGIS); ``_profiles=False``: HOME's default profile, as users have it."""
        work = tmp_path_factory.mktemp(driver)
        profile = work / "profile" / "profiles" / "default" / "QGIS"
        profile.mkdir(parents=True)
        (profile / "QGIS3.ini").write_text("[PythonPlugins]\ncloudseg=true\n")
        result = work / "result.json"
        ours = {
            "CLOUDSEG_GUI_RESULT": str(result),
            "CLOUDSEG_GUI_WORK": str(work),
            "CLOUDSEG_GUI_DRIVERS": str(DRIVERS),
        }
        if _replace_env is not None:
            environment = _replace_env | ours
        else:
            environment = (
                dict(os.environ)
                | {
                    "PYTHONPATH": sysconfig.get_paths()["purelib"],
                    "QGIS_PLUGINPATH": str(plugins),
                    "CLOUDSEG_REAL_DATA": str(real_data),
                    "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
                }
                | ours
                | env
            )
        environment.pop("QT_QPA_PLATFORM", None)  # a real (virtual) display
        profiles = ("--profiles-path", str(work / "profile")) if _profiles else ()
        command = [
            *("xvfb-run", "-a", "-s", "-screen 0 1600x1000x24"),
            *("timeout", str(timeout), "qgis", "--nologo", "--noversioncheck"),
            *profiles, "--code", str(DRIVERS / f"{driver}.py"),
        ]  # fmt: skip
        done = subprocess.run(command, env=environment, capture_output=True, text=True)
        if not result.is_file():
            pytest.fail(
                f"the driver wrote no result (exit {done.returncode}):\n{done.stderr[-3000:]}"
            )
        return json.loads(result.read_text())

    return run

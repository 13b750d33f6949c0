"""The wheel pip builds from the checkout, built once for the packaging tests that read it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from package_tree import copy_checkout


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """The wheel pip builds from a copy of the checkout (offline, with .venv's setuptools)."""
    source = copy_checkout(tmp_path_factory.mktemp("checkout") / "cloudseg")
    out = tmp_path_factory.mktemp("wheel")
    offline = ("--no-build-isolation", "--no-deps", "--no-index", "-q")
    run = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", *offline, "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    (built,) = out.glob("cloudseg-*.whl")
    return built

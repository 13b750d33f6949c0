"""Fixtures for engine tests: real chips in the forms users have them, and tiny real models."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from ..conftest import BANDS, CHIP, stack_bands  # noqa: F401 (re-exported)


def load_script(name: str):
    path = Path(__file__).resolve().parents[1] / "data" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def make_safe():
    return load_script("make_safe").make_safe

"""Fixtures for plugin tests (pytest-qgis, offscreen)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def plugin(qgis_iface: Any, qgis_processing: None) -> Iterator[Any]:
    """The cloudseg plugin as QGIS starts it (classFactory + initGui), unloaded after."""
    import cloudseg

    instance = cloudseg.classFactory(qgis_iface)
    instance.initGui()
    yield instance
    instance.unload()

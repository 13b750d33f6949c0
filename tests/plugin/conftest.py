"""Fixtures for plugin tests (pytest-qgis, offscreen)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest


@pytest.fixture
def wait_for() -> Callable[..., None]:
    """Wait (processing events) until a QgsTask ends, and its finished() has run."""
    import time

    from qgis.core import QgsApplication, QgsTask

    def wait(task: QgsTask, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while task.status() not in (QgsTask.Complete, QgsTask.Terminated):
            QgsApplication.processEvents()
            assert time.monotonic() < end, "task did not finish"
            time.sleep(0.02)
        for _ in range(20):  # let finished() run on this thread
            QgsApplication.processEvents()

    return wait


@pytest.fixture
def plugin(qgis_iface: Any, qgis_processing: None) -> Iterator[Any]:
    """The cloudseg plugin as QGIS starts it (classFactory + initGui), unloaded after."""
    import cloudseg

    instance = cloudseg.classFactory(qgis_iface)
    instance.initGui()
    yield instance
    instance.unload()

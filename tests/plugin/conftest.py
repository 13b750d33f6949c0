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
def chip_layer(multiband: Any) -> Iterator[Any]:
    """The real 4-band chip as a raster layer in the project; the project emptied after."""
    from qgis.core import QgsProject, QgsRasterLayer

    layer = QgsRasterLayer(str(multiband), "chip")
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    yield layer
    QgsProject.instance().removeAllMapLayers()
    QgsProject.instance().layerTreeRoot().removeAllChildren()


@pytest.fixture
def plugin(qgis_iface: Any, qgis_processing: None) -> Iterator[Any]:
    """The cloudseg plugin as QGIS starts it (classFactory + initGui), unloaded after."""
    import cloudseg

    instance = cloudseg.classFactory(qgis_iface)
    instance.initGui()
    yield instance
    instance.unload()


#: The token of the plugin tests' server, and the master password of the tests' auth DB.
SERVER_TOKEN = "a-long-token-for-the-plugin-server-tests"
MASTER_PASSWORD = "master-password-of-the-plugin-tests"


@pytest.fixture(scope="session")
def token_server(tmp_path_factory: Any) -> Iterator[Any]:
    """A real ``cloudseg serve --token`` on a free loopback port, reading no folder.

    Scenes reach it as uploads, as they do from an analyst's laptop. Its ``work``
    folder is where the uploads and jobs lie.
    """
    import os
    import sys
    from pathlib import Path

    from serving import start_server

    env = dict(os.environ)
    env.pop("CLOUDSEG_SERVE_TOKEN", None)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    server = start_server(env, tmp_path_factory.mktemp("plugin-server"),
                          "--token", SERVER_TOKEN, token=SERVER_TOKEN)  # fmt: skip
    yield server
    server.stop()


@pytest.fixture
def server_auth(qgis_app: Any) -> Iterator[str]:
    """The server's token stored in QGIS's authentication manager; the configuration id."""
    from qgis.core import QgsApplication

    from cloudseg.cloudseg_plugin.servers import store_token

    manager = QgsApplication.authManager()
    assert manager.setMasterPassword(MASTER_PASSWORD, True), "the auth DB has another password"
    authcfg = store_token("http://127.0.0.1", SERVER_TOKEN)
    yield authcfg
    manager.removeAuthenticationConfig(authcfg)

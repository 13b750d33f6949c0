"""*Run on: a cloudseg server*: the token kept by QGIS's authentication manager, nowhere else."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_the_token_is_read_from_qgis_authentication_manager(server_auth, token_server):
    from qgis.core import QgsSettings

    from cloudseg.cloudseg_plugin.servers import (
        ServerChoice,
        client_for,
        save_server,
        saved_server,
        token_of,
    )

    assert token_of(server_auth) == token_server.token
    choice = ServerChoice(token_server.url, server_auth)
    client = client_for(choice)
    assert client.capabilities()["max_upload_bytes"] > 0  # the token was accepted
    save_server(choice)
    try:
        assert saved_server() == choice
        settings = QgsSettings()
        kept = {key: str(settings.value(key)) for key in settings.allKeys()}
        assert not [key for key, value in kept.items() if token_server.token in value]
    finally:
        save_server(ServerChoice())  # later docks start on this computer


def test_an_unknown_configuration_is_one_line(qgis_app):
    from cloudseg.backend.errors import CloudsegError
    from cloudseg.cloudseg_plugin.servers import token_of

    with pytest.raises(CloudsegError, match="cannot read the server's token") as failed:
        token_of("nosuch1")
    assert "\n" not in str(failed.value)

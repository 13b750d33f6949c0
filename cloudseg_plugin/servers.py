"""Where a run goes: this computer, or a cloudseg server whose token QGIS keeps.

The one place the plugin turns *Run on* into a client (:class:`ServerClient`): the
Processing algorithms (``SERVER`` and ``SERVER_AUTH`` parameters) and the dock both
call :func:`client_for`. The token lives in QGIS's authentication manager
(:class:`QgsAuthManager`, encrypted under the master password): the plugin keeps only
the configuration's id, so the token is never in a project file, in Processing's
history or in the log. A configuration of the *Basic* method holds the token as its
password (the user name is not used); one of the *EsriToken* method as its token.

Nothing here imports cloudseg's runtime packages: a run on a server needs QGIS's own
Python only.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from qgis.core import QgsApplication, QgsAuthMethodConfig, QgsSettings

from ..backend.errors import CloudsegError
from ..backend.remote import ServerClient

#: Where the dock keeps the server it used last (URL and auth configuration id only).
SETTINGS_KEY = "cloudseg/server"
#: The auth method a token is stored with by :func:`store_token`.
TOKEN_METHOD = "Basic"


@dataclass(frozen=True)
class ServerChoice:
    """A cloudseg server as the analyst chose it.

    Attributes:
        url: ``http(s)://host:port`` ("" : run on this computer).
        authcfg: The id of the QGIS authentication configuration holding its token
            ("" : the server needs none, e.g. on this machine's loopback).
    """

    url: str = ""
    authcfg: str = ""

    @property
    def remote(self) -> bool:
        """True when the run goes to a server."""
        return bool(self.url.strip())


def saved_server() -> ServerChoice:
    """The server the dock used last (none: this computer)."""
    settings = QgsSettings()
    url = settings.value(f"{SETTINGS_KEY}/url", "", type=str)
    return ServerChoice(url, settings.value(f"{SETTINGS_KEY}/authcfg", "", type=str))


def save_server(choice: ServerChoice) -> None:
    """Remember the server (its URL and the auth configuration's id; never the token)."""
    settings = QgsSettings()
    settings.setValue(f"{SETTINGS_KEY}/url", choice.url.strip())
    settings.setValue(f"{SETTINGS_KEY}/authcfg", choice.authcfg)


def token_of(authcfg: str) -> str | None:
    """The token an authentication configuration holds (None for no configuration).

    Raises:
        CloudsegError: When the configuration cannot be read (unknown id, or the
            authentication database is locked), in one line.
    """
    if not authcfg:
        return None
    manager = QgsApplication.authManager()
    config = QgsAuthMethodConfig()
    loaded = manager.loadAuthenticationConfig(authcfg, config, True)
    ok = loaded[0] if isinstance(loaded, tuple) else loaded
    if not ok or not config.isValid(True):
        raise CloudsegError(
            f"cannot read the server's token from the authentication configuration {authcfg}: "
            "check that it exists (Settings > Options > Authentication) and that QGIS's "
            "master password is entered"
        )
    token = config.config("token") if config.method() == "EsriToken" else config.config("password")
    if not token:
        raise CloudsegError(
            f"the authentication configuration {authcfg} holds no token: put the server's "
            "token in its password"
        )
    return token


def store_token(url: str, token: str, authcfg: str = "") -> str:
    """Keep a server's token in QGIS's authentication manager; the configuration's id.

    Updates ``authcfg`` when given, else adds a configuration named after the server.

    Raises:
        CloudsegError: When QGIS cannot store it (the master password not entered).
    """
    manager = QgsApplication.authManager()
    config = QgsAuthMethodConfig(TOKEN_METHOD)
    if authcfg:
        config.setId(authcfg)
    config.setName(f"cloudseg server {urlsplit(url).netloc or url}")
    config.setUri(url)
    config.setConfig("username", "cloudseg")
    config.setConfig("password", token)
    if authcfg and authcfg in manager.configIds():
        stored = manager.updateAuthenticationConfig(config)
    else:
        stored = manager.storeAuthenticationConfig(config)
    ok = stored[0] if isinstance(stored, tuple) else stored
    if not ok:
        raise CloudsegError(
            "QGIS did not store the token: enter its master password (Settings > Options > "
            "Authentication) and try again"
        )
    return config.id()


def client_for(choice: ServerChoice) -> ServerClient:
    """The client of the chosen server, its token read from QGIS's authentication manager.

    Raises:
        CloudsegError: For a URL that is not a server's, or a token that cannot be read.
    """
    return ServerClient(choice.url.strip(), token_of(choice.authcfg))

"""The package version, read from the QGIS plugin's ``metadata.txt`` (its one home)."""

from __future__ import annotations

from configparser import ConfigParser
from importlib import metadata
from pathlib import Path


def _read_version() -> str:
    """Return the version from ``metadata.txt``, or from the installed distribution.

    Returns:
        The version string, ``"0+unknown"`` if neither source is available.
    """
    metadata_txt = Path(__file__).resolve().parents[1] / "metadata.txt"
    if metadata_txt.is_file():
        parser = ConfigParser()
        parser.read(metadata_txt, encoding="utf-8")
        if parser.has_option("general", "version"):
            return parser.get("general", "version")
    try:
        return metadata.version("cloudseg")
    except metadata.PackageNotFoundError:
        return "0+unknown"


__version__ = _read_version()

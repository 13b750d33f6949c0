"""Build shim: the version lives once, in the QGIS plugin's metadata.txt."""

from configparser import ConfigParser
from pathlib import Path

from setuptools import setup

_metadata = ConfigParser()
_metadata.read(Path(__file__).with_name("metadata.txt"), encoding="utf-8")
setup(version=_metadata["general"]["version"])

"""The Processing provider ``cloudseg``: every algorithm of the plugin lives under it."""

from __future__ import annotations

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from ..backend import __version__
from .algorithms import all_algorithms
from .resources import icon

PROVIDER_ID = "cloudseg"


class CloudSegProvider(QgsProcessingProvider):
    """Processing provider for cloud and cloud-shadow segmentation."""

    def id(self) -> str:
        """Return the provider id used in algorithm ids (``cloudseg:segment``)."""
        return PROVIDER_ID

    def name(self) -> str:
        """Return the name shown in the Processing Toolbox."""
        return "Cloud segmentation (cloudseg)"

    def longName(self) -> str:
        """Return the name with the version."""
        return f"Cloud segmentation (cloudseg {__version__})"

    def icon(self) -> QIcon:
        """Return the provider icon."""
        return icon()

    def versionInfo(self) -> str:
        """Return the plugin version."""
        return __version__

    def loadAlgorithms(self) -> None:
        """Register one instance of each algorithm."""
        for algorithm in all_algorithms():
            self.addAlgorithm(algorithm)

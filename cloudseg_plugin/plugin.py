"""The plugin object QGIS creates through ``classFactory``."""

from __future__ import annotations

import logging
from typing import Any

from qgis.core import Qgis, QgsApplication, QgsMessageLog
from qgis.PyQt.QtWidgets import QAction

from ..backend.dependencies import REQUIREMENTS, Requirement, install_hint, missing_requirements
from . import logbridge
from .provider import PROVIDER_ID, CloudSegProvider
from .resources import icon

MENU = "&Cloud segmentation"


class CloudSegPlugin:
    """Registers the Processing provider, menu actions and the log bridge.

    ``initProcessing`` is all that headless ``qgis_process`` calls; ``initGui`` adds the
    GUI parts on top. ``unload`` removes everything both added.
    """

    def __init__(self, iface: Any) -> None:
        self.iface = iface
        self.provider: CloudSegProvider | None = None
        self.actions: list[QAction] = []
        self._log_handler: logging.Handler | None = None

    # -- Processing --------------------------------------------------------------
    def initProcessing(self) -> None:
        """Register the ``cloudseg`` Processing provider (once)."""
        if self._log_handler is None:
            self._log_handler = logbridge.install()
        if self.provider is None:
            self.provider = CloudSegProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    # -- GUI ---------------------------------------------------------------------
    def initGui(self) -> None:
        """Add the provider, the menu actions, and warn once about missing packages."""
        self.initProcessing()
        action = QAction(icon(), "Check environment (GPU, packages)...", self.iface.mainWindow())
        action.setObjectName("cloudsegCheckEnvironment")
        action.triggered.connect(self._open_environment_dialog)
        self.iface.addPluginToRasterMenu(MENU, action)
        self.actions.append(action)
        self.report_missing_dependencies()

    def unload(self) -> None:
        """Remove the provider, actions and log handler that this plugin added."""
        for action in self.actions:
            self.iface.removePluginRasterMenu(MENU, action)
            action.deleteLater()
        self.actions.clear()
        if self.provider is not None:
            registry = QgsApplication.processingRegistry()
            if registry.providerById(PROVIDER_ID) is self.provider:
                registry.removeProvider(self.provider)
            self.provider = None
        if self._log_handler is not None:
            logbridge.uninstall(self._log_handler)
            self._log_handler = None

    # -- helpers -----------------------------------------------------------------
    def report_missing_dependencies(
        self, requirements: tuple[Requirement, ...] = REQUIREMENTS
    ) -> str:
        """Show one message bar warning (and a log entry) if packages are missing.

        Args:
            requirements: What to check; all of cloudseg's requirements by default.

        Returns:
            The message shown, empty when nothing is missing.
        """
        message = install_hint(missing_requirements(requirements))
        if message:
            QgsMessageLog.logMessage(message, logbridge.LOG_TAG, Qgis.Warning)
            self.iface.messageBar().pushMessage("cloudseg", message, Qgis.Warning, 0)
        return message

    def _open_environment_dialog(self) -> None:
        import processing

        processing.execAlgorithmDialog(f"{PROVIDER_ID}:environment", {})

"""The plugin object QGIS creates through ``classFactory``."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from qgis.core import Qgis, QgsApplication, QgsMapLayer, QgsMapLayerType, QgsMessageLog
from qgis.PyQt import sip
from qgis.PyQt.QtCore import Qt, QTimer
from qgis.PyQt.QtWidgets import QAction, QPushButton

from ..backend.dependencies import SEGMENT, TRAINING, Group, install_hint, missing_requirements
from . import logbridge, packages
from .provider import PROVIDER_ID, CloudSegProvider
from .resources import icon
from .servers import saved_server

MENU = "&Cloud segmentation"


def keep_triton_out() -> None:
    """Make ``import triton`` fail cleanly inside QGIS instead of crashing QGIS.

    Loading triton's compiled library into the QGIS desktop process kills QGIS with a
    segmentation fault (QGIS 3.22 under X, triton 3.x, which the Linux torch wheels
    install). torch imports triton only to offer ``torch.compile`` on GPUs, which
    cloudseg does not use; without it torch, Lightning and smp train and predict as
    before. The command line and scripts outside QGIS are not affected.
    """
    import sys

    if "triton" not in sys.modules:
        sys.modules["triton"] = None  # type: ignore[assignment]  # import -> ImportError


class CloudSegPlugin:
    """Registers the Processing provider, menu actions and the log bridge.

    ``initProcessing`` is all that headless ``qgis_process`` calls; ``initGui`` adds the
    GUI parts on top. ``unload`` removes everything both added.
    """

    def __init__(self, iface: Any) -> None:
        keep_triton_out()
        self.iface = iface
        self.provider: CloudSegProvider | None = None
        self.actions: list[QAction] = []
        self.layer_action: QAction | None = None
        self.panel_action: QAction | None = None
        self.dock: Any = None
        self.label_dock: Any = None
        self.label_action: QAction | None = None
        self.dialog: Any = None
        self._log_handler: logging.Handler | None = None
        self._offer: tuple[Group, Any, Any] | None = None

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

        install = QAction(icon(), "Install packages...", self.iface.mainWindow())
        install.setObjectName("cloudsegInstallPackages")
        install.triggered.connect(lambda: self.open_install_dialog())
        self.iface.addPluginToRasterMenu(MENU, install)
        self.actions.append(install)

        panel = QAction(icon(), "Cloud segmentation panel", self.iface.mainWindow())
        panel.setObjectName("cloudsegShowPanel")
        panel.setCheckable(True)
        panel.toggled.connect(self._toggle_dock)
        self.iface.addPluginToRasterMenu(MENU, panel)
        self.iface.addToolBarIcon(panel)
        self.actions.append(panel)
        self.panel_action = panel

        labels = QAction(icon(), "Label clouds (active learning)", self.iface.mainWindow())
        labels.setObjectName("cloudsegShowLabelDock")
        labels.setCheckable(True)
        labels.toggled.connect(self._toggle_label_dock)
        self.iface.addPluginToRasterMenu(MENU, labels)
        self.actions.append(labels)
        self.label_action = labels

        # Raster > Cloud segmentation > Segment clouds...: the dialog for the active layer.
        segment = QAction(icon(), "Segment clouds...", self.iface.mainWindow())
        segment.setObjectName("cloudsegSegmentMenu")
        segment.triggered.connect(lambda: self.open_segment_dialog())
        self.iface.addPluginToRasterMenu(MENU, segment)
        self.actions.insert(0, segment)

        # Layers panel, right-click on a raster layer (QGIS offers it for rasters only).
        self.layer_action = QAction(icon(), "Segment clouds...", self.iface.mainWindow())
        self.layer_action.setObjectName("cloudsegSegmentLayer")
        self.layer_action.triggered.connect(lambda: self.open_segment_dialog())
        self.iface.addCustomActionForLayerType(
            self.layer_action, "", QgsMapLayerType.RasterLayer, True
        )
        self.report_missing_dependencies()

    def unload(self) -> None:
        """Remove the provider, actions and log handler that this plugin added.

        Every part is removed even if removing another fails (QGIS may have deleted a
        widget already); the first failure is raised at the end, for the Plugin Manager.
        """
        failures: list[BaseException] = []
        for part in (self._unload_gui, self._unload_processing):
            try:
                part()
            except Exception as exc:  # go on: a half-unloaded plugin is worse
                failures.append(exc)
        if failures:
            raise failures[0]

    def _unload_gui(self) -> None:
        """Remove the layer action, the dock, an open dialog, menus and the toolbar icon."""
        packages.close_dialog()
        if self.layer_action is not None:
            self.iface.removeCustomActionForLayerType(self.layer_action)
            self.layer_action.deleteLater()
            self.layer_action = None
        if self.dock is not None:
            if self.dock.task is not None:
                self.dock.task.cancel()
            self.dock.detach()
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
            self.dock = None
        if self.label_dock is not None:
            if self.label_dock.task is not None:
                self.label_dock.task.cancel()
            self.label_dock.detach()
            self.iface.removeDockWidget(self.label_dock)
            self.label_dock.deleteLater()
            self.label_dock = None
        if self.dialog is not None and not sip.isdeleted(self.dialog):
            self.dialog.close()  # a dialog the user closed is deleted already: QGIS owns it
        self.dialog = None
        for action in self.actions:
            self.iface.removePluginRasterMenu(MENU, action)
            self.iface.removeToolBarIcon(action)
            action.deleteLater()
        self.actions.clear()

    def _unload_processing(self) -> None:
        """Remove the Processing provider and the log bridge."""
        if self.provider is not None:
            registry = QgsApplication.processingRegistry()
            if registry.providerById(PROVIDER_ID) is self.provider:
                registry.removeProvider(self.provider)
            self.provider = None
        if self._log_handler is not None:
            logbridge.uninstall(self._log_handler)
            self._log_handler = None

    # -- helpers -----------------------------------------------------------------
    def report_missing_dependencies(self, step: Group = SEGMENT) -> str:
        """Offer the install once (a message bar with a button) if ``step`` is missing.

        Args:
            step: What to check; the segmentation step by default.

        Returns:
            The message shown, empty when nothing is missing, or when the dock's runs go
            to a cloudseg server (then the install is only said in the log).
        """
        message = install_hint(missing_requirements(step), where="qgis")
        server = saved_server()
        if message and step.name == SEGMENT.name and server.remote:
            # Runs go to a server: nothing is missing for them; no warning to dismiss.
            QgsMessageLog.logMessage(
                f"Runs go to the cloudseg server {server.url}; to run on this computer: {message}",
                logbridge.LOG_TAG,
                Qgis.Info,
            )
            return ""
        if message:
            QgsMessageLog.logMessage(message, logbridge.LOG_TAG, Qgis.Warning)
            bar = self.iface.messageBar()
            item = bar.createMessage("cloudseg", message)
            button = QPushButton("Install packages...")
            button.setObjectName("cloudsegInstallFromBar")
            item.layout().addWidget(button)
            self._offer = (step, item, button)  # kept: the bar does not keep Python's side
            button.clicked.connect(self._install_from_bar)
            bar.pushWidget(item, Qgis.Warning, 0)
        return message

    def _install_from_bar(self) -> None:
        """The message bar's button: open the dialog, then close the message.

        The message (and the button whose click runs this) is removed after the click
        has been handled: deleting a widget from its own signal crashes QGIS.
        """
        step, item, _button = self._offer
        self.open_install_dialog(step)
        bar = self.iface.messageBar()
        QTimer.singleShot(0, lambda: None if sip.isdeleted(item) else bar.popWidget(item))

    def open_install_dialog(self, focus: Group | None = None) -> packages.InstallDialog:
        """Show the Install packages dialog (with ``focus``'s step in bold)."""
        dialog = packages.open_dialog(self.iface.mainWindow(), focus)
        with contextlib.suppress(TypeError):  # connect once
            dialog.installed.disconnect(self._packages_installed)
        dialog.installed.connect(self._packages_installed)
        return dialog

    def _packages_installed(self, step: str) -> None:
        """A step was installed: the docks list what it brought (built-in models)."""
        if self.dock is not None:
            self.dock.reload_models()

    def _open_environment_dialog(self) -> None:
        import processing

        processing.execAlgorithmDialog(f"{PROVIDER_ID}:environment", {})

    def open_segment_dialog(self, layer: QgsMapLayer | None = None) -> Any:
        """Open the cloudseg:segment dialog for ``layer`` (default: the active layer).

        Returns:
            The dialog, or None (with a message) when the layer is not a raster.
        """
        import processing

        layer = layer or self.iface.activeLayer()
        if layer is None or layer.type() != QgsMapLayerType.RasterLayer:
            what = "no layer is selected" if layer is None else f"{layer.name()} is not a raster"
            self.iface.messageBar().pushMessage(
                "cloudseg",
                f"Segment clouds needs a Sentinel-2 raster layer: {what}; select one in the "
                "Layers panel",
                Qgis.Warning,
                5,
            )
            return None
        self.dialog = processing.createAlgorithmDialog(
            f"{PROVIDER_ID}:segment", {"INPUT": layer.id()}
        )
        self.dialog.show()
        return self.dialog

    def _toggle_dock(self, visible: bool) -> None:
        if self.dock is None:
            from .dock import CloudSegDock

            self.dock = CloudSegDock(self.iface, self.iface.mainWindow())
            self.iface.addDockWidget(Qt.RightDockWidgetArea, self.dock)
            self.dock.visibilityChanged.connect(self.panel_action.setChecked)
        self.dock.setVisible(visible)

    def _toggle_label_dock(self, visible: bool) -> None:
        if visible and not packages.ensure(TRAINING, self.iface.mainWindow()):
            self.iface.messageBar().pushMessage(
                "cloudseg",
                "fine-tuning needs PyTorch and friends: install them in the dialog, then "
                "open the label dock again",
                Qgis.Info,
                8,
            )
        if self.label_dock is None:
            from .labeldock import LabelDock

            self.label_dock = LabelDock(self.iface, self.iface.mainWindow())
            self.iface.addDockWidget(Qt.RightDockWidgetArea, self.label_dock)
            self.label_dock.visibilityChanged.connect(self.label_action.setChecked)
            self.label_dock.model_registered.connect(self._model_registered)
        self.label_dock.setVisible(visible)

    def _model_registered(self, name: str) -> None:
        """A fine-tuned version exists: the segmentation dock lists it too."""
        if self.dock is not None:
            self.dock.reload_models()

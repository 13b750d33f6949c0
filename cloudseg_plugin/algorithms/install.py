"""``cloudseg:install_packages``: the plugin's installer, headless (``qgis_process``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterFile,
)

from ...backend.dependencies import PLUGIN_STEPS, group
from ...backend.errors import CancelledError, CloudsegError
from ...backend.installer import PackageInstaller
from ..packages import activate_packages, packages_root
from .base import CloudsegAlgorithm, choice


class InstallPackagesAlgorithm(CloudsegAlgorithm):
    """Install (or remove) the Python packages a cloudseg step needs, in this profile."""

    algorithm_name = "install_packages"
    display_name = "Install packages"
    group_name = "Tools"
    group_id = "tools"
    requirements = ()
    STEP = "STEP"
    WHEELS = "WHEELS"
    UNINSTALL = "UNINSTALL"
    FOLDER = "FOLDER"
    PACKAGES = "PACKAGES"
    DOWNLOADED_MB = "DOWNLOADED_MB"

    def shortHelpString(self) -> str:
        """Return the help shown beside the dialog."""
        steps = "; ".join(f"<b>{s.name}</b>: {s.title}" for s in PLUGIN_STEPS)
        return (
            "Installs the Python packages of one step into cloudseg's own folder of this "
            f"QGIS profile ({packages_root()}), at the locked versions, each file checked "
            f"by its SHA-256. QGIS's own Python is not changed. Steps: {steps}.<br><br>"
            "<b>Wheel folder</b>: install offline from a folder of the locked wheels.<br>"
            "<b>Uninstall</b>: remove the folder and everything in it instead.<br><br>"
            "Headless: qgis_process run cloudseg:install_packages -- STEP=segment"
        )

    def initAlgorithm(self, configuration: dict[str, Any] | None = None) -> None:
        """Declare the parameters and outputs."""
        names = [s.name for s in PLUGIN_STEPS]
        self.addParameter(choice(self.STEP, "Step", names, names[0]))
        self.addParameter(
            QgsProcessingParameterFile(
                self.WHEELS,
                "Wheel folder (offline; empty: the package index)",
                behavior=QgsProcessingParameterFile.Folder,
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterBoolean(self.UNINSTALL, "Uninstall everything", False)
        )
        self.addOutput(QgsProcessingOutputString(self.FOLDER, "Packages folder"))
        self.addOutput(QgsProcessingOutputNumber(self.PACKAGES, "Packages installed"))
        self.addOutput(QgsProcessingOutputNumber(self.DOWNLOADED_MB, "Downloaded (MB)"))

    def run_backend(
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        """Plan, say the size, install with progress; or uninstall."""
        wheels = self.parameterAsFile(parameters, self.WHEELS, context)
        installer = PackageInstaller(packages_root(), wheels=Path(wheels) if wheels else None)
        if self.parameterAsBoolean(parameters, self.UNINSTALL, context):
            freed = installer.uninstall()
            feedback.pushInfo(f"removed {installer.root} ({freed / 2**20:.0f} MB)")
            return {self.FOLDER: str(installer.root), self.PACKAGES: 0, self.DOWNLOADED_MB: 0}
        step = group(self.parameterAsString(parameters, self.STEP, context))
        plan = installer.plan(step)
        feedback.pushInfo(plan.summary())

        def progress(percent: float, message: str) -> None:
            self.report_progress(feedback, percent, message)

        try:
            folder = installer.install(plan, progress, feedback.isCanceled)
        except CancelledError as exc:
            raise QgsProcessingException(str(exc)) from exc
        except CloudsegError:
            raise
        activate_packages()
        feedback.pushInfo(f"{step.title}: installed in {folder}")
        return {
            self.FOLDER: str(folder),
            self.PACKAGES: len(plan.pins),
            self.DOWNLOADED_MB: round(plan.download_bytes / 2**20, 1),
        }

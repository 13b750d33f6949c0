"""``cloudseg:environment``: report versions and whether the GPU is used."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingOutputBoolean,
    QgsProcessingOutputString,
    QgsProcessingParameterFileDestination,
)

from ...backend.dependencies import PLUGIN_STEPS, install_hint, missing_requirements
from ...backend.environment import environment_report
from .base import CloudsegAlgorithm


class EnvironmentAlgorithm(CloudsegAlgorithm):
    """Report cloudseg's environment: package versions, GPU, onnxruntime providers."""

    algorithm_name = "environment"
    display_name = "Check environment (GPU, packages)"
    group_name = "Tools"
    group_id = "tools"
    OUTPUT = "OUTPUT"
    DEVICE = "DEVICE"
    DEVICE_REASON = "DEVICE_REASON"
    CUDA_AVAILABLE = "CUDA_AVAILABLE"
    MISSING = "MISSING"
    requirements = ()

    def shortHelpString(self) -> str:
        """Return the help shown beside the dialog."""
        return (
            "Reports which device cloudseg runs models on (a CUDA GPU, or the CPU and "
            "why), the onnxruntime execution providers, and the versions of the Python "
            "packages it uses. Missing packages are listed by install step, with where to "
            "install them (Raster > Cloud segmentation > Install packages...)."
            "\n\nOptionally writes the full report as JSON. Useful on "
            "servers: qgis_process run cloudseg:environment"
        )

    def initAlgorithm(self, configuration: dict[str, Any] | None = None) -> None:
        """Declare the parameters and outputs."""
        self.addParameter(
            QgsProcessingParameterFileDestination(
                self.OUTPUT,
                "Report (JSON)",
                "JSON files (*.json)",
                optional=True,
                createByDefault=False,
            )
        )
        self.addOutput(QgsProcessingOutputString(self.DEVICE, "Device (cuda or cpu)"))
        self.addOutput(QgsProcessingOutputString(self.DEVICE_REASON, "Device, in words"))
        self.addOutput(QgsProcessingOutputBoolean(self.CUDA_AVAILABLE, "CUDA GPU available"))
        self.addOutput(QgsProcessingOutputString(self.MISSING, "Missing packages"))

    def run_backend(
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        """Build the report, log it, and write it if asked."""
        report = environment_report()
        for line in report.summary().splitlines():
            feedback.pushInfo(line)
        for step in PLUGIN_STEPS:
            missing = missing_requirements(step)
            if missing:
                feedback.reportError(install_hint(missing, where="qgis"), fatalError=False)
        results: dict[str, Any] = {
            self.DEVICE: report.device,
            self.DEVICE_REASON: report.device_reason,
            self.CUDA_AVAILABLE: report.torch_cuda,
            self.MISSING: ",".join(
                name for names in report.missing_steps.values() for name in names
            ),
        }
        destination = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        if destination:
            Path(destination).write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
            results[self.OUTPUT] = destination
        return results

"""``cloudseg:ingest``: labeled scenes and masks into a Zarr + STAC store."""

from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterFile,
    QgsProcessingParameterString,
)

from ...backend.dependencies import SEGMENT, TRAINING
from ...backend.store.sources import LAYOUTS
from .base import CloudsegAlgorithm, choice

AUTO = "auto"


class IngestAlgorithm(CloudsegAlgorithm):
    """Ingest a labeled dataset into chunked Zarr with STAC metadata (folder or S3)."""

    algorithm_name = "ingest"
    display_name = "1 - Ingest labeled scenes (Zarr + STAC)"
    group_name = "Training and evaluation"
    group_id = "training"
    requirements = (SEGMENT, TRAINING)

    SOURCE = "SOURCE"
    DESTINATION = "DESTINATION"
    LAYOUT = "LAYOUT"
    ENDPOINT_URL = "ENDPOINT_URL"
    NAME = "NAME"
    REPORT = "REPORT"

    def shortHelpString(self) -> str:
        """Return the help shown beside the dialog."""
        return """Turns a labeled dataset into chunked Zarr imagery and masks with a STAC \
collection and one STAC item per scene, in a folder or on S3 (MinIO, AWS).

<b>Source</b>: Scenes/ + Masks/ + data.json (raw), CloudSEN12 patch folders \
(S2L1C.tif + manual_hq.tif), images/ + masks/ (pairs) or .npz chips. data.json names \
the bands and classes.

<b>Destination</b>: a folder, or s3://bucket/prefix. S3 settings come from \
MINIO_ENDPOINT, MINIO_ACCESS_KEY, MINIO_SECRET_KEY (or the AWS variables), in the \
environment or a .env file; the endpoint can also be given here.

Re-running skips scenes already stored; a cancelled run can be re-run to complete \
it. Scenes that cannot be ingested are listed with the reason, and the others are \
ingested."""

    def initAlgorithm(self, configuration: dict[str, Any] | None = None) -> None:
        """Declare the parameters and outputs."""
        self.addParameter(
            QgsProcessingParameterFile(
                self.SOURCE, "Source dataset folder", QgsProcessingParameterFile.Folder
            )
        )
        self.addParameter(
            QgsProcessingParameterString(
                self.DESTINATION, "Destination (folder or s3://bucket/prefix)"
            )
        )
        self.addParameter(choice(self.LAYOUT, "Source layout", [AUTO, *LAYOUTS], AUTO))
        self.addParameter(
            QgsProcessingParameterString(
                self.ENDPOINT_URL, "S3 endpoint URL (MinIO...)", optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterString(
                self.NAME, "Collection id", defaultValue="cloudseg-dataset"
            )
        )
        self.addParameter(
            QgsProcessingParameterBoolean(self.REPORT, "Write the dataset report", True)
        )
        for key, label in (
            ("INGESTED", "Scenes ingested"),
            ("SKIPPED", "Scenes already stored"),
            ("FAILED", "Scenes not ingested"),
        ):
            self.addOutput(QgsProcessingOutputNumber(key, label))
        self.addOutput(QgsProcessingOutputString("STORE", "Store"))

    def run_backend(
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        """Run the backend ingestion with Processing's progress and cancel."""
        from ...backend.store.ingest import ingest

        layout = self.parameterAsEnumString(parameters, self.LAYOUT, context)

        def progress(done: int, total: int, scene: str) -> None:
            self.report_progress(feedback, 100.0 * done / total if total else 100.0, scene)

        result = ingest(
            self.parameterAsFile(parameters, self.SOURCE, context),
            self.parameterAsString(parameters, self.DESTINATION, context),
            layout=None if layout == AUTO else layout,
            name=self.parameterAsString(parameters, self.NAME, context),
            endpoint_url=self.parameterAsString(parameters, self.ENDPOINT_URL, context) or None,
            report=self.parameterAsBool(parameters, self.REPORT, context),
            progress=progress,
            cancelled=feedback.isCanceled,
        )
        for name, reason in result.failed:
            feedback.reportError(f"not ingested: {name}: {reason}", fatalError=False)
        feedback.pushInfo(
            f"{result.store}: {len(result.ingested)} ingested, {len(result.skipped)} already "
            f"there ({result.layout} layout, {result.megabytes:.1f} MB in {result.seconds:.1f} s)"
        )
        return {
            "INGESTED": len(result.ingested),
            "SKIPPED": len(result.skipped),
            "FAILED": len(result.failed),
            "STORE": result.store,
        }

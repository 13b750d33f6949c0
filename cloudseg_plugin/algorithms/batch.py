"""Processing: segment a folder of scenes on a Dask cluster (``cloudseg:segment_batch``)."""

from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from .base import CloudsegAlgorithm
from .options import (
    add_model_parameters,
    add_run_parameters,
    model_value,
    run_help,
    run_values,
)


class SegmentBatchAlgorithm(CloudsegAlgorithm):
    """Segment every scene of a folder (or list file) with one model, resumable."""

    algorithm_name = "segment_batch"
    display_name = "Segment a folder of scenes (batch, Dask)"
    group_name = "Cloud segmentation"
    group_id = "segmentation"

    INPUT = "INPUT"
    WORKERS = "WORKERS"
    SCHEDULER = "SCHEDULER"
    OUTPUT_FOLDER = "OUTPUT_FOLDER"

    def shortHelpString(self) -> str:
        """Return the help shown beside the dialog."""
        return (
            """Segments every scene in the <b>Folder of scenes</b> (GeoTIFFs, SAFE \
folders or zips, folders of band files; from qgis_process also a list file .txt or a \
STAC ItemCollection .json) into the <b>Output folder</b>: one class raster and one record \
per scene, and manifest.json (scene, status, model, seconds, cloud %, error).

Each scene is one task on a Dask cluster: in this QGIS by default (Workers threads), or \
an existing cluster given as <b>Scheduler</b> (tcp://host:8786 or a scheduler file). \
Running it again skips the scenes already done with the same model and settings; a bad \
scene is reported with its reason and the others are segmented. For a command line on \
a server: cloudseg segment-batch (docs/batch.md)."""
            + "\n\n"
            + run_help(self)
        )

    def initAlgorithm(self, configuration: dict[str, Any] | None = None) -> None:
        """Declare the parameters and outputs."""
        self.addParameter(
            QgsProcessingParameterFile(
                self.INPUT, "Folder of scenes", QgsProcessingParameterFile.Folder
            )
        )
        add_model_parameters(self)
        add_run_parameters(self)
        workers = QgsProcessingParameterNumber(
            self.WORKERS, "Workers (scenes at a time)", minValue=1, defaultValue=1
        )
        workers.setFlags(workers.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(workers)
        scheduler = QgsProcessingParameterString(
            self.SCHEDULER, "Scheduler of an existing Dask cluster", optional=True
        )
        scheduler.setFlags(scheduler.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(scheduler)
        self.addParameter(
            QgsProcessingParameterFolderDestination(self.OUTPUT_FOLDER, "Output folder")
        )
        self.addOutput(QgsProcessingOutputFile("MANIFEST", "Manifest (manifest.json)"))
        for key, label in (("DONE", "Scenes segmented"), ("SKIPPED", "Scenes already done"),
                           ("FAILED", "Scenes failed")):  # fmt: skip
            self.addOutput(QgsProcessingOutputNumber(key, label))

    def run_backend(
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        """Run the batch with Processing's progress and cancel; report failed scenes."""
        from ...backend.batch import segment_batch
        from ...backend.inference.options import RunOptions, changed_run_options

        run = RunOptions(model=model_value(self, parameters, context),
                         **run_values(self, parameters, context))  # fmt: skip
        options = changed_run_options(run)  # the batch records what differs from defaults
        output = self.parameterAsString(parameters, self.OUTPUT_FOLDER, context)

        def progress(done: int, total: int, record: dict[str, Any]) -> None:
            feedback.setProgress(100.0 * done / max(total, 1))
            text = f"{record['scene']}: {record['status']}"
            if record.get("error"):
                feedback.reportError(f"{text}: {record['error']}")
            else:
                feedback.pushInfo(text)

        def started(dashboard: str | None) -> None:
            if dashboard:
                feedback.pushInfo(f"Dask dashboard: {dashboard}")

        result = segment_batch(
            [self.parameterAsFile(parameters, self.INPUT, context)],
            output,
            options,
            workers=self.parameterAsInt(parameters, self.WORKERS, context),
            scheduler=self.parameterAsString(parameters, self.SCHEDULER, context).strip() or None,
            progress=progress,
            cancelled=feedback.isCanceled,
            on_start=started,
            processes=False,  # QGIS's own interpreter is not a Python to start workers with
        )
        counts = result.counts()
        return {
            self.OUTPUT_FOLDER: output,
            "MANIFEST": result.manifest,
            "DONE": counts.get("done", 0),
            "SKIPPED": counts.get("skipped", 0),
            "FAILED": counts.get("failed", 0),
        }

"""Active learning in Processing: ``cloudseg:propose`` and ``cloudseg:labels_to_store``.

Both are adapters to the label round, :class:`cloudseg.training.label_round.LabelRound`.
"""

from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

from ...backend.dependencies import SEGMENT, TRAINING
from .base import CloudsegAlgorithm


class ProposeAlgorithm(CloudsegAlgorithm):
    """Rank boxes by the model's doubt and write the top ones into a label project."""

    algorithm_name = "propose"
    display_name = "Propose areas to label (active learning)"
    group_name = "Cloud segmentation"
    group_id = "segmentation"

    UNCERTAINTY = "UNCERTAINTY"
    PROJECT = "PROJECT"
    BOX = "BOX"
    COUNT = "COUNT"
    SCENE = "SCENE"
    MODEL = "MODEL"

    def shortHelpString(self) -> str:
        """Return the help shown beside the dialog."""
        return """Proposes where to label next: the boxes of a scene where the model is \
least sure.

<b>Scene</b>: the scene to label. Without an uncertainty raster it is segmented first \
(with <b>Model</b>; empty: the project's current model, the last version a round \
adopted, else the best built-in model for it) into the folder \
&lt;project&gt;-runs beside the project, or the newest run there of the same model is \
reused: the label dock's "Propose areas".

<b>Uncertainty</b> (optional): the uncertainty raster of an earlier "Segment clouds" run \
(its Uncertainty output): the normalized entropy of the class probabilities, in \
percent. Empty Scene: the scene the raster records.

<b>Label project</b>: a GeoPackage (created if missing). Its <i>proposals</i> layer gets \
the top boxes with rank, score (mean doubt, %), status (todo), scene and model. Boxes \
never overlap, and never cover a box already labeled or skipped; the unlabeled \
proposals of an earlier round are replaced.

<b>Box size</b>: an area an analyst labels in a minute or two (128 px: 1.3 km at \
10 m)."""

    def initAlgorithm(self, configuration: dict[str, Any] | None = None) -> None:
        """Declare the parameters and outputs."""
        self.addParameter(QgsProcessingParameterRasterLayer(self.SCENE, "Scene", optional=True))
        self.addParameter(
            QgsProcessingParameterRasterLayer(self.UNCERTAINTY, "Uncertainty", optional=True)
        )
        self.addParameter(QgsProcessingParameterString(self.MODEL, "Model", optional=True))
        self.addParameter(
            QgsProcessingParameterFileDestination(
                self.PROJECT, "Label project", "GeoPackage (*.gpkg)"
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(self.BOX, "Box size (px)", minValue=8, defaultValue=128)
        )
        self.addParameter(
            QgsProcessingParameterNumber(self.COUNT, "Boxes", minValue=1, defaultValue=20)
        )
        self.addOutput(QgsProcessingOutputNumber("PROPOSED", "Boxes proposed"))

    def run_backend(
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        """Propose, and load the proposals layer when run from the toolbox."""
        from ...backend.active.project import PROPOSALS_LAYER
        from ...backend.raster.sources import scene_path_from_gdal_source
        from ...training.label_round import LabelRound

        doubt = self.parameterAsRasterLayer(parameters, self.UNCERTAINTY, context)
        layer = self.parameterAsRasterLayer(parameters, self.SCENE, context)
        scene = scene_path_from_gdal_source(layer.source()) if layer is not None else None
        project = self.parameterAsFileOutput(parameters, self.PROJECT, context)
        box = self.parameterAsInt(parameters, self.BOX, context)
        count = self.parameterAsInt(parameters, self.COUNT, context)
        labeling = LabelRound(project, scene)
        if doubt is not None:
            proposals = labeling.rank(doubt.source(), box, count)
        elif scene is not None:
            model = self.parameterAsString(parameters, self.MODEL, context).strip() or None
            proposals = labeling.propose(
                model,
                box,
                count,
                lambda percent, message: self.report_progress(feedback, percent, message),
                feedback.isCanceled,
            ).proposals
        else:
            raise QgsProcessingException("give the scene (or its uncertainty raster)")
        for p in proposals[:5]:
            feedback.pushInfo(
                f"{p.rank}. mean doubt {p.score:.1f} % at row {p.box.row}, column {p.box.col}"
            )
        feedback.pushInfo(f"{len(proposals)} boxes in {project}, layer {PROPOSALS_LAYER}")
        return {self.PROJECT: project, "PROPOSED": len(proposals)}


class LabelsToStoreAlgorithm(CloudsegAlgorithm):
    """A label project's labeled boxes into a store, for fine-tuning."""

    algorithm_name = "labels_to_store"
    display_name = "Labels to store (active learning)"
    group_name = "Cloud segmentation"
    group_id = "segmentation"
    requirements = (SEGMENT, TRAINING)

    PROJECT = "PROJECT"
    INPUT = "INPUT"
    STORE = "STORE"
    MODEL = "MODEL"
    CONTEXT = "CONTEXT"

    def shortHelpString(self) -> str:
        """Return the help shown beside the dialog."""
        return """Adds the boxes an analyst has labeled to a store that "2 - Train or \
fine-tune a model" reads.

For every proposal of the <b>Label project</b> marked <i>labeled</i>, the window of the \
<b>Scene</b> under the box and the polygons of the project's <i>labels</i> layer \
(field <i>class</i>: the model's class values) rasterized on the scene's grid become \
one stored scene; pixels under no polygon are clear. The <b>Store</b> (a folder or \
s3://bucket/prefix) is created if missing and extended otherwise, as Ingest does.

<b>Context</b>: pixels of image stored around each box, unlabeled (ignored by the \
loss): the network sees what surrounds what was labeled. Empty: a quarter of the box \
edge, which fine-tuned better than no context in every measured round."""

    def initAlgorithm(self, configuration: dict[str, Any] | None = None) -> None:
        """Declare the parameters and outputs."""
        self.addParameter(
            QgsProcessingParameterFile(
                self.PROJECT, "Label project", fileFilter="GeoPackage (*.gpkg)"
            )
        )
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Scene"))
        self.addParameter(QgsProcessingParameterString(self.STORE, "Store"))
        self.addParameter(QgsProcessingParameterString(self.MODEL, "Model", optional=True))
        self.addParameter(
            QgsProcessingParameterNumber(
                self.CONTEXT,
                "Context (px)",
                QgsProcessingParameterNumber.Integer,
                optional=True,
                minValue=0,
            )
        )
        self.addOutput(QgsProcessingOutputNumber("ADDED", "Boxes added"))
        self.addOutput(QgsProcessingOutputString("STORE_URL", "Store"))

    def run_backend(
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        """Rasterize the labeled boxes and ingest them."""
        from ...backend.raster.sources import scene_path_from_gdal_source
        from ...training.label_round import LabelRound

        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException("no scene layer given")
        model = self.parameterAsString(parameters, self.MODEL, context).strip()
        labeling = LabelRound(
            self.parameterAsFile(parameters, self.PROJECT, context),
            scene_path_from_gdal_source(layer.source()),
        )
        result = labeling.store(
            self.parameterAsString(parameters, self.STORE, context).strip(),
            model=model or None,
            context=(
                None
                if parameters.get(self.CONTEXT) in (None, "")
                else self.parameterAsInt(parameters, self.CONTEXT, context)
            ),
        )
        for scene, reason in result.failed:
            feedback.reportError(f"{scene}: {reason}", fatalError=False)
        feedback.pushInfo(
            f"{result.store}: {len(result.ingested)} box(es) added, {len(result.skipped)} "
            "already there"
        )
        return {"ADDED": len(result.ingested), "STORE_URL": result.store}

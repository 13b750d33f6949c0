"""``cloudseg:segment``: clouds and cloud shadows in a Sentinel-2 raster layer."""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any, ClassVar

from qgis.core import (
    QgsMapLayer,
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterExtent,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterVectorDestination,
    QgsRasterLayer,
    QgsVectorLayer,
)

from ...backend.inference.options import SEGMENT_FLAGS
from .. import styling
from ..messages import for_qgis
from .base import CloudsegAlgorithm, add_cost_outputs, cost_outputs
from .options import (
    add_model_parameters,
    add_run_parameters,
    model_value,
    run_help,
    run_values,
)

WIDGETS = __name__.rsplit(".", 2)[0] + ".widgets"
# Processing keeps only a C++ pointer to a post-processor and runs each algorithm on a
# copy that is deleted before results are loaded: the stylers must live here.
_STYLERS: deque[QgsProcessingLayerPostProcessorInterface] = deque(maxlen=64)


HELP = """Finds clouds and cloud shadows in a Sentinel-2 scene with a \
deep-learning model and writes a class raster: 0 clear, 1 cloud, 2 cloud shadow, \
255 nodata.

<b>Input</b>: a multi-band raster whose band descriptions name the bands (B02, B8A, \
or blue, nir, swir16...), one band file of a folder of band files (B02.tif, B03.tif... \
the whole folder is used), or a Sentinel-2 SAFE product opened in QGIS.

<b>Scaling</b>: digital numbers become reflectance with the SAFE product's \
quantification and processing-baseline offsets (baseline 04.00 and later subtract \
1000), otherwise DN / 10000. Floating-point reflectance (0-1) is used as is. Values \
that do not look like reflectance are warned about in the log.

<b>Model</b>: auto picks the built-in model that fits the bands and product level \
best, and says which in the log. A model file (ONNX with an embedded cloudseg card, \
or a torch checkpoint with its card) overrides it.

<b>Extent</b>: segment only this area (for example the canvas extent).

Outputs: the class raster (styled with the model's class colours; clear is \
transparent), optionally the cloud probability (percent) and polygons of clouds and \
shadows larger than the minimum area, and the cloud, shadow and clear percentages."""


class ResultStyler(QgsProcessingLayerPostProcessorInterface):
    """Styles a result layer once Processing has loaded it, names it and files it in the group.

    The name is the input's first ("adwp - clouds"), whatever Processing named it.
    """

    def __init__(
        self, kind: str, classes: list[dict[str, Any]] | None = None, name: str = ""
    ) -> None:
        super().__init__()
        self.kind = kind
        self.classes = classes or []
        self.name = name

    def postProcessLayer(
        self, layer: QgsMapLayer, context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> None:
        """Apply the style for this kind of result (classes, probabilities, polygons)."""
        if isinstance(layer, QgsRasterLayer) and self.kind == "classes":
            styling.style_classes(layer)
        elif isinstance(layer, QgsRasterLayer) and self.kind == "probabilities":
            styling.style_probabilities(layer)
        elif isinstance(layer, QgsRasterLayer) and self.kind == "uncertainty":
            styling.style_uncertainty(layer)
        elif isinstance(layer, QgsRasterLayer) and self.kind == "valid":
            styling.style_valid(layer)
        elif isinstance(layer, QgsVectorLayer):
            styling.style_polygons(layer, self.classes)
        if self.name:
            layer.setName(self.name)
        project = context.project()
        if project is not None:
            styling.place_results(project, [layer])


class SegmentAlgorithm(CloudsegAlgorithm):
    """Segment clouds and cloud shadows with a deep-learning model."""

    algorithm_name = "segment"
    display_name = "Segment clouds and cloud shadows"
    group_name = "Cloud segmentation"
    group_id = "segmentation"

    INPUT = "INPUT"
    MODEL = "MODEL"
    MODEL_FILE = "MODEL_FILE"
    BANDS = "BANDS"
    EXTENT = "EXTENT"
    OUTPUT = "OUTPUT"
    PROBABILITIES = "PROBABILITIES"
    UNCERTAINTY = "UNCERTAINTY"
    VECTOR = "VECTOR"
    VALID = "VALID"
    USABLE_PERCENT = "USABLE_PERCENT"
    CLOUD_PERCENT = "CLOUD_PERCENT"
    SHADOW_PERCENT = "SHADOW_PERCENT"
    CLEAR_PERCENT = "CLEAR_PERCENT"
    MODEL_USED = "MODEL_USED"
    RUNNER = "RUNNER"

    def tags(self) -> list[str]:
        """Search words for the toolbox."""
        return ["cloud", "shadow", "mask", "sentinel-2", "deep learning", "onnx"]

    def shortHelpString(self) -> str:
        """Return the help shown beside the dialog."""
        return HELP + "\n\n" + run_help(self)

    #: What each of the algorithm's own parameters does, shown as its tooltip (the labels
    #: stay short so the dialog fits at its default size). The run options' tooltips are
    #: their declared help (:mod:`.options`).
    PARAMETER_HELP: ClassVar[dict[str, str]] = {
        "EXTENT": "Segment only this part of the layer",
        "VALID": "A mask to use directly: 1 where the pixel is usable, 0 where it is cloud or "
        "cloud shadow or within their buffers, no data kept",
    }

    def initAlgorithm(self, configuration: dict[str, Any] | None = None) -> None:
        """Declare the parameters and outputs."""
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Sentinel-2 raster layer"))
        add_model_parameters(self)
        add_run_parameters(self)
        # Named by path so that headless qgis_process never imports the GUI module.
        bands = self.parameterDefinition(self.BANDS)
        bands.setMetadata({"widget_wrapper": {"class": WIDGETS + ".BandsWidgetWrapper"}})
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, "Extent", optional=True))
        # What the outputs keep; the dialog leaves out polygons under 1000 m² by default.
        add_run_parameters(self, flags=SEGMENT_FLAGS, defaults={"min_polygon_area_m2": 1000.0})
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, "Cloud mask"))
        self.addParameter(
            QgsProcessingParameterRasterDestination(
                self.VALID,
                "Valid pixels",
                optional=True,
                createByDefault=False,
            )
        )
        self.addParameter(
            QgsProcessingParameterRasterDestination(
                self.PROBABILITIES,
                "Class probabilities (percent)",
                optional=True,
                createByDefault=False,
            )
        )
        self.addParameter(
            QgsProcessingParameterRasterDestination(
                self.UNCERTAINTY,
                "Uncertainty (percent)",
                optional=True,
                createByDefault=False,
            )
        )
        self.addParameter(
            QgsProcessingParameterVectorDestination(
                self.VECTOR,
                "Cloud and shadow polygons",
                QgsProcessing.TypeVectorPolygon,
                optional=True,
                createByDefault=False,
            )
        )
        for key, label in (
            (self.CLOUD_PERCENT, "Cloud (% of valid pixels)"),
            (self.SHADOW_PERCENT, "Cloud shadow (% of valid pixels)"),
            (self.CLEAR_PERCENT, "Clear (% of valid pixels)"),
        ):
            self.addOutput(QgsProcessingOutputNumber(key, label))
        self.addOutput(QgsProcessingOutputNumber(self.USABLE_PERCENT, "Usable (% of data pixels)"))
        self.addOutput(QgsProcessingOutputString(self.MODEL_USED, "Model used"))
        self.addOutput(QgsProcessingOutputString(self.RUNNER, "What ran where"))
        add_cost_outputs(self)
        for name, text in self.PARAMETER_HELP.items():  # the tooltips: labels stay short
            self.parameterDefinition(name).setHelp(text)

    def run_backend(
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        """Run the backend engine with Processing's progress and cancel."""
        from ...backend.inference.segment import SegmentOptions, segment
        from ...backend.inference.shadow import describe as describe_geometry
        from ...backend.raster.sources import scene_path_from_gdal_source

        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException("no input raster layer given")
        output = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        probabilities = self.parameterAsOutputLayer(parameters, self.PROBABILITIES, context)
        uncertainty = self.parameterAsOutputLayer(parameters, self.UNCERTAINTY, context)
        valid = self.parameterAsOutputLayer(parameters, self.VALID, context)
        vector = self.parameterAsOutputLayer(parameters, self.VECTOR, context)
        bounds = self.extent_bounds(parameters, self.EXTENT, context, layer)
        source = scene_path_from_gdal_source(layer.source())
        options = SegmentOptions(
            model=model_value(self, parameters, context),
            **run_values(self, parameters, context),
            probabilities=Path(probabilities) if probabilities else None,
            uncertainty=Path(uncertainty) if uncertainty else None,
            overwrite=True,  # the destination widget has already asked
            bounds=bounds,
            polygons=Path(vector) if vector else None,
            valid=Path(valid) if valid else None,
            **run_values(self, parameters, context, flags=SEGMENT_FLAGS),
        )
        feedback.pushInfo(f"Input: {source}")
        result = segment(
            source,
            output,
            options,
            progress=lambda percent, message: self.report_progress(feedback, percent, message),
            cancelled=feedback.isCanceled,
        )
        feedback.pushInfo(f"Product level: {result.product_level}")
        feedback.pushInfo(f"{result.model_reason}; ran on {result.runner}")
        if result.shadow_geometry is not None:
            feedback.pushInfo(describe_geometry(result.shadow_geometry))
        for warning in result.warnings:
            feedback.reportError(for_qgis(warning), fatalError=False)
        if vector:
            feedback.pushInfo(f"Polygons: {result.polygon_counts}")

        self._style_on_load(
            context, output, probabilities, vector, styling.input_name(layer), uncertainty, valid
        )
        percent = result.class_percent
        feedback.pushInfo(
            f"Cloud {percent.get('cloud', 0):.2f} %, "
            f"shadow {percent.get('cloud shadow', 0):.2f} %, "
            f"clear {percent.get('clear', 0):.2f} % in {result.seconds:.1f} s"
        )
        results: dict[str, Any] = {
            self.OUTPUT: output,
            self.CLOUD_PERCENT: percent.get("cloud", 0.0),
            self.SHADOW_PERCENT: percent.get("cloud shadow", 0.0),
            self.CLEAR_PERCENT: percent.get("clear", 0.0),
            self.MODEL_USED: result.model,
            self.RUNNER: result.runner,
        } | cost_outputs(result.accounting)
        feedback.pushInfo(f"Cost: {result.accounting['summary']}")
        if probabilities:
            results[self.PROBABILITIES] = probabilities
        if vector:
            results[self.VECTOR] = vector
        if uncertainty:
            results[self.UNCERTAINTY] = uncertainty
        if valid:
            results[self.VALID] = valid
            results[self.USABLE_PERCENT] = result.usable_percent
            feedback.pushInfo(f"Usable: {result.usable_percent:.2f} % of the data pixels")
        return results

    def _style_on_load(
        self,
        context: QgsProcessingContext,
        output: str,
        probabilities: str,
        vector: str,
        input_name: str,
        uncertainty: str = "",
        valid: str = "",
    ) -> None:
        """Have Processing name (input first) and style each result it loads."""
        from ...backend.inference.segment import load_classes

        classes = load_classes(output)
        for path, kind in (
            (output, "classes"),
            (probabilities, "probabilities"),
            (uncertainty, "uncertainty"),
            (valid, "valid"),
            (vector, ""),
        ):
            if path and context.willLoadLayerOnCompletion(path):
                name = styling.result_name(input_name, kind or "polygons")
                styler = ResultStyler(kind or "polygons", classes, name)
                _STYLERS.append(styler)
                details = context.layerToLoadOnCompletionDetails(path)
                details.name = name
                details.forceName = True  # not the file's name, whatever Processing prefers
                details.setPostProcessor(styler)

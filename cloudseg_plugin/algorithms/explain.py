"""``cloudseg:explain``: class activation maps of a scene, as a styled heat-map layer."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from qgis.core import (
    QgsMapLayer,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputString,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsRasterLayer,
)

from ...backend.choices import EXPLAIN_METHODS, NOT_EXPLAINED
from ...backend.dependencies import SEGMENT, TRAINING
from .. import styling
from .base import CloudsegAlgorithm, add_cost_outputs, cost_outputs
from .options import (
    SERVER_HELP,
    add_model_parameters,
    add_run_parameters,
    add_server_parameters,
    model_value,
    run_help,
    run_values,
)

if TYPE_CHECKING:
    from ..servers import ServerChoice

_STYLERS: list[Any] = []  # Processing keeps a pointer only; keep the Python objects alive


class ExplanationStyler(QgsProcessingLayerPostProcessorInterface):
    """Styles the explanation once Processing has loaded it: a heat map per class.

    Processing loads the file once (its first band, the first class); the other
    classes' bands are added beside it as layers of their own, all named after the
    input layer ("adwp - why cloud shadow (gradcam)") and put in the results group.
    """

    def __init__(self, input_name: str, classes: list[str], method: str) -> None:
        super().__init__()
        self.input_name = input_name
        self.classes = classes
        self.method = method

    def postProcessLayer(
        self, layer: QgsMapLayer, context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> None:
        """Heat maps over the image, in the results group."""
        if not isinstance(layer, QgsRasterLayer):
            return
        styling.style_explanation(layer, 1)
        layer.setName(styling.explanation_name(self.input_name, self.classes[0], self.method))
        project = context.project()
        if project is None:
            return
        others = styling.explanation_layers(
            layer.source(), self.input_name, self.classes, self.method
        )[1:]
        styling.place_results(project, [layer, *others])  # the classes in order, shown


class ExplainAlgorithm(CloudsegAlgorithm):
    """Where the model looked when it called pixels cloud (Grad-CAM, HiResCAM)."""

    algorithm_name = "explain"
    display_name = "Explain the mask (Grad-CAM)"
    group_name = "Cloud segmentation"
    group_id = "segmentation"
    requirements = (SEGMENT, TRAINING)

    INPUT = "INPUT"
    CLASSES = "CLASSES"
    METHOD = "METHOD"
    EXTENT = "EXTENT"
    OUTPUT = "OUTPUT"

    def shortHelpString(self) -> str:
        """Return the help shown beside the dialog."""
        return (
            """Shows what the model looked at when it marked pixels as a class: a \
class activation map per class, 0-1 (1: the place that drove the score most).

<b>Classes</b>: class names of the model, comma-separated (default cloud). Each \
class is a band of the output and a heat-map layer of its own, named after the input \
layer ("scene - why cloud shadow (gradcam)").

<b>Method</b>: gradcam (Grad-CAM: smooth, the classic) or hirescam (HiResCAM: \
faithful to where the score comes from). The score of a class is its logit summed over \
the pixels the model assigns to it.

<b>Extent</b>: explain only this area: maps cost a forward and a backward pass per \
class and tile, several times a segmentation.

Needs the model's torch form: the built-in models (imported from ONNX) and models \
trained with cloudseg."""
            + "\n\n"
            + SERVER_HELP
            + "\n\n"
            + run_help(self)
        )

    def initAlgorithm(self, configuration: dict[str, Any] | None = None) -> None:
        """Declare the parameters and outputs."""
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Input layer"))
        self.addParameter(
            QgsProcessingParameterString(self.CLASSES, "Classes", defaultValue="cloud")
        )
        self.addParameter(
            QgsProcessingParameterEnum(
                self.METHOD, "Method", options=list(EXPLAIN_METHODS), defaultValue=0
            )
        )
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, "Extent", optional=True))
        add_model_parameters(self)
        add_run_parameters(self, skip=NOT_EXPLAINED)
        add_server_parameters(self)
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, "Explanation"))
        self.addOutput(QgsProcessingOutputString("MODEL_USED", "Model used"))
        add_cost_outputs(self)

    def request(
        self, parameters: dict[str, Any], context: QgsProcessingContext
    ) -> tuple[Any, list[str], str, str]:
        """The input layer, the classes (None: the default), the method and the output.

        Raises:
            QgsProcessingException: When no input layer is given.
        """
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException("no input raster layer given")
        classes = [
            c.strip()
            for c in self.parameterAsString(parameters, self.CLASSES, context).split(",")
            if c.strip()
        ]
        method = EXPLAIN_METHODS[self.parameterAsEnum(parameters, self.METHOD, context)]
        output = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        return layer, classes, method, output

    def run_backend(
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        """Explain, and style the layer Processing loads."""
        from ...backend.inference.explain import explain
        from ...backend.inference.options import RunOptions
        from ...backend.raster.sources import scene_path_from_gdal_source

        layer, classes, method, output = self.request(parameters, context)
        bounds = self.extent_bounds(parameters, self.EXTENT, context, layer)
        options = RunOptions(
            model=model_value(self, parameters, context),
            **run_values(self, parameters, context, skip=NOT_EXPLAINED),
        )
        result = explain(
            scene_path_from_gdal_source(layer.source()),
            output,
            classes or None,
            method,
            bounds=bounds,
            options=options,
            overwrite=True,  # Processing asked for this destination
            progress=lambda p, m: self.report_progress(feedback, p, m),
            cancelled=feedback.isCanceled,
        )
        summary = {k: v for k, v in result.to_dict().items() if k != "output"}
        return self.finish(summary, output, layer, context, feedback)

    def run_on_server(
        self,
        server: ServerChoice,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        """Explain on a cloudseg server: the same file, layers and outputs as here."""
        from ...backend.raster.sources import scene_path_from_gdal_source

        layer, classes, method, output = self.request(parameters, context)
        options: dict[str, Any] = {
            "model": model_value(self, parameters, context),
            **run_values(self, parameters, context, skip=NOT_EXPLAINED),
        }
        bounds = self.extent_bounds(parameters, self.EXTENT, context, layer)
        if bounds is not None:
            options["extent"] = list(bounds)
        run = self.remote_run(
            server,
            "explain",
            scene_path_from_gdal_source(layer.source()),
            options,
            {"cam": Path(output)},
            feedback,
            inputs={"classes": classes or ["cloud"], "method": method},
        )
        return self.finish(run.summary, output, layer, context, feedback)

    def finish(
        self,
        summary: dict[str, Any],
        output: str,
        layer: Any,
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        """Log an explanation made here or on a server, style it on load; the outputs.

        ``summary``: :meth:`ExplainResult.to_dict` without ``output`` (a server job's
        summary is that).
        """
        feedback.pushInfo(
            f"{summary['method']} of {', '.join(summary['classes'])} by {summary['model']} "
            f"on layer {summary['layer']}, {summary['seconds']:.1f} s"
        )
        if context.willLoadLayerOnCompletion(output):
            name = styling.input_name(layer)  # "adwp B04" for a band file of a band folder
            styler = ExplanationStyler(name, summary["classes"], summary["method"])
            _STYLERS.append(styler)
            details = context.layerToLoadOnCompletionDetails(output)
            details.name = styling.explanation_name(name, summary["classes"][0], summary["method"])
            details.forceName = True  # not the file's name, whatever Processing prefers
            details.setPostProcessor(styler)
        accounting = summary["accounting"]
        feedback.pushInfo(f"Cost: {accounting['summary']}")
        return {self.OUTPUT: output, "MODEL_USED": summary["model"]} | cost_outputs(accounting)

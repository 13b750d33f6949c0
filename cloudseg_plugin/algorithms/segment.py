"""``cloudseg:segment``: clouds and cloud shadows in a Sentinel-2 raster layer."""

from __future__ import annotations

import tempfile
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

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
    QgsVectorFileWriter,
    QgsVectorLayer,
)

from ...backend.inference.options import SEGMENT_FLAGS
from .. import styling
from ..messages import for_qgis
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


#: What a run's summary holds, here or on a server (the server's job summary has them).
SUMMARY_KEYS = (
    "model", "runner", "seconds", "class_percent", "usable_percent", "polygon_counts",
    "warnings", "product_level", "shadow_geometry", "accounting",
)  # fmt: skip


class Destinations(NamedTuple):
    """Where each result of a run goes ("" : not wanted)."""

    output: str
    probabilities: str
    uncertainty: str
    valid: str
    vector: str


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
        return HELP + "\n\n" + SERVER_HELP + "\n\n" + run_help(self)

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
        add_server_parameters(self)
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

    def destinations(
        self, parameters: dict[str, Any], context: QgsProcessingContext
    ) -> Destinations:
        """Where the parameters ask each result to go ("" : not wanted)."""
        return Destinations(
            *(
                self.parameterAsOutputLayer(parameters, name, context)
                for name in (
                    self.OUTPUT,
                    self.PROBABILITIES,
                    self.UNCERTAINTY,
                    self.VALID,
                    self.VECTOR,
                )
            )
        )

    def input_layer(self, parameters: dict[str, Any], context: QgsProcessingContext) -> Any:
        """The input raster layer.

        Raises:
            QgsProcessingException: When none is given.
        """
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException("no input raster layer given")
        return layer

    def request(
        self, parameters: dict[str, Any], context: QgsProcessingContext
    ) -> tuple[Any, Destinations, dict[str, Any], tuple[float, float, float, float] | None, Path]:
        """What a run asks, here or on a server.

        Returns:
            The layer, the destinations, the options by field (model, run options, what
            the outputs keep), the extent (None: the whole layer) and the scene.
        """
        from ...backend.raster.sources import scene_path_from_gdal_source

        layer = self.input_layer(parameters, context)
        values = {
            "model": model_value(self, parameters, context),
            **run_values(self, parameters, context),
            **run_values(self, parameters, context, flags=SEGMENT_FLAGS),
        }
        bounds = self.extent_bounds(parameters, self.EXTENT, context, layer)
        scene = scene_path_from_gdal_source(layer.source())
        return layer, self.destinations(parameters, context), values, bounds, scene

    def run_backend(
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        """Run the backend engine with Processing's progress and cancel."""
        from ...backend.inference.segment import SegmentOptions, load_classes, segment

        layer, to, values, bounds, source = self.request(parameters, context)

        def path(destination: str) -> Path | None:
            return Path(destination) if destination else None

        options = SegmentOptions(
            **values,
            probabilities=path(to.probabilities),
            uncertainty=path(to.uncertainty),
            overwrite=True,  # the destination widget has already asked
            bounds=bounds,
            polygons=path(to.vector),
            valid=path(to.valid),
        )
        feedback.pushInfo(f"Input: {source}")
        result = segment(
            source,
            to.output,
            options,
            progress=lambda percent, message: self.report_progress(feedback, percent, message),
            cancelled=feedback.isCanceled,
        )
        summary = {key: getattr(result, key) for key in SUMMARY_KEYS}
        summary["classes"] = load_classes(to.output)
        return self.finish(summary, f"{result.model_reason}; ran on {result.runner}",
                           result.runner, to, layer, context, feedback)  # fmt: skip

    def run_on_server(
        self,
        server: ServerChoice,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        """Run on a cloudseg server: the same files, layers, log and outputs as here."""
        layer, to, options, bounds, scene = self.request(parameters, context)
        if bounds is not None:
            options["extent"] = list(bounds)
        with polygons_as(to.vector) as polygons:
            outputs = {
                "mask": to.output,
                "probabilities": to.probabilities,
                "uncertainty": to.uncertainty,
                "valid": to.valid,
                "polygons": polygons.download,
            }
            run = self.remote_run(
                server, "segment", scene, options,
                {k: Path(v) if v else None for k, v in outputs.items()}, feedback,
            )  # fmt: skip
            polygons.publish(list(run.files.values()))
        summary = run.summary
        reason = f"model {summary.get('model')}; ran on {run.where}"
        return self.finish(summary, reason, run.where, to, layer, context, feedback)

    def finish(
        self,
        summary: dict[str, Any],
        reason: str,
        runner: str,
        to: Destinations,
        layer: Any,
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        """Log a finished run, have its results styled on load; the algorithm's outputs.

        The same for a run here and one on a server: ``summary`` holds
        :data:`SUMMARY_KEYS` and ``classes`` (the mask's class list), as the server's
        job summary does; ``runner`` is what ran where (RUNNER).
        """
        feedback.pushInfo(f"Product level: {summary.get('product_level')}")
        feedback.pushInfo(reason)
        if summary.get("shadow_geometry") is not None:
            feedback.pushInfo(describe_geometry(summary["shadow_geometry"]))
        for warning in summary.get("warnings") or []:
            feedback.reportError(for_qgis(warning), fatalError=False)
        if to.vector:
            feedback.pushInfo(f"Polygons: {summary.get('polygon_counts')}")

        self._style_on_load(context, to, styling.input_name(layer), summary.get("classes") or [])
        percent = summary["class_percent"]
        feedback.pushInfo(
            f"Cloud {percent.get('cloud', 0):.2f} %, "
            f"shadow {percent.get('cloud shadow', 0):.2f} %, "
            f"clear {percent.get('clear', 0):.2f} % in {summary['seconds']:.1f} s"
        )
        accounting = summary["accounting"]
        results: dict[str, Any] = {
            self.OUTPUT: to.output,
            self.CLOUD_PERCENT: percent.get("cloud", 0.0),
            self.SHADOW_PERCENT: percent.get("cloud shadow", 0.0),
            self.CLEAR_PERCENT: percent.get("clear", 0.0),
            self.MODEL_USED: summary["model"],
            self.RUNNER: runner,
        } | cost_outputs(accounting)
        feedback.pushInfo(f"Cost: {accounting['summary']}")
        if to.probabilities:
            results[self.PROBABILITIES] = to.probabilities
        if to.vector:
            results[self.VECTOR] = to.vector
        if to.uncertainty:
            results[self.UNCERTAINTY] = to.uncertainty
        if to.valid:
            results[self.VALID] = to.valid
            results[self.USABLE_PERCENT] = summary["usable_percent"]
            feedback.pushInfo(f"Usable: {summary['usable_percent']:.2f} % of the data pixels")
        return results

    def _style_on_load(
        self,
        context: QgsProcessingContext,
        to: Destinations,
        input_name: str,
        classes: list[dict[str, Any]],
    ) -> None:
        """Have Processing name (input first) and style each result it loads."""
        for path, kind in (
            (to.output, "classes"),
            (to.probabilities, "probabilities"),
            (to.uncertainty, "uncertainty"),
            (to.valid, "valid"),
            (to.vector, ""),
        ):
            if path and context.willLoadLayerOnCompletion(path):
                name = styling.result_name(input_name, kind or "polygons")
                styler = ResultStyler(kind or "polygons", classes, name)
                _STYLERS.append(styler)
                details = context.layerToLoadOnCompletionDetails(path)
                details.name = name
                details.forceName = True  # not the file's name, whatever Processing prefers
                details.setPostProcessor(styler)


def describe_geometry(report: dict[str, Any]) -> str:
    """The shadow-geometry report in one line (the engine's words where it is installed)."""
    try:
        from ...backend.inference.shadow import describe
    except ImportError:  # a QGIS that runs on a server only: numpy missing
        return f"shadow geometry: {report}"
    return describe(report)


class PolygonsDownload:
    """The polygons of a server run: downloaded as a GeoPackage, published in any format.

    The server sends a GeoPackage. For a GeoPackage destination it is downloaded there
    directly; for another (a shapefile, Processing's temporary output) it is downloaded
    to a temporary GeoPackage and converted with QGIS's GDAL. If the conversion fails,
    the run's other downloaded files are removed too: a result appears only whole.
    """

    def __init__(self, destination: str, folder: Path | None) -> None:
        self.destination = destination
        self.download = ""
        if destination:
            same = Path(destination).suffix.lower() == ".gpkg"
            self.download = destination if same else str(folder / "polygons.gpkg")

    def publish(self, downloaded: list[Path]) -> None:
        """Convert the GeoPackage to the destination's format (when it is another).

        Raises:
            CloudsegError: When GDAL cannot write the destination (nothing left).
        """
        if not self.destination or self.download == self.destination:
            return
        from osgeo import gdal

        from ...backend.errors import CloudsegError

        target = Path(self.destination)
        driver = QgsVectorFileWriter.driverForExtension(target.suffix) or "GPKG"
        gdal.ErrorReset()
        try:  # GDAL raises or returns None, as osgeo.gdal.UseExceptions was set or not
            done = gdal.VectorTranslate(str(target), self.download, format=driver)
            ok, why = done is not None, gdal.GetLastErrorMsg()
            done = None  # closed: written
        except RuntimeError as exc:
            ok, why = False, str(exc).splitlines()[0] if str(exc) else ""
        if not ok:
            for path in downloaded:
                Path(path).unlink(missing_ok=True)
            for sibling in target.parent.glob(f"{target.stem}.*"):
                if sibling.suffix.lower() in SHAPEFILE_PARTS:
                    sibling.unlink(missing_ok=True)
            raise CloudsegError(f"cannot write the polygons to {target.name} ({why})")


#: The files of a shapefile (removed together when one cannot be written whole).
SHAPEFILE_PARTS = (".shp", ".shx", ".dbf", ".prj", ".cpg", ".qix")


@contextmanager
def polygons_as(destination: str) -> Iterator[PolygonsDownload]:
    """A :class:`PolygonsDownload` for ``destination``, its temporary folder removed after."""
    if not destination or Path(destination).suffix.lower() == ".gpkg":
        yield PolygonsDownload(destination, None)
        return
    with tempfile.TemporaryDirectory(prefix="cloudseg-polygons-") as folder:
        yield PolygonsDownload(destination, Path(folder))

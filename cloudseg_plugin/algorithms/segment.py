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
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
    QgsRasterLayer,
    QgsVectorLayer,
)

from ...backend import choices
from ...backend.choices import (
    DEFAULT_BUFFER_CLOUD_M,
    DEFAULT_BUFFER_SHADOW_M,
    SHADOW_GEOMETRY_EFFECT,
)
from ...backend.errors import CloudsegError
from .. import styling
from ..messages import for_qgis
from .base import CloudsegAlgorithm, add_cost_outputs, choice, cost_outputs

AUTO = "auto"
LEVELS = [AUTO, "L1C", "L2A"]
DEVICES = list(choices.DEVICES)
PRECISIONS = list(choices.PRECISIONS)
RESOLUTIONS = list(choices.RESOLUTIONS)
RUNTIMES = list(choices.RUNTIMES)
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

<b>Bands</b>: band names in file order, filled in from the layer. Edit them when the \
file does not name its bands, e.g. B04,B03,B02,B08 for a red-green-blue-NIR stack.

<b>Scaling</b>: digital numbers become reflectance with the SAFE product's \
quantification and processing-baseline offsets (baseline 04.00 and later subtract \
1000), otherwise DN / 10000. Floating-point reflectance (0-1) is used as is. Values \
that do not look like reflectance are warned about in the log.

<b>Product level</b>: L1C (top of atmosphere) or L2A (surface reflectance). Read from \
SAFE metadata when it can be; the model made for that level is chosen.

<b>Model</b>: auto picks the built-in model that fits the bands and product level \
best, and says which in the log. A model file (ONNX with an embedded cloudseg card, \
or a torch checkpoint with its card) overrides it.

<b>Extent</b>: segment only this area (for example the canvas extent).

<b>Device</b>: auto uses a CUDA GPU when one is usable; the log says what ran where.

<b>Precision</b> (advanced): auto computes in bf16 where the hardware does so natively \
(GPUs, and CPUs with AVX512-BF16 or AMX through OpenVINO): about 1.6x faster there, \
with under 1 % of mask pixels changed. fp32 gives full-precision results.

Outputs: the class raster (styled with the model's class colours; clear is \
transparent), optionally the cloud probability (percent) and polygons of clouds and \
shadows larger than the minimum area, and the cloud, shadow and clear percentages."""


def builtin_model_names() -> list[str]:
    """Names of the built-in models whose weights are installed, then registered versions."""
    try:
        from ...backend.models.registry import available_models

        return [m.card.name for m in available_models()]
    except CloudsegError:
        return []


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
    DEVICE = "DEVICE"
    PRECISION = "PRECISION"
    RUNTIME = "RUNTIME"
    TILE_SIZE = "TILE_SIZE"
    OVERLAP = "OVERLAP"
    BANDS = "BANDS"
    PRODUCT_LEVEL = "PRODUCT_LEVEL"
    EXTENT = "EXTENT"
    TTA = "TTA"
    MAX_MEMORY = "MAX_MEMORY"
    CHECK_REFLECTANCE = "CHECK_REFLECTANCE"
    RESOLUTION = "RESOLUTION"
    OUTPUT = "OUTPUT"
    PROBABILITIES = "PROBABILITIES"
    UNCERTAINTY = "UNCERTAINTY"
    VECTOR = "VECTOR"
    MIN_AREA = "MIN_AREA"
    VALID = "VALID"
    BUFFER_CLOUD = "BUFFER_CLOUD"
    BUFFER_SHADOW = "BUFFER_SHADOW"
    CLOUD_THRESHOLD = "CLOUD_THRESHOLD"
    SHADOW_THRESHOLD = "SHADOW_THRESHOLD"
    SHADOW_GEOMETRY = "SHADOW_GEOMETRY"
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
        from ...backend.models.registry import preview_cost

        cost = preview_cost()
        return (
            HELP + "\n\n<b>Run at</b> (advanced): native, the layer's own grid, is the default "
            "and as accurate as the model gets. preview runs at the model's resolution (30 m "
            "for the built-in models): about 9x faster on 10 m imagery, but small clouds and "
            "thin shadows are lost"
            + (f" ({cost})" if cost else "")
            + ".\n\n<b>Runtime</b> (advanced): auto runs the model with torch on a CUDA GPU, "
            "with OpenVINO on CPUs with native bf16 and with onnxruntime elsewhere; the "
            "RUNNER output says what ran. Tile size and overlap (advanced; by default the "
            "model card's) change the mask: the built-in models were measured best at their own."
        )

    #: What each parameter does, shown as its tooltip (the labels stay short so the
    #: dialog fits at its default size).
    PARAMETER_HELP: ClassVar[dict[str, str]] = {
        "MODEL": "auto: the built-in model made for the layer's product level that uses the "
        "most of its bands (the log says which and why)",
        "MODEL_FILE": "An ONNX model or torch checkpoint with a cloudseg card; overrides Model",
        "BANDS": "The layer's bands in file order, e.g. B04,B03,B02,B08; only for files "
        "whose bands have no names (the note below the field says which case this is)",
        "PRODUCT_LEVEL": "auto: read from SAFE or STAC metadata, GDAL metadata, the file name "
        "or the blue band's darkest pixels; when none tells, L1C is assumed and the log "
        "warns. The L1C and L2A models give different masks",
        "EXTENT": "Segment only this part of the layer",
        "TTA": "Average the model over flips and a rotation: 4x slower, smoother",
        "RESOLUTION": "native: the layer's own grid, most accurate; preview: the model's "
        "resolution (30 m for the built-ins), about 9x faster on 10 m imagery but coarser",
        "RUNTIME": "auto: torch on a GPU, OpenVINO on CPUs with bf16, onnxruntime elsewhere",
        "TILE_SIZE": "0: the model card's (the built-ins were measured best at 256)",
        "OVERLAP": "-1: the model card's",
        "PRECISION": "auto: bf16 where the hardware computes it natively (faster); fp32: "
        "full precision",
        "MAX_MEMORY": "A layer too wide for this budget runs in column blocks, with the same "
        "result",
        "CHECK_REFLECTANCE": "Values that no real scene has after scaling (e.g. a scale 10x "
        "off) stop the run: a wrong scale gives a confident wrong mask. Untick to run anyway",
        "MIN_AREA": "Polygons smaller than this are left out",
        "VALID": "A mask to use directly: 1 where the pixel is usable, 0 where it is cloud or "
        "cloud shadow or within their buffers, no data kept",
        "BUFFER_CLOUD": "Grown around cloud in the valid mask, metres; default Fmask's 3 pixels "
        "of 30 m",
        "BUFFER_SHADOW": "Grown around cloud shadow in the valid mask, metres; default 90 m",
        "CLOUD_THRESHOLD": "Sensitivity, 0-1: a pixel is cloud from this cloud probability on; "
        "lower masks more cloud (a timid model), higher less (an eager one). Empty: the most "
        "probable class",
        "SHADOW_THRESHOLD": "Sensitivity for shadow, 0-1, among pixels that are not cloud. "
        "Empty: the most probable class",
        "SHADOW_GEOMETRY": "Keep shadow only where a cloud of the layer can cast it along the "
        "sun's direction (sun angles from the product, else estimated from the scene; the "
        "log says which); " + SHADOW_GEOMETRY_EFFECT,
    }

    def initAlgorithm(self, configuration: dict[str, Any] | None = None) -> None:
        """Declare the parameters and outputs."""
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Sentinel-2 raster layer"))
        model = QgsProcessingParameterEnum(
            self.MODEL,
            "Model",
            options=[AUTO, *builtin_model_names()],
            defaultValue=AUTO,
        )
        model.setUsesStaticStrings(True)
        self.addParameter(model)
        self.addParameter(
            QgsProcessingParameterFile(
                self.MODEL_FILE,
                "Model file",
                optional=True,
                fileFilter="Models (*.onnx *.pt *.pth *.ckpt)",
            )
        )
        bands = QgsProcessingParameterString(self.BANDS, "Bands", optional=True)
        # Named by path so that headless qgis_process never imports the GUI module.
        bands.setMetadata({"widget_wrapper": {"class": WIDGETS + ".BandsWidgetWrapper"}})
        self.addParameter(bands)
        self.addParameter(choice(self.PRODUCT_LEVEL, "Product level", LEVELS, AUTO))
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, "Extent", optional=True))
        self.addParameter(choice(self.DEVICE, "Device", DEVICES, "auto"))
        self.addParameter(QgsProcessingParameterBoolean(self.TTA, "Test-time augmentation", False))
        self.addParameter(
            choice(
                self.RESOLUTION,
                "Run at",
                RESOLUTIONS,
                "native",
                advanced=True,
            )
        )
        self.addParameter(
            choice(
                self.RUNTIME,
                "Runtime",
                RUNTIMES,
                "auto",
                advanced=True,
            )
        )
        for key, label, unset in (
            (self.TILE_SIZE, "Tile size (px)", 0),
            (self.OVERLAP, "Tile overlap (px)", -1),
        ):
            number = QgsProcessingParameterNumber(
                key, label, QgsProcessingParameterNumber.Integer, unset, minValue=unset
            )
            number.setFlags(number.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(number)
        self.addParameter(
            choice(
                self.PRECISION,
                "Precision",
                PRECISIONS,
                "auto",
                advanced=True,
            )
        )
        memory = QgsProcessingParameterNumber(
            self.MAX_MEMORY,
            "Memory budget (MiB)",
            QgsProcessingParameterNumber.Integer,
            defaultValue=2048,
            minValue=512,
        )
        memory.setFlags(memory.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(memory)
        check = QgsProcessingParameterBoolean(
            self.CHECK_REFLECTANCE,
            "Refuse implausible reflectance",
            True,
        )
        check.setFlags(check.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(check)
        min_area = QgsProcessingParameterNumber(
            self.MIN_AREA,
            "Smallest polygon kept (m²)",
            QgsProcessingParameterNumber.Double,
            defaultValue=1000.0,
            minValue=0.0,
        )
        self.addParameter(min_area)
        for key, label, default in (
            (self.BUFFER_CLOUD, "Cloud buffer (m)",
             DEFAULT_BUFFER_CLOUD_M),
            (self.BUFFER_SHADOW, "Shadow buffer (m)",
             DEFAULT_BUFFER_SHADOW_M),
        ):  # fmt: skip
            self.addParameter(
                QgsProcessingParameterNumber(
                    key, label, QgsProcessingParameterNumber.Double, default, minValue=0.0
                )
            )
        for key, label in (
            (self.CLOUD_THRESHOLD, "Cloud from probability"),
            (self.SHADOW_THRESHOLD, "Shadow from probability"),
        ):
            threshold = QgsProcessingParameterNumber(
                key, label, QgsProcessingParameterNumber.Double, None, optional=True,
                minValue=0.0, maxValue=1.0,
            )  # fmt: skip
            threshold.setFlags(threshold.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(threshold)
        self.addParameter(
            QgsProcessingParameterBoolean(
                self.SHADOW_GEOMETRY, "Shadows only where a cloud can cast them", False
            )
        )
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
        from ...backend.raster.bands import parse_band_list
        from ...backend.raster.reader import scene_path_from_gdal_source

        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException("no input raster layer given")
        model_file = self.parameterAsFile(parameters, self.MODEL_FILE, context)
        model = model_file or self.parameterAsEnumString(parameters, self.MODEL, context)
        level = self.parameterAsEnumString(parameters, self.PRODUCT_LEVEL, context)
        bands_text = self.parameterAsString(parameters, self.BANDS, context).strip()
        output = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        probabilities = self.parameterAsOutputLayer(parameters, self.PROBABILITIES, context)
        uncertainty = self.parameterAsOutputLayer(parameters, self.UNCERTAINTY, context)
        valid = self.parameterAsOutputLayer(parameters, self.VALID, context)
        thresholds = {
            name: self.parameterAsDouble(parameters, key, context)
            if parameters.get(key) not in (None, "") else None
            for name, key in (("cloud_threshold", self.CLOUD_THRESHOLD),
                              ("shadow_threshold", self.SHADOW_THRESHOLD))
        }  # fmt: skip
        vector = self.parameterAsOutputLayer(parameters, self.VECTOR, context)
        bounds = self.extent_bounds(parameters, self.EXTENT, context, layer)
        source = scene_path_from_gdal_source(layer.source())
        options = SegmentOptions(
            model=None if model == AUTO else model,
            bands=parse_band_list(bands_text) if bands_text else None,
            product_level=None if level == AUTO else level,
            device=self.parameterAsEnumString(parameters, self.DEVICE, context),
            precision=self.parameterAsEnumString(parameters, self.PRECISION, context),
            tta=self.parameterAsBool(parameters, self.TTA, context),
            resolution=self.parameterAsEnumString(parameters, self.RESOLUTION, context),
            runtime=self.parameterAsEnumString(parameters, self.RUNTIME, context),
            **self._tiling(parameters, context),
            probabilities=Path(probabilities) if probabilities else None,
            uncertainty=Path(uncertainty) if uncertainty else None,
            overwrite=True,  # the destination widget has already asked
            bounds=bounds,
            polygons=Path(vector) if vector else None,
            min_polygon_area_m2=self.parameterAsDouble(parameters, self.MIN_AREA, context),
            max_memory_mib=self.parameterAsInt(parameters, self.MAX_MEMORY, context),
            check_reflectance=self.parameterAsBool(parameters, self.CHECK_REFLECTANCE, context),
            valid=Path(valid) if valid else None,
            buffer_cloud_m=self.parameterAsDouble(parameters, self.BUFFER_CLOUD, context),
            buffer_shadow_m=self.parameterAsDouble(parameters, self.BUFFER_SHADOW, context),
            shadow_geometry=self.parameterAsBool(parameters, self.SHADOW_GEOMETRY, context),
            **thresholds,
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

    def _tiling(self, parameters: dict[str, Any], context: QgsProcessingContext) -> dict:
        """TILE_SIZE and OVERLAP as engine options (0 and -1: the model card's)."""
        tile = self.parameterAsInt(parameters, self.TILE_SIZE, context)
        overlap = self.parameterAsInt(parameters, self.OVERLAP, context)
        return {"tile_size": tile or None, "overlap": None if overlap < 0 else overlap}

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

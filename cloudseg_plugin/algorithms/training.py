"""Training algorithms ``cloudseg:train``, ``cloudseg:evaluate`` and ``cloudseg:export``.

They are thin adapters to :mod:`cloudseg.training`.

Processing runs them in a background task from its dialog, with progress and Cancel;
``qgis_process`` runs them headless.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qgis.core import (
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
    QgsProcessingUtils,
)

from ...backend.dependencies import TRAINING_REQUIREMENTS
from .base import CloudsegAlgorithm, choice
from .segment import RESOLUTIONS, SegmentAlgorithm, builtin_model_names

GROUP = {"group_name": "Training and evaluation", "group_id": "training"}


class TrainAlgorithm(CloudsegAlgorithm):
    """Train or fine-tune a model on an ingested store, as a YAML config says."""

    algorithm_name = "train"
    display_name = "Train or fine-tune a model"
    group_name = GROUP["group_name"]
    group_id = GROUP["group_id"]
    requirements = TRAINING_REQUIREMENTS

    CONFIG = "CONFIG"
    OUTPUT_FOLDER = "OUTPUT_FOLDER"
    EPOCHS = "EPOCHS"
    RESUME = "RESUME"
    OVERWRITE = "OVERWRITE"

    def shortHelpString(self) -> str:
        """Return the help shown beside the dialog."""
        return """Trains or fine-tunes a segmentation model (U-Net, FPN, DeepLabV3+, \
PSPNet, Segformer...) on an ingested store, as a YAML config says (see \
docs/training.md).

<b>Config</b>: data (store, bands, classes, window, split), model (architecture, \
encoder, init: e.g. ukis-csmask-4b-l1c to fine-tune the built-in cloud model) and \
train (epochs, batch size, loss...).

<b>Run folder</b>: overrides the config's output. It receives checkpoints, logs \
(CSV, TensorBoard), the config as run and model.pt, the best weights with their \
model card, usable at once as the model file of "Segment clouds" or exported to ONNX.

Cancel stops after the current batch; the checkpoints stay, so Resume continues \
the run. A cancelled run writes no model.pt."""

    def initAlgorithm(self, configuration: dict[str, Any] | None = None) -> None:
        """Declare the parameters and outputs."""
        self.addParameter(
            QgsProcessingParameterFile(
                self.CONFIG, "Training config (YAML)", fileFilter="YAML (*.yaml *.yml)"
            )
        )
        self.addParameter(
            QgsProcessingParameterFile(
                self.OUTPUT_FOLDER,
                "Run folder (default: the config's output)",
                QgsProcessingParameterFile.Folder,
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.EPOCHS, "Epochs (0: the config's)", minValue=0, defaultValue=0
            )
        )
        self.addParameter(QgsProcessingParameterBoolean(self.RESUME, "Resume the run", False))
        self.addParameter(
            QgsProcessingParameterBoolean(self.OVERWRITE, "Replace an earlier run", False)
        )
        self.addOutput(QgsProcessingOutputFile("MODEL", "Trained model (model.pt)"))
        self.addOutput(QgsProcessingOutputNumber("VAL_IOU", "Validation mean IoU"))
        self.addOutput(QgsProcessingOutputNumber("EPOCHS_RUN", "Epochs run"))

    def run_backend(
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        """Train with Processing's progress and cancel."""
        from ...training.config import Config, load_yaml
        from ...training.train import train

        path = self.parameterAsFile(parameters, self.CONFIG, context)
        folder = self.parameterAsFile(parameters, self.OUTPUT_FOLDER, context)
        epochs = self.parameterAsInt(parameters, self.EPOCHS, context)
        # Set the values as they are: a folder name must not be parsed as YAML.
        data = load_yaml(path)
        if folder:
            data["output"] = folder
        if epochs:
            data["train"] = {**(data.get("train") or {}), "epochs": epochs}
        config = Config.from_dict(data, path)
        result = train(
            config,
            resume=self.parameterAsBool(parameters, self.RESUME, context),
            overwrite=self.parameterAsBool(parameters, self.OVERWRITE, context),
            progress=lambda pct, msg: self.report_progress(feedback, pct, msg),
            cancelled=feedback.isCanceled,
        )
        iou = result.best_val_iou
        feedback.pushInfo(
            f"{result.model_path}: {result.epochs} epoch(s), validation mIoU "
            f"{iou if iou is None else round(iou, 4)}, {result.windows_per_second:.1f} windows/s "
            f"on {result.device}"
        )
        return {
            "MODEL": str(result.model_path),
            "VAL_IOU": iou,
            "EPOCHS_RUN": result.epochs,
        }


class EvaluateAlgorithm(CloudsegAlgorithm):
    """Score a model on labeled data: IoU, F1, precision, recall, confusion matrix."""

    algorithm_name = "evaluate"
    display_name = "Evaluate a model on labeled data"
    group_name = GROUP["group_name"]
    group_id = GROUP["group_id"]
    requirements = SegmentAlgorithm.requirements

    MODEL = "MODEL"
    MODEL_FILE = "MODEL_FILE"
    STORE = "STORE"
    SCENES = "SCENES"
    INPUT = "INPUT"
    LABELS = "LABELS"
    BANDS = "BANDS"
    LABEL_CLASSES = "LABEL_CLASSES"
    CLASS_MAP = "CLASS_MAP"
    RESOLUTION = "RESOLUTION"
    OUTPUT_FOLDER = "OUTPUT_FOLDER"

    def shortHelpString(self) -> str:
        """Return the help shown beside the dialog."""
        return """Runs a model exactly as "Segment clouds" does and compares its classes \
with labels: per-class IoU, F1, precision and recall, pixel and balanced accuracy, \
and the confusion matrix (metrics.json and confusion.png in the output folder).

<b>Labeled data</b>: an ingested store (folder or s3://bucket/prefix; all scenes or \
the listed ones), or raster layers with one label raster each, in the same order.

<b>Classes</b>: label classes map to the model's by name (thick and thin cloud -> \
cloud). Name the label values with Label classes (e.g. clear,thick cloud,thin \
cloud,cloud shadow), and override with Class map (thin cloud=cloud; haze=). \
Unlabeled pixels (nodata, 255) are ignored."""

    def initAlgorithm(self, configuration: dict[str, Any] | None = None) -> None:
        """Declare the parameters and outputs."""
        names = builtin_model_names()
        model = QgsProcessingParameterEnum(
            self.MODEL,
            "Built-in model",
            options=names,
            defaultValue=names[0] if names else None,
            optional=True,
        )
        model.setUsesStaticStrings(True)
        self.addParameter(model)
        self.addParameter(
            QgsProcessingParameterFile(
                self.MODEL_FILE,
                "Model file (.onnx or model.pt; overrides the built-in model)",
                optional=True,
                fileFilter="Models (*.onnx *.pt *.pth)",
            )
        )
        self.addParameter(
            QgsProcessingParameterString(
                self.STORE, "Ingested store (folder or s3://bucket/prefix)", optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterString(
                self.SCENES, "Store scenes (comma-separated; default all)", optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterMultipleLayers(
                self.INPUT,
                "Scenes (raster layers)",
                QgsProcessing.TypeRaster,
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterMultipleLayers(
                self.LABELS,
                "Label rasters (same order)",
                QgsProcessing.TypeRaster,
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterString(
                self.BANDS, "Bands of the scenes, when unnamed (e.g. B02,B03,B04)", optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterString(
                self.LABEL_CLASSES, "Label classes (names of values 0,1,2...)", optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterString(
                self.CLASS_MAP, "Class map (label=model; ...)", optional=True
            )
        )
        self.addParameter(choice(self.RESOLUTION, "Resolution", RESOLUTIONS, "native"))
        self.addParameter(
            QgsProcessingParameterFolderDestination(self.OUTPUT_FOLDER, "Evaluation report")
        )
        for key, label in (
            ("MEAN_IOU", "Mean IoU"),
            ("MEAN_F1", "Mean F1"),
            ("PIXEL_ACCURACY", "Pixel accuracy"),
            ("BALANCED_ACCURACY", "Balanced accuracy"),
        ):
            self.addOutput(QgsProcessingOutputNumber(key, label))
        self.addOutput(QgsProcessingOutputFile("METRICS", "Metrics (JSON)"))
        self.addOutput(QgsProcessingOutputFile("CONFUSION", "Confusion matrix (PNG)"))
        self.addOutput(QgsProcessingOutputString("MODEL_USED", "Model"))

    def run_backend(
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        """Evaluate with Processing's progress and cancel."""
        from ...training.evaluate import evaluate_rasters, evaluate_store

        model = self.parameterAsFile(parameters, self.MODEL_FILE, context) or (
            self.parameterAsEnumString(parameters, self.MODEL, context)
        )
        if not model:
            raise QgsProcessingException("choose a built-in model or a model file")
        store = self.parameterAsString(parameters, self.STORE, context)
        images = [
            QgsProcessingUtils.normalizeLayerSource(layer.source())
            for layer in self.parameterAsLayerList(parameters, self.INPUT, context)
        ]
        labels = [
            QgsProcessingUtils.normalizeLayerSource(layer.source())
            for layer in self.parameterAsLayerList(parameters, self.LABELS, context)
        ]
        out = Path(self.parameterAsString(parameters, self.OUTPUT_FOLDER, context))
        scenes = self.parameterAsString(parameters, self.SCENES, context)
        label_classes = self.parameterAsString(parameters, self.LABEL_CLASSES, context)
        bands = self.parameterAsString(parameters, self.BANDS, context)
        common: dict[str, Any] = {
            "out": out,
            "progress": lambda pct, msg: self.report_progress(feedback, pct, msg),
            "cancelled": feedback.isCanceled,
        }
        from ...backend.inference.options import RunOptions
        from ...backend.raster.bands import parse_band_list
        from ...training.data import parse_class_map

        common["options"] = RunOptions(
            precision="fp32",  # metrics of the model itself
            resolution=self.parameterAsEnumString(parameters, self.RESOLUTION, context),
            bands=parse_band_list(bands) if bands else None,
        )

        class_map = self.parameterAsString(parameters, self.CLASS_MAP, context)
        common["class_map"] = parse_class_map(
            [part for part in class_map.split(";") if part.strip()]
        )
        if store:
            result = evaluate_store(
                model, store, scenes=scenes.split(",") if scenes else None, **common
            )
        elif images:
            result = evaluate_rasters(
                model,
                images,
                labels,
                label_classes=label_classes.split(",") if label_classes else None,
                **common,
            )
        else:
            raise QgsProcessingException("give an ingested store, or scenes and label rasters")
        m = result.metrics
        for name, values in m["per_class"].items():
            feedback.pushInfo(
                f"{name}: IoU {values['iou']}, F1 {values['f1']}, support {values['support']}"
            )
        return {
            "MEAN_IOU": m["mean_iou"],
            "MEAN_F1": m["mean_f1"],
            "PIXEL_ACCURACY": m["pixel_accuracy"],
            "BALANCED_ACCURACY": m["balanced_accuracy"],
            "METRICS": str(result.metrics_path),
            "CONFUSION": str(result.confusion_png),
            "MODEL_USED": result.model,
            self.OUTPUT_FOLDER: str(out),
        }


class ExportAlgorithm(CloudsegAlgorithm):
    """Export a trained model.pt to ONNX with its card, checked against torch."""

    algorithm_name = "export"
    display_name = "Export a trained model to ONNX"
    group_name = GROUP["group_name"]
    group_id = GROUP["group_id"]
    requirements = TRAINING_REQUIREMENTS

    MODEL = "MODEL"
    OPSET = "OPSET"
    OUTPUT = "OUTPUT"

    def shortHelpString(self) -> str:
        """Return the help shown beside the dialog."""
        return """Exports a model.pt written by "Train or fine-tune a model" to ONNX with a \
dynamic batch size and the model card embedded, so that "Segment clouds" and \
qgis_process take the file as it is. onnxruntime's output is compared with torch's \
first; if they differ by more than 1e-3 nothing is written."""

    def initAlgorithm(self, configuration: dict[str, Any] | None = None) -> None:
        """Declare the parameters and outputs."""
        self.addParameter(
            QgsProcessingParameterFile(
                self.MODEL, "Trained model (model.pt)", fileFilter="PyTorch (*.pt *.pth)"
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.OPSET, "ONNX opset", minValue=13, maxValue=21, defaultValue=17
            )
        )
        self.addParameter(
            QgsProcessingParameterFileDestination(self.OUTPUT, "ONNX model", "ONNX (*.onnx)")
        )
        self.addOutput(QgsProcessingOutputNumber("MAX_ABS_DIFF", "Largest difference to torch"))

    def run_backend(
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        """Export and check parity."""
        from ...training.export import export_onnx

        output = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        result = export_onnx(
            self.parameterAsFile(parameters, self.MODEL, context),
            output,
            opset=self.parameterAsInt(parameters, self.OPSET, context),
            overwrite=True,  # Processing's file destinations replace existing files
        )
        feedback.pushInfo(
            f"{result.path}: {result.card.name}; onnxruntime matches torch to "
            f"{result.max_abs_diff:.1e}"
        )
        return {self.OUTPUT: str(result.path), "MAX_ABS_DIFF": result.max_abs_diff}

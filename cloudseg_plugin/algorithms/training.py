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
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
    QgsProcessingUtils,
)

from ...backend.choices import RESOLUTIONS
from ...backend.dependencies import SEGMENT, TRAINING
from .base import CloudsegAlgorithm, choice
from .options import builtin_model_names

GROUP = {"group_name": "Training and evaluation", "group_id": "training"}


class TrainAlgorithm(CloudsegAlgorithm):
    """Train or fine-tune a model on an ingested store, as a YAML config says."""

    algorithm_name = "train"
    display_name = "2 - Train or fine-tune a model"
    group_name = GROUP["group_name"]
    group_id = GROUP["group_id"]
    requirements = (SEGMENT, TRAINING)

    STORE = "STORE"
    BANDS = "BANDS"
    INIT = "INIT"
    CONFIG = "CONFIG"
    OUTPUT_FOLDER = "OUTPUT_FOLDER"
    EPOCHS = "EPOCHS"
    BATCH_SIZE = "BATCH_SIZE"
    RESUME = "RESUME"
    OVERWRITE = "OVERWRITE"
    #: The Init choice that starts from random weights (ImageNet-pretrained encoder).
    FROM_SCRATCH = "none (train from scratch)"

    def shortHelpString(self) -> str:
        """Return the help shown beside the dialog."""
        return """Trains or fine-tunes a segmentation model on an ingested store (see \
"1 - Ingest labeled scenes").

<b>Store</b>: the ingested store (folder or s3://bucket/prefix). <b>Bands</b>: the \
input bands (default all of the store's). <b>Start from</b>: a built-in cloud model to \
fine-tune (its bands are used), or none. <b>Epochs</b> and <b>Batch size</b>.

<b>Run folder</b>: receives checkpoints, logs (CSV, TensorBoard), the config as run and \
model.pt, the best weights with their model card, usable at once as the model file of \
"Segment clouds" or exported to ONNX.

<b>Config file</b> (advanced): a YAML file with every setting (docs/training.md: \
architecture, encoder, split, loss, augmentation...); the parameters above, when set, \
override it.

Cancel stops after the current batch; the checkpoints stay, so Resume continues \
the run. A cancelled run writes no model.pt."""

    def initAlgorithm(self, configuration: dict[str, Any] | None = None) -> None:
        """Declare the parameters and outputs."""
        self.addParameter(
            QgsProcessingParameterString(
                self.STORE, "Store (ingested folder or s3://...)", optional=True
            )
        )
        self.addParameter(QgsProcessingParameterString(self.BANDS, "Bands", optional=True))
        init = QgsProcessingParameterEnum(
            self.INIT,
            "Start from",
            options=[self.FROM_SCRATCH, *builtin_model_names()],
            defaultValue=None,
            optional=True,
        )
        init.setUsesStaticStrings(True)
        self.addParameter(init)
        self.addParameter(
            QgsProcessingParameterNumber(self.EPOCHS, "Epochs", minValue=0, defaultValue=0)
        )
        self.addParameter(
            QgsProcessingParameterNumber(self.BATCH_SIZE, "Batch size", minValue=0, defaultValue=0)
        )
        self.addParameter(
            QgsProcessingParameterFile(
                self.OUTPUT_FOLDER, "Run folder", QgsProcessingParameterFile.Folder, optional=True
            )
        )
        self.addParameter(QgsProcessingParameterBoolean(self.RESUME, "Resume the run", False))
        self.addParameter(
            QgsProcessingParameterBoolean(self.OVERWRITE, "Replace an earlier run", False)
        )
        config = QgsProcessingParameterFile(
            self.CONFIG, "Config file (YAML)", fileFilter="YAML (*.yaml *.yml)", optional=True
        )
        config.setFlags(config.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(config)
        for name, text in (
            (self.STORE, "The store written by Ingest; required without a config file"),
            (
                self.BANDS,
                "Input bands in order, e.g. B02,B03,B04,B08; empty: the store's "
                "bands (or, when starting from a built-in model, its bands)",
            ),
            (
                self.INIT,
                "Fine-tune a built-in cloud model (fast, needs little data), or "
                "train from scratch; empty: the config file's choice",
            ),
            (self.EPOCHS, "0: the config file's (20 without one)"),
            (self.BATCH_SIZE, "0: the config file's (8 without one)"),
            (self.OUTPUT_FOLDER, "Empty: the config file's output (runs/model without one)"),
        ):
            self.parameterDefinition(name).setHelp(text)
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
        from ...backend.raster.bands import parse_band_list
        from ...training.config import Config, load_yaml
        from ...training.train import train

        path = self.parameterAsFile(parameters, self.CONFIG, context)
        store = self.parameterAsString(parameters, self.STORE, context).strip()
        if not path and not store:
            raise QgsProcessingException("give the Store to train on (or a config file)")
        folder = self.parameterAsFile(parameters, self.OUTPUT_FOLDER, context)
        epochs = self.parameterAsInt(parameters, self.EPOCHS, context)
        batch = self.parameterAsInt(parameters, self.BATCH_SIZE, context)
        bands = self.parameterAsString(parameters, self.BANDS, context).strip()
        init = self.parameterAsEnumString(parameters, self.INIT, context)
        # Set the values as they are: a folder name must not be parsed as YAML.
        data = load_yaml(path) if path else {}
        sections = {key: dict(data.get(key) or {}) for key in ("data", "model", "train")}
        if store:
            sections["data"]["store"] = store
        if bands:
            sections["data"]["bands"] = parse_band_list(bands)
        if init:
            sections["model"]["init"] = None if init == self.FROM_SCRATCH else init
        if epochs:
            sections["train"]["epochs"] = epochs
        if batch:
            sections["train"]["batch_size"] = batch
        data |= sections
        if folder:
            data["output"] = folder
        config = Config.from_dict(data, path or "the Train parameters")
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
    display_name = "3 - Evaluate a model on labeled data"
    group_name = GROUP["group_name"]
    group_id = GROUP["group_id"]

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
                "Model file",
                optional=True,
                fileFilter="Models (*.onnx *.pt *.pth)",
            )
        )
        self.addParameter(QgsProcessingParameterString(self.STORE, "Store", optional=True))
        self.addParameter(QgsProcessingParameterString(self.SCENES, "Store scenes", optional=True))
        self.addParameter(
            QgsProcessingParameterMultipleLayers(
                self.INPUT,
                "Scenes",
                QgsProcessing.TypeRaster,
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterMultipleLayers(
                self.LABELS,
                "Label rasters",
                QgsProcessing.TypeRaster,
                optional=True,
            )
        )
        self.addParameter(QgsProcessingParameterString(self.BANDS, "Bands", optional=True))
        self.addParameter(
            QgsProcessingParameterString(self.LABEL_CLASSES, "Label classes", optional=True)
        )
        self.addParameter(QgsProcessingParameterString(self.CLASS_MAP, "Class map", optional=True))
        self.addParameter(choice(self.RESOLUTION, "Resolution", list(RESOLUTIONS), "native"))
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
        for name, text in (  # the tooltips: the labels stay short so the dialog fits
            (self.MODEL_FILE, "An ONNX model or model.pt; overrides the built-in model"),
            (self.STORE, "An ingested store: a folder or s3://bucket/prefix"),
            (self.SCENES, "Scene ids of the store, comma-separated; empty: all"),
            (self.INPUT, "Raster layers to segment, with Label rasters in the same order"),
            (self.LABELS, "One label raster per scene, in the same order"),
            (
                self.BANDS,
                "The scenes' bands in file order when the files do not name them, e.g. B02,B03,B04",
            ),
            (self.LABEL_CLASSES, "Names of the label values 0, 1, 2...; empty: the model's"),
            (
                self.CLASS_MAP,
                "Label class = model class pairs, separated by ';' (thick and "
                "thin cloud map to cloud by name)",
            ),
        ):
            self.parameterDefinition(name).setHelp(text)

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
    display_name = "4 - Export a trained model to ONNX"
    group_name = GROUP["group_name"]
    group_id = GROUP["group_id"]
    requirements = (SEGMENT, TRAINING)

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


class CheckLabelsAlgorithm(CloudsegAlgorithm):
    """Rank a store's scenes by label quality (cleanlab) against an out-of-sample model."""

    algorithm_name = "check_labels"
    display_name = "Check labels (find likely label errors)"
    group_name = GROUP["group_name"]
    group_id = GROUP["group_id"]
    requirements = (SEGMENT, TRAINING)

    STORE = "STORE"
    MODEL = "MODEL"
    FOLDS = "FOLDS"
    CONFIG = "CONFIG"
    WINDOW = "WINDOW"
    OUTPUT_FOLDER = "OUTPUT_FOLDER"

    def shortHelpString(self) -> str:
        """Return the help shown beside the dialog."""
        return """Finds the scenes and windows of an ingested <b>Store</b> whose labels \
are likely wrong: a <b>Model</b> that did not train on them predicts every scene (or, \
with <b>Cross-validation folds</b> and a <b>Training config</b>, one model per fold \
trained on the other folds), and cleanlab's confident learning flags the pixels whose \
label the model contradicts with confidence.

Writes label_issues.json and label_issues.csv (scenes ranked worst first by label \
quality 0-1, the share of labeled pixels flagged, the worst windows, the class \
confusions), one flagged-pixel raster and the model's classes per scene into the \
<b>Output folder</b>, and notes the score in each scene's STAC Item. The stored labels \
are never changed. Review the flagged windows in the label dock's Suspicious labels tab."""

    def initAlgorithm(self, configuration: dict[str, Any] | None = None) -> None:
        """Declare the parameters and outputs."""
        self.addParameter(QgsProcessingParameterString(self.STORE, "Store"))
        self.addParameter(
            QgsProcessingParameterString(
                self.MODEL, "Model (name or file; not trained on the store)", optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.FOLDS, "Cross-validation folds (0: use the model)", minValue=0,
                defaultValue=0,
            )
        )  # fmt: skip
        self.addParameter(
            QgsProcessingParameterFile(
                self.CONFIG, "Training config of the folds' models (YAML)", optional=True,
                fileFilter="YAML (*.yaml *.yml)",
            )
        )  # fmt: skip
        window = QgsProcessingParameterNumber(
            self.WINDOW, "Window scored inside each scene (px)", minValue=16, defaultValue=128
        )
        window.setFlags(window.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(window)
        self.addParameter(
            QgsProcessingParameterFolderDestination(self.OUTPUT_FOLDER, "Output folder")
        )
        self.addOutput(QgsProcessingOutputFile("REPORT", "Report (label_issues.json)"))
        self.addOutput(QgsProcessingOutputNumber("FLAGGED", "Scenes flagged"))
        self.addOutput(QgsProcessingOutputString("WORST", "Worst scene"))
        self.addOutput(QgsProcessingOutputNumber("SCENES", "Scenes checked"))

    def run_backend(
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        """Check the labels and list the worst scenes in the log."""
        from ...training.label_check import check_labels

        folds = self.parameterAsInt(parameters, self.FOLDS, context)
        config = self.parameterAsFile(parameters, self.CONFIG, context) or None
        result = check_labels(
            self.parameterAsString(parameters, self.STORE, context).strip(),
            self.parameterAsString(parameters, self.MODEL, context).strip() or None,
            self.parameterAsString(parameters, self.OUTPUT_FOLDER, context),
            folds=folds or None,
            config=config,
            window=self.parameterAsInt(parameters, self.WINDOW, context),
            progress=lambda p, m: self.report_progress(feedback, p, m),
            cancelled=feedback.isCanceled,
        )
        for entry in result.scenes[:10]:
            feedback.pushInfo(
                f"{entry['rank']}. {entry['scene']}: quality {entry['score']:.3f}, "
                f"{100 * entry['flagged_share']:.1f} % flagged"
            )
        return {
            self.OUTPUT_FOLDER: str(result.report.parent),
            "REPORT": str(result.report),
            "WORST": result.scenes[0]["scene"],
            "SCENES": len(result.scenes),
            "FLAGGED": len(result.flagged()),
        }

"""cloudseg:train, cloudseg:export and cloudseg:evaluate through Processing, on real data."""

import json

import numpy as np
import processing
import pytest
import rasterio
import yaml
from qgis.core import QgsProcessingException, QgsProcessingFeedback, QgsProject, QgsRasterLayer

from cloudseg.backend.store.ingest import ingest

PATCH = "ROI_2507/low-cloudy"


@pytest.fixture(scope="module")
def store(real_data, tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "cs12"
    ingest(real_data / "cloudsen12_figures", path, env_file=None, report=False)
    return path


def _config(store, tmp_path, epochs=2):
    path = tmp_path / "train.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "qgis-tiny",
                "output": str(tmp_path / "unused"),
                "data": {
                    "store": str(store),
                    "bands": ["B02", "B03", "B04"],
                    "classes": ["clear", "cloud", "cloud shadow"],
                    "window": 128,
                    "samples_per_epoch": 16,
                    "split": {"val_scenes": ["ROI_2507-low-cloudy"]},
                },
                "model": {"architecture": "FPN", "encoder": "resnet18"},
                "train": {"epochs": epochs, "batch_size": 4, "lr": 1e-3},
            }
        )
    )
    return path


@pytest.mark.slow
def test_train_export_evaluate_and_segment_with_the_exported_model(
    plugin, store, real_data, tmp_path
):
    run = tmp_path / "run"
    trained = processing.run(
        "cloudseg:train",
        {"CONFIG": str(_config(store, tmp_path)), "OUTPUT_FOLDER": str(run), "EPOCHS": 1},
    )
    assert trained["MODEL"] == str(run / "model.pt") and trained["EPOCHS_RUN"] == 1
    assert 0 <= trained["VAL_IOU"] <= 1
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 1

    onnx_path = tmp_path / "qgis-tiny.onnx"
    exported = processing.run(
        "cloudseg:export", {"MODEL": trained["MODEL"], "OUTPUT": str(onnx_path)}
    )
    assert exported["OUTPUT"] == str(onnx_path) and exported["MAX_ABS_DIFF"] <= 1e-3

    patch = real_data / "cloudsen12_figures" / PATCH
    image = QgsRasterLayer(str(patch / "S2L1C.tif"), "scene")
    label_file = next(p for p in (patch / "manual_hq.tif", patch / "manual_sc.tif") if p.is_file())
    label = QgsRasterLayer(str(label_file), "labels")
    QgsProject.instance().addMapLayers([image, label])
    try:
        on_layers = processing.run(
            "cloudseg:evaluate",
            {
                "MODEL_FILE": str(onnx_path),
                "INPUT": [image],
                "LABELS": [label],
                "BANDS": "B02,B03,B04",
                "LABEL_CLASSES": "clear,thick cloud,thin cloud,cloud shadow",
                "OUTPUT_FOLDER": str(tmp_path / "eval-layers"),
            },
        )
        # the scene has no band names: segment with the bands given explicitly
        mask = tmp_path / "mask.tif"
        seg = processing.run(
            "cloudseg:segment",
            {
                "INPUT": image,
                "MODEL_FILE": str(onnx_path),
                "BANDS": "B02,B03,B04",
                "OUTPUT": str(mask),
            },
        )
    finally:
        QgsProject.instance().removeAllMapLayers()
    assert seg["MODEL_USED"] == "qgis-tiny"
    with rasterio.open(mask) as ds:
        assert set(np.unique(ds.read(1))) <= {0, 1, 2, 255}
    on_store = processing.run(
        "cloudseg:evaluate",
        {
            "MODEL_FILE": str(onnx_path),
            "STORE": str(store),
            "SCENES": "ROI_2507-low-cloudy",
            "OUTPUT_FOLDER": str(tmp_path / "eval-store"),
        },
    )
    assert on_store["MODEL_USED"] == "qgis-tiny"
    assert on_store["MEAN_IOU"] == pytest.approx(on_layers["MEAN_IOU"])
    saved = json.loads((tmp_path / "eval-store" / "metrics.json").read_text())
    assert saved["mean_iou"] == pytest.approx(on_store["MEAN_IOU"])
    assert (tmp_path / "eval-store" / "confusion.png").is_file()


@pytest.mark.slow
def test_cancelled_training_writes_no_model_and_errors_are_processing_exceptions(
    plugin, store, tmp_path
):
    feedback = QgsProcessingFeedback()
    feedback.progressChanged.connect(lambda pct: feedback.cancel() if pct > 0 else None)
    run = tmp_path / "cancelled"
    with pytest.raises(QgsProcessingException, match="cancelled"):
        processing.run(
            "cloudseg:train",
            {"CONFIG": str(_config(store, tmp_path, epochs=5)), "OUTPUT_FOLDER": str(run)},
            feedback=feedback,
        )
    assert not (run / "model.pt").exists()
    with pytest.raises(QgsProcessingException, match="nothing to resume"):
        processing.run(
            "cloudseg:train",
            {
                "CONFIG": str(_config(store, tmp_path)),
                "OUTPUT_FOLDER": str(tmp_path / "x"),
                "RESUME": True,
            },
        )
    with pytest.raises(QgsProcessingException, match="give an ingested store"):
        processing.run(
            "cloudseg:evaluate",
            {"MODEL": "ukis-csmask-4b-l1c", "OUTPUT_FOLDER": str(tmp_path / "e")},
        )


@pytest.mark.slow
def test_train_takes_its_main_settings_as_parameters_over_the_config(plugin, store, tmp_path):
    # The config names no usable store and other bands: the parameters win.
    config = _config(tmp_path / "no-such-store", tmp_path)
    run = tmp_path / "run"
    trained = processing.run(
        "cloudseg:train",
        {
            "STORE": str(store),
            "BANDS": "B04,B03,B02",
            "EPOCHS": 1,
            "BATCH_SIZE": 2,
            "CONFIG": str(config),
            "OUTPUT_FOLDER": str(run),
        },
    )
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["store"] == str(store) and saved["data"]["bands"] == ["B04", "B03", "B02"]
    assert saved["train"]["epochs"] == 1 and saved["train"]["batch_size"] == 2
    assert trained["EPOCHS_RUN"] == 1


def test_train_without_a_store_or_config_says_what_to_give(plugin, tmp_path):
    with pytest.raises(QgsProcessingException, match="give the Store to train on"):
        processing.run("cloudseg:train", {"OUTPUT_FOLDER": str(tmp_path / "run")})
    assert not (tmp_path / "run").exists()


@pytest.mark.real_data
def test_check_labels_through_processing_ranks_the_planted_chip_first(
    plugin, planted_store, tmp_path
):
    store, planted, _ = planted_store
    result = processing.run(
        "cloudseg:check_labels",
        {
            "STORE": str(store),
            "MODEL": "ukis-csmask-6b-l1c",
            "OUTPUT_FOLDER": str(tmp_path / "check"),
        },
        feedback=QgsProcessingFeedback(),
    )
    assert result["WORST"] == planted and result["SCENES"] == 4 and result["FLAGGED"] == 1
    report = json.loads((tmp_path / "check" / "label_issues.json").read_text())
    assert report["scenes"][0]["scene"] == planted and result["REPORT"].endswith(".json")
    assert (tmp_path / "check" / "predicted" / f"{planted}.tif").is_file()
    with pytest.raises(QgsProcessingException, match="--folds needs --config"):
        processing.run(
            "cloudseg:check_labels",
            {"STORE": str(store), "FOLDS": 2, "OUTPUT_FOLDER": str(tmp_path / "cv")},
            feedback=QgsProcessingFeedback(),
        )
    assert not (tmp_path / "cv").exists()

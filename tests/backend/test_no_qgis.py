"""The backend must run where QGIS is absent: none of its modules may import qgis."""

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_backend_modules_never_import_qgis(import_all):
    result = import_all("cloudseg.backend")
    assert "cloudseg.backend.cli" in result["modules"]
    assert result["qgis_modules"] == []


def test_plugin_root_import_is_cheap():
    """QGIS imports the root package at start-up: it must not pull torch, onnxruntime or qgis."""
    code = (
        "import sys, cloudseg; "
        "heavy = {'torch', 'onnxruntime', 'rasterio', 'qgis', 'segmentation_models_pytorch'}; "
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"

"""Training code runs on servers without QGIS: none of its modules may import qgis."""

import pytest


@pytest.mark.slow
def test_training_modules_never_import_qgis(import_all):
    result = import_all("cloudseg.training")
    assert result["modules"][0] == "cloudseg.training"
    assert result["qgis_modules"] == []

"""cloudseg:ingest through Processing, on the real CloudSEN12 patches."""

import json

import processing
import pytest
from qgis.core import QgsProcessingException


@pytest.mark.slow
def test_ingest_algorithm_builds_the_store_and_reports_failures(plugin, real_data, tmp_path):
    store = tmp_path / "store"
    params = {"SOURCE": str(real_data / "cloudsen12_figures"), "DESTINATION": str(store)}
    result = processing.run("cloudseg:ingest", params)
    assert (result["INGESTED"], result["SKIPPED"], result["FAILED"]) == (11, 0, 4)
    assert result["STORE"] == str(store)
    collection = json.loads((store / "stac/collection.json").read_text())
    assert len([link for link in collection["links"] if link["rel"] == "item"]) == 11
    again = processing.run("cloudseg:ingest", params)
    assert (again["INGESTED"], again["SKIPPED"]) == (0, 11)


def test_ingest_algorithm_errors_are_processing_exceptions(plugin, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(QgsProcessingException, match="unknown layout"):
        processing.run(
            "cloudseg:ingest",
            {"SOURCE": str(tmp_path / "empty"), "DESTINATION": str(tmp_path / "store")},
        )

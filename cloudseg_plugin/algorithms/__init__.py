"""Processing algorithms: thin adapters from Processing parameters to the backend."""

from __future__ import annotations

from qgis.core import QgsProcessingAlgorithm

from .batch import SegmentBatchAlgorithm
from .environment import EnvironmentAlgorithm
from .explain import ExplainAlgorithm
from .ingest import IngestAlgorithm
from .install import InstallPackagesAlgorithm
from .propose import LabelsToStoreAlgorithm, ProposeAlgorithm
from .segment import SegmentAlgorithm
from .training import CheckLabelsAlgorithm, EvaluateAlgorithm, ExportAlgorithm, TrainAlgorithm


def all_algorithms() -> list[QgsProcessingAlgorithm]:
    """Return a fresh instance of every algorithm of the provider."""
    return [
        EnvironmentAlgorithm(),
        InstallPackagesAlgorithm(),
        SegmentAlgorithm(),
        SegmentBatchAlgorithm(),
        ProposeAlgorithm(),
        ExplainAlgorithm(),
        LabelsToStoreAlgorithm(),
        IngestAlgorithm(),
        TrainAlgorithm(),
        EvaluateAlgorithm(),
        ExportAlgorithm(),
        CheckLabelsAlgorithm(),
    ]

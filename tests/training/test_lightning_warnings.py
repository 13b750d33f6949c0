"""Training inside QGIS: no Lightning deprecation warning lands in the QGIS log.

QGIS logs every Python warning with a traceback (``qgis.utils.showWarning``). Lightning
2.6 builds the tree spec of every batch with torch's deprecated ``LeafSpec()``; loading
the training module silences exactly that warning.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

BATCH = """
import cloudseg.training.train
from lightning.pytorch.utilities._pytree import _tree_flatten
_tree_flatten([1, 2])  # what Lightning's loops do with each batch
print("flattened")
"""


@pytest.mark.slow
def test_a_batch_raises_no_leafspec_deprecation_warning():
    run = subprocess.run(
        [sys.executable, "-W", "always", "-c", BATCH], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0 and "flattened" in run.stdout, run.stderr
    assert "LeafSpec" not in run.stderr, run.stderr


@pytest.mark.slow
def test_other_future_warnings_are_still_shown():
    code = "import warnings, cloudseg.training.train\nwarnings.warn('kept', FutureWarning)\n"
    run = subprocess.run(
        [sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, timeout=300
    )
    assert "FutureWarning: kept" in run.stderr

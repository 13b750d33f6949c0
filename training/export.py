"""Export a trained model (``model.pt``) to ONNX with its model card embedded.

The ONNX file has a dynamic batch axis and the card in its metadata, so
``cloudseg segment --model FILE`` and the QGIS plugin take it as it is. Before the file
is published, onnxruntime's output is compared with torch's on the same inputs; a
difference above the tolerance fails the export and leaves no file.

The export uses torch's TorchScript-based exporter (``dynamo=False``): it needs no
extra package, and smp's networks export with it cleanly at opset 17.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..backend.atomic import atomic_path, check_outputs, claim
from ..backend.errors import ModelError
from ..backend.models.cards import ModelCard
from ..backend.models.networks import load_torch_network
from ..backend.models.registry import Model, embed_onnx_card, read_torch_card

PARITY_TOLERANCE = 1e-3


@dataclass
class ExportResult:
    """The exported file and how closely it matches torch."""

    path: Path
    card: ModelCard
    max_abs_diff: float
    batch_sizes: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        """Return the result as JSON-serialisable data."""
        return {
            "path": str(self.path),
            "model": self.card.name,
            "max_abs_diff": self.max_abs_diff,
            "batch_sizes": list(self.batch_sizes),
        }


def load_checkpoint(path: str | Path) -> tuple[Any, ModelCard]:
    """Load a cloudseg torch model (``model.pt``): the network in eval mode and its card.

    Raises:
        ModelError: If the file is missing, has no card, or its weights do not fit.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"no model file {path}")
    model = Model(read_torch_card(path), path)
    return load_torch_network(model), model.card


def export_onnx(
    checkpoint: str | Path,
    output: str | Path,
    opset: int = 17,
    overwrite: bool = False,
    tolerance: float = PARITY_TOLERANCE,
) -> ExportResult:
    """Export ``checkpoint`` to ONNX at ``output`` and check it against torch.

    Args:
        checkpoint: A ``model.pt`` written by ``cloudseg train``.
        output: The ``.onnx`` file to write.
        opset: ONNX opset.
        overwrite: Replace an existing file.
        tolerance: Largest allowed max-abs difference of the logits.

    Returns:
        An :class:`ExportResult` with the measured difference.

    Raises:
        OutputExistsError: If ``output`` exists and ``overwrite`` is False.
        ModelError: If the parity check fails (nothing is written then).
    """
    import onnxruntime as ort
    import torch

    output = check_outputs(
        {"OUTPUT": output}, [Path(checkpoint)], overwrite, {"OUTPUT": (".onnx",)}
    )["OUTPUT"]
    network, card = load_checkpoint(checkpoint)
    size = card.tile_size
    example = torch.zeros(1, len(card.bands), size, size)
    with claim([output]), atomic_path(output) as partial:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                network,
                (example,),
                str(partial),
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=opset,
                dynamo=False,
            )
        embed_onnx_card(partial, replace(card, format="onnx"))
        session = ort.InferenceSession(str(partial), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        worst = 0.0
        batches = (1, 3)
        for batch in batches:
            x = rng.standard_normal((batch, len(card.bands), size, size)).astype(np.float32)
            (onnx_out,) = session.run(None, {"input": x})
            with torch.inference_mode():
                torch_out = network(torch.from_numpy(x)).numpy()
            worst = max(worst, float(np.abs(onnx_out - torch_out).max()))
        if worst > tolerance:
            raise ModelError(
                f"ONNX export of {card.name} differs from torch by {worst:.2e} "
                f"(> {tolerance:.0e}); not written"
            )
    return ExportResult(output, replace(card, format="onnx"), worst, batches)

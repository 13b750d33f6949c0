"""The import of the real cloud models for fine-tuning, and class helpers for training.

Networks are built by the backend's one factory
(:func:`cloudseg.backend.models.networks.create_network`). ``import_onnx_unet`` loads
the weights of a built-in ukis-csmask ONNX model into the matching smp U-Net
(EfficientNet-B4 encoder), optionally for other bands or classes, so that fine-tuning
starts from a real cloud model rather than from random weights (no pretrained weights
can be downloaded where our users often work).

The ukis-csmask graphs hold float16 weights and compute in float16; the imported network
computes in float32. It reproduces onnxruntime running the same graph in float32 to about
3e-5 on real inputs; against the float16 graph the difference is that graph's own
rounding (see :func:`cloudseg.backend.inference.onnxgraph.onnx_as_float32`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend.errors import BandError, ModelError
from ..backend.models.cards import ClassInfo, ModelCard
from ..backend.models.networks import create_network, load_state, onnx_weights, torch_importable
from ..backend.models.registry import load_model
from ..backend.raster.bands import canonical_band


def import_onnx_unet(
    model: str,
    bands: list[str] | None = None,
    classes: int | None = None,
) -> tuple[Any, ModelCard]:
    """Load a built-in ukis-csmask ONNX model into an smp U-Net (EfficientNet-B4).

    Args:
        model: Built-in model name (``ukis-csmask-4b-l1c``) or ONNX file with a card.
        bands: Input bands of the new network; a band the source model has keeps its
            first-layer weights, a new band starts from their mean. Default: the card's.
        classes: Output classes; when it differs from the card's, the segmentation head
            starts anew (the encoder and decoder keep their weights).

    Returns:
        The network (float32, eval mode) and the source model's card.

    Raises:
        ModelError: If the file is not such a model or its weights do not fit.
        BandError: For an unknown band name.
    """
    source = load_model(model)
    card = source.card
    if source.path.suffix.lower() != ".onnx":
        raise ModelError(f"{model}: expected an ONNX model, got {source.path.name}")
    arch = card.architecture
    if not torch_importable(card):
        raise ModelError(f"{card.name} is not an smp U-Net with an EfficientNet encoder")
    bands = [canonical_band(b) for b in (bands or card.bands)]
    n_classes = classes or len(card.classes)
    weights = onnx_weights(source.path)
    network = create_network("Unet", len(bands), n_classes, encoder=arch["encoder"])
    stem_key = "encoder._conv_stem.weight"
    stem = weights.get(stem_key)
    if stem is None:
        raise ModelError(f"{source.path} does not hold smp U-Net weights ({stem_key} missing)")
    mean_kernel = stem.mean(axis=1)
    weights[stem_key] = np.stack(
        [stem[:, card.bands.index(b)] if b in card.bands else mean_kernel for b in bands], axis=1
    )
    if n_classes != len(card.classes):
        weights = {k: v for k, v in weights.items() if not k.startswith("segmentation_head.")}
    load_state(network, weights, f"{source.path.name} into Unet/{arch['encoder']}")
    return network.eval(), card


def class_infos(classes: list[dict[str, Any]]) -> tuple[ClassInfo, ...]:
    """Turn store classes (value, name[, color]) into card classes, with default colors."""
    palette = ["#2e7d3200", "#00e5ff", "#b2ebf2", "#7b1fa2", "#ff9800", "#795548", "#9e9e9e"]
    return tuple(
        ClassInfo(i, c["name"], c.get("color") or palette[i % len(palette)])
        for i, c in enumerate(classes)
    )


def check_bands(wanted: list[str], available: list[str], where: str) -> list[int]:
    """Return the indexes of ``wanted`` bands in ``available``.

    Raises:
        BandError: Naming the missing bands and what is there.
    """
    wanted = [canonical_band(b) for b in wanted]
    missing = [b for b in wanted if b not in available]
    if missing:
        raise BandError(
            f"{where} lacks band(s) {', '.join(missing)}; it has {', '.join(available)}"
        )
    return [available.index(b) for b in wanted]

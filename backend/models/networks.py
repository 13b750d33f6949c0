"""Torch networks for model cards: built from a card, loaded from a checkpoint, or imported.

Three ways to a ``torch.nn.Module`` that the engine, training and export share:
:func:`build_network` (the architecture a card names, no weights; the one factory,
:func:`create_network`, is also what training builds new models with),
:func:`load_torch_network` (a cloudseg torch checkpoint) and :func:`network_from_onnx`
(the weights of an ONNX file exported from segmentation-models-pytorch, such as the
built-in ukis-csmask U-Nets, loaded into the same smp network). The import is what
lets the built-in models run on a CUDA GPU through torch: onnxruntime's CUDA build is
a separate, large package tied to one CUDA version, while torch brings CUDA with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError
from .cards import ModelCard
from .registry import Model, load_checkpoint

# The EfficientNet classification head stays in smp's encoder but is never run, so the
# exported graphs do not hold it.
UNUSED_ENCODER_HEAD = ("encoder._conv_head.", "encoder._bn1.")


#: Architectures training offers (smp's spelling), each with a sensible default encoder
#: (Segformer's own Mix Transformer; resnet34 elsewhere). A card may name any other
#: architecture segmentation-models-pytorch knows.
ARCHITECTURES: dict[str, str] = {
    "Unet": "resnet34",
    "UnetPlusPlus": "resnet34",
    "FPN": "resnet34",
    "DeepLabV3Plus": "resnet34",
    "PSPNet": "resnet34",
    "Segformer": "mit_b0",
}


def architecture_name(name: str) -> str:
    """Return the canonical spelling of an architecture name (case-insensitive).

    Raises:
        ModelError: For an unknown name, listing the valid ones.
    """
    for known in ARCHITECTURES:
        if known.lower() == name.lower().replace("-", "").replace("_", ""):
            return known
    raise ModelError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")


def create_network(
    architecture: str, in_channels: int, classes: int, encoder: str | None = None
) -> Any:
    """Build a segmentation-models-pytorch network with random weights: the one factory.

    Args:
        architecture: One of :data:`ARCHITECTURES` (any case), or another architecture
            smp knows.
        in_channels: Number of input bands.
        classes: Number of output classes.
        encoder: smp encoder name; the architecture's default when None.

    Returns:
        The ``torch.nn.Module``; it returns logits of shape (N, classes, H, W).

    Raises:
        ModelError: For an unknown architecture or encoder, listing valid names.
    """
    import segmentation_models_pytorch as smp

    try:
        arch = architecture_name(architecture)
    except ModelError:
        if architecture.lower() not in smp.MODEL_ARCHITECTURES_MAPPING:
            raise
        arch = architecture
    encoder = encoder or ARCHITECTURES.get(arch, "resnet34")
    if encoder not in smp.encoders.get_encoder_names():
        raise ModelError(
            f"unknown encoder {encoder!r}; e.g. resnet18, resnet34, efficientnet-b4, "
            "mit_b0 (all: segmentation_models_pytorch.encoders.get_encoder_names())"
        )
    if in_channels < 1 or classes < 2:
        raise ModelError("a model needs at least 1 input band and 2 classes")
    return smp.create_model(
        arch, encoder_name=encoder, encoder_weights=None, in_channels=in_channels, classes=classes
    )


def build_network(card: ModelCard) -> Any:
    """Create the network a card describes (random weights), with :func:`create_network`.

    Raises:
        ModelError: If the card's architecture or encoder is not one smp knows.
    """
    try:
        return create_network(
            card.architecture.get("name", ""),
            len(card.bands),
            len(card.classes),
            card.architecture.get("encoder"),
        )
    except ModelError as exc:
        raise ModelError(f"model {card.name}: {exc}") from exc


def load_torch_network(model: Model) -> Any:
    """Build a torch checkpoint's network from its card and load its weights (CPU, eval).

    Raises:
        ModelError: If the file holds no state dict or the weights do not fit the card.
    """
    checkpoint = load_checkpoint(model.path)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ModelError(f"{model.path}: expected a state dict (or {{'state_dict': ...}})")
    network = build_network(model.card)
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(
            f"{model.path}: weights do not fit {model.card.name}'s "
            f"architecture: {str(exc).splitlines()[0]}"
        ) from exc
    return network.eval()


def onnx_weights(path: str | Path) -> dict[str, np.ndarray]:
    """Read an smp-exported ONNX file's weights as float32 arrays keyed by state-dict name."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    weights = {}
    for init in proto.graph.initializer:
        name = init.name.removeprefix("model.")
        weights[name] = numpy_helper.to_array(init).astype(np.float32)
    return weights


def torch_importable(card: ModelCard) -> bool:
    """Whether :func:`network_from_onnx` can load this ONNX model into torch."""
    arch = card.architecture
    return (
        card.format == "onnx"
        and arch.get("framework", "segmentation-models-pytorch") == "segmentation-models-pytorch"
        and arch.get("name") == "Unet"
        and str(arch.get("encoder", "")).startswith("efficientnet")
    )


def load_state(network: Any, weights: dict[str, np.ndarray], where: str) -> None:
    """Load ONNX weights into an smp network; heads it never ran may stay missing.

    Raises:
        ModelError: If weights are left over or a needed weight is missing.
    """
    import torch

    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()}
    result = network.load_state_dict(state, strict=False)
    unexpected = list(result.unexpected_keys)
    missing = [
        k
        for k in result.missing_keys
        if not k.endswith("num_batches_tracked")
        and not k.startswith(("segmentation_head.", *UNUSED_ENCODER_HEAD))
    ]
    if unexpected or missing:
        raise ModelError(
            f"{where}: weights do not fit the network "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )


def network_from_onnx(model: Model) -> Any:
    """Load an smp U-Net exported to ONNX (the built-in models) into torch, float32, eval.

    Against onnxruntime running the same graph in float32 the logits differ by about
    3e-5 on real inputs.

    Raises:
        ModelError: If the card names another architecture or the weights do not fit.
    """
    if not torch_importable(model.card):
        raise ModelError(
            f"model {model.card.name} cannot run in torch: only ONNX exports of smp U-Nets "
            "with an EfficientNet encoder can be imported"
        )
    network = build_network(model.card)
    weights = onnx_weights(model.path)
    if "segmentation_head.0.weight" not in weights:
        raise ModelError(f"{model.path.name} does not hold smp U-Net weights")
    load_state(network, weights, model.path.name)
    return network.eval()


def torch_network(model: Model) -> Any:
    """The model as a float32 torch network in eval mode: a checkpoint, or an ONNX import.

    Raises:
        ModelError: If the model cannot run in torch (see :func:`network_from_onnx`).
    """
    return network_from_onnx(model) if model.card.format == "onnx" else load_torch_network(model)

"""Segmentation losses; every one of them ignores the pixels labeled ``ignore_index``.

The terms come from segmentation-models-pytorch (focal, dice, Lovasz) and torch
(cross-entropy); this module only combines them and checks the names.
"""

from __future__ import annotations

from typing import Any

import torch

from ..backend.errors import InputError

LOSSES = ("focal_dice", "cross_entropy", "dice", "lovasz")


def create_loss(
    name: str,
    ignore_index: int = 255,
    class_weights: list[float] | None = None,
    focal_weight: float = 0.25,
    dice_weight: float = 0.75,
) -> Any:
    """Return a loss module ``(logits (N,C,H,W), target (N,H,W) int64) -> scalar``.

    Args:
        name: One of :data:`LOSSES`.
        ignore_index: Target value that contributes nothing.
        class_weights: Per-class weights (``cross_entropy`` only).
        focal_weight: Weight of the focal term of ``focal_dice``.
        dice_weight: Weight of the dice term of ``focal_dice``.

    Raises:
        InputError: For an unknown name, or class weights with another loss.
    """
    from segmentation_models_pytorch import losses

    if name not in LOSSES:
        raise InputError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    if class_weights and name != "cross_entropy":
        raise InputError("class_weights apply to the cross_entropy loss only")
    if name == "cross_entropy":
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        return torch.nn.CrossEntropyLoss(weight=weight, ignore_index=ignore_index)
    if name == "dice":
        return losses.DiceLoss("multiclass", ignore_index=ignore_index)
    if name == "lovasz":
        return losses.LovaszLoss("multiclass", ignore_index=ignore_index)
    return WeightedSum(
        [
            (focal_weight, losses.FocalLoss("multiclass", ignore_index=ignore_index)),
            (dice_weight, losses.DiceLoss("multiclass", ignore_index=ignore_index)),
        ]
    )


class WeightedSum(torch.nn.Module):
    """A weighted sum of losses (focal + dice by default)."""

    def __init__(self, terms: list[tuple[float, Any]]) -> None:
        super().__init__()
        self.weights = [w for w, _ in terms]
        self.terms = torch.nn.ModuleList([t for _, t in terms])

    def forward(self, logits: Any, target: Any) -> Any:
        """Return the weighted sum of the terms."""
        return sum(w * t(logits, target) for w, t in zip(self.weights, self.terms, strict=True))

"""Augmentations of (image, mask) batches with kornia, on the device the batch is on.

Flips and 90-degree rotations move image and mask together (exactly: no interpolation,
so ignore values survive); brightness and contrast jitter change the image only. The
images are normalized reflectance of any band count, so nothing is clipped to 0-1.
"""

from __future__ import annotations

from typing import Any


def make_augmentation(strength: float = 0.1) -> Any:
    """Return a callable ``(images (N,C,H,W), masks (N,H,W) int64) -> (images, masks)``.

    Args:
        strength: Brightness shift and contrast factor range (+- this much).
    """
    import kornia.augmentation as K  # noqa: N812 (kornia's own convention)
    import torch

    pipeline = K.AugmentationSequential(
        K.RandomHorizontalFlip(p=0.5),
        K.RandomVerticalFlip(p=0.5),
        K.RandomRotation90(times=(0, 3), p=1.0),
        K.RandomBrightness((1 - strength, 1 + strength), clip_output=False, p=0.5),
        K.RandomContrast((1 - strength, 1 + strength), clip_output=False, p=0.5),
        data_keys=["input", "mask"],
    )

    def augment(images: Any, masks: Any) -> tuple[Any, Any]:
        out_images, out_masks = pipeline(images, masks.unsqueeze(1).to(images.dtype))
        return out_images, out_masks.squeeze(1).round().to(torch.int64)

    return augment

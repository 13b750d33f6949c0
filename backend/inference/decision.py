"""The class decision: blended probabilities in, a class raster out.

Every place that turns the model's probabilities into classes calls :func:`decide`:
the files ``segment`` (and so ``segment-batch``) writes, the in-memory
:meth:`cloudseg.backend.inference.engine.Prediction.classes` (evaluation, active
learning), and the pixels an explanation's score counts as the class's. So a mask,
its metrics and its explanation always agree on what is cloud.

By default a pixel takes the class of highest probability (argmax). ``cloud_threshold``
makes every pixel whose cloud probability reaches it cloud, and no other pixel (lower
for a timid model, higher for an eager one); ``shadow_threshold`` does the same for
shadow among the pixels that are not cloud; the other pixels take the most probable of
the remaining classes. Several classes of a kind (thick and thin cloud) count together
against the threshold, and the most probable of them is taken.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError
from ..models.cards import class_kind
from .resample import argmax_classes

#: Class raster value of pixels without data.
NODATA = 255


def unusable_classes(classes: list[Any]) -> dict[int, str]:
    """Class value -> ``cloud`` or ``shadow`` for every class that makes a pixel unusable.

    Cloud classes (thick, thin, cloud) are what the cloud threshold and the cloud buffer
    apply to, shadow classes the shadow ones; ``clear`` and land-cover classes (snow,
    water) are usable.
    """
    return {c.value: kind for c in classes if (kind := class_kind(c.name))}


def decide(
    probs: np.ndarray,
    classes: list[Any],
    cloud_threshold: float | None = None,
    shadow_threshold: float | None = None,
    nodata: np.ndarray | None = None,
) -> np.ndarray:
    """Classes from blended probabilities (see the module's documentation).

    Args:
        probs: ``(classes, ...)`` probabilities (class first; any shape after it).
        classes: The model card's classes (their names say which are cloud and shadow).
        cloud_threshold: Cloud probability from which a pixel is cloud; None: argmax.
        shadow_threshold: Shadow probability from which a pixel that is not cloud is
            shadow; None: argmax.
        nodata: Pixels without data, which become :data:`NODATA`; None: every pixel
            has data.

    Returns:
        uint8 class values of shape ``probs.shape[1:]``. Without thresholds this is the
        argmax, exactly (ties go to the lower class).
    """
    if cloud_threshold is None and shadow_threshold is None:
        result = argmax_classes(probs)
    else:
        result = _thresholded(probs, classes, cloud_threshold, shadow_threshold)
    if nodata is not None:
        result[nodata] = NODATA
    return result


def _thresholded(
    probs: np.ndarray,
    classes: list[Any],
    cloud_threshold: float | None,
    shadow_threshold: float | None,
) -> np.ndarray:
    kinds = unusable_classes(classes)
    cloud = [v for v, k in kinds.items() if k == "cloud"]
    shadow = [v for v, k in kinds.items() if k == "shadow"]
    scores = probs.astype(np.float32, copy=True)
    taken = np.zeros(probs.shape[1:], dtype=bool)
    result = np.zeros(probs.shape[1:], dtype=np.uint8)
    if cloud_threshold is None and cloud:  # cloud as the argmax says; shadow among the rest
        best = argmax_classes(probs)
        taken = np.isin(best, cloud)
        result[taken] = best[taken]
        scores[cloud] = -1.0
    for values, threshold in ((cloud, cloud_threshold), (shadow, shadow_threshold)):
        if threshold is None or not values:
            continue
        chosen = (scores[values].sum(axis=0) >= threshold) & ~taken
        # Several classes of the kind (thick, thin cloud): the most probable of them.
        kind_best = np.asarray(values, dtype=np.uint8)[scores[values].argmax(axis=0)]
        result[chosen] = kind_best[chosen]
        taken |= chosen
        scores[values] = -1.0  # never chosen by the argmax below
    rest = scores.argmax(axis=0).astype(np.uint8)
    result[~taken] = rest[~taken]
    return result


def check_threshold(name: str, value: float | None) -> None:
    """Refuse a threshold outside (0, 1].

    Raises:
        InputError: With the valid range.
    """
    if value is not None and not 0.0 < value <= 1.0:
        raise InputError(f"{name} {value}: give a probability above 0 and at most 1")

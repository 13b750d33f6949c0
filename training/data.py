"""Windows over an ingested store for training: split, class mapping, sampling.

Windows are read lazily through :func:`cloudseg.backend.store.dataset.open_dataset`, so a
window touches only the Zarr chunks under it, from a folder or from S3. Masks are read
once per scene to know each window's cloud fraction (one byte per pixel; the imagery is
not touched); images are read only when a window is drawn.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend.errors import InputError
from ..backend.models.cards import class_kind, normalize
from ..backend.store.dataset import StoredDataset
from ..backend.store.keys import IGNORE
from .config import DataConfig, LabelQualityConfig, SplitConfig
from .models import check_bands


def map_classes(
    source: list[dict[str, Any]], target: list[str], explicit: dict[str, str | None] | None = None
) -> dict[int, int]:
    """Map source class values to target class values by name.

    A source class goes to the target class of the same name, else to the longest target
    name it contains (``thick cloud`` -> ``cloud``, ``cloud shadow`` -> ``cloud shadow``).
    ``explicit`` overrides by name (None: ignore the class).

    Returns:
        Source value -> target value; unmapped source classes are left out (ignored).

    Raises:
        InputError: If ``explicit`` names an unknown class.
    """
    explicit = explicit or {}
    names = {c["name"]: int(c["value"]) for c in source}
    for key, value in explicit.items():
        if key not in names or (value is not None and value not in target):
            raise InputError(
                f"class_map {key!r} -> {value!r}: source classes are {', '.join(names)}; "
                f"model classes are {', '.join(target)}"
            )
    mapping = {}
    for name, value in names.items():
        if name in explicit:
            chosen = explicit[name]
        elif name in target:
            chosen = name
        else:
            inside = [t for t in target if t in name]
            chosen = max(inside, key=len) if inside else None
        if chosen is not None:
            mapping[value] = target.index(chosen)
    return mapping


def parse_class_map(pairs: list[str]) -> dict[str, str | None]:
    """Parse ``["thin cloud=cloud", "haze="]`` into a class map (empty target: ignore).

    Raises:
        InputError: For an item without ``=``.
    """
    mapping: dict[str, str | None] = {}
    for pair in pairs:
        source, sep, target = pair.partition("=")
        if not sep:
            raise InputError(f"class map {pair!r}: write SOURCE=TARGET (empty TARGET ignores)")
        mapping[source.strip()] = target.strip() or None
    return mapping


def lookup_table(mapping: dict[int, int], ignore: int = IGNORE) -> np.ndarray:
    """Return a 256-entry uint8 table applying ``mapping``; everything else -> ``ignore``."""
    table = np.full(256, ignore, dtype=np.uint8)
    for source, target in mapping.items():
        table[source] = target
    return table


def scene_group(scene: str, group_pattern: str | None) -> str:
    """The group (place) of a scene: the first match of ``group_pattern``, else the scene."""
    found = re.search(group_pattern, scene) if group_pattern else None
    return found.group(0) if found else scene


def split_scenes(scenes: list[str], split: SplitConfig, seed: int) -> tuple[list[str], list[str]]:
    """Split scene ids into (train, validation), keeping each group on one side.

    Raises:
        InputError: If a named scene or group is unknown or one side ends up empty.
    """

    def group(scene: str) -> str:
        return scene_group(scene, split.group_pattern)

    groups = sorted({group(s) for s in scenes})
    unknown = [s for s in split.val_scenes if s not in scenes] + [
        g for g in split.val_groups if g not in groups
    ]
    if unknown:
        raise InputError(
            f"split names unknown scene(s) or group(s) {', '.join(unknown)}; "
            f"groups are {', '.join(groups)}"
        )
    if split.val_scenes or split.val_groups:
        val_groups = {group(s) for s in split.val_scenes} | set(split.val_groups)
    else:
        count = max(1, round(len(groups) * split.val_fraction))
        val_groups = set(random.Random(seed).sample(groups, min(count, len(groups) - 1)))
    val = [s for s in scenes if group(s) in val_groups]
    train = [s for s in scenes if group(s) not in val_groups]
    if not train or not val:
        raise InputError(
            f"the split leaves {len(train)} training and {len(val)} validation scenes; "
            "a run needs both (ingest more scenes or name val_groups)"
        )
    return train, val


#: A window of a scene: (row, col, height, width) in pixels.
Box = tuple[int, int, int, int]
#: Review decisions (``cloudseg:label_review``) that take a window out of training.
REMOVED = ("dropped", "corrected")
ACTIONS = ("keep", "exclude", "down_weight")
LEVELS = ("scene", "window")


@dataclass
class SceneLabels:
    """How training uses one scene's labels, from its label check and label review.

    Attributes:
        ignored: Windows never trained on (dropped or corrected in review, or flagged
            under ``exclude`` at window level): their pixels count as unlabeled.
        weighted: Windows drawn ``weight`` times as often (``down_weight``, window level).
        weight: Sampling weight of the whole scene (``down_weight``, scene level).
        excluded: The scene is left out (``exclude``, scene level).
    """

    ignored: list[Box]
    weighted: list[Box]
    weight: float = 1.0
    excluded: bool = False


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def scene_labels(properties: dict[str, Any], policy: LabelQualityConfig) -> SceneLabels:
    """Apply ``policy`` to a scene's ``cloudseg:label_quality`` and ``cloudseg:label_review``.

    Raises:
        InputError: For an unknown action or level, or a weight outside 0-1.
    """
    if policy.action not in ACTIONS:
        raise InputError(f"label_quality.action {policy.action!r}: use {', '.join(ACTIONS)}")
    if policy.level not in LEVELS:
        raise InputError(f"label_quality.level {policy.level!r}: use {', '.join(LEVELS)}")
    if not 0.0 <= policy.weight <= 1.0:
        raise InputError(f"label_quality.weight {policy.weight}: give a value from 0 to 1")
    reviews = properties.get("cloudseg:label_review", [])
    ignored = [tuple(r["window"]) for r in reviews if r["decision"] in REMOVED]
    accepted = [tuple(r["window"]) for r in reviews if r["decision"] == "accepted"]
    quality = properties.get("cloudseg:label_quality")
    result = SceneLabels(ignored, [])
    if policy.action == "keep" or not quality:
        return result
    limit = policy.max_flagged_share
    if limit is None:
        limit = quality.get("limit", 0.1)
    flagged = [
        tuple(w["window"])
        for w in quality.get("windows", [])
        if w["flagged_share"] > limit and tuple(w["window"]) not in accepted
        and tuple(w["window"]) not in ignored
    ]  # fmt: skip
    if policy.level == "scene":
        # A scene whose flagged windows were all reviewed (accepted or fixed) is trusted.
        if quality["flagged_share"] > limit and (flagged or not quality.get("windows")):
            result.excluded = policy.action == "exclude"
            result.weight = policy.weight if policy.action == "down_weight" else 1.0
        return result
    if policy.action == "exclude":
        result.ignored += flagged
    else:
        result.weighted = flagged
    return result


def usable_scenes(
    dataset: StoredDataset, config: DataConfig
) -> tuple[list[str], dict[str, SceneLabels]]:
    """The scenes training may use (``config.scenes`` or all, less excluded ones).

    Returns:
        The scene ids, and how each one's labels are used.

    Raises:
        InputError: For a named scene the store lacks, or when nothing is left.
    """
    stored = dataset.scenes()
    missing = [s for s in config.scenes if s not in stored]
    if missing:
        raise InputError(f"data.scenes names scene(s) not in the store: {', '.join(missing)}")
    labels = {}
    for scene in config.scenes or stored:
        props = dataset.item(scene).properties
        labels[scene] = scene_labels(props, config.label_quality)
    kept = [s for s, use in labels.items() if not use.excluded]
    if not kept:
        raise InputError("label_quality excludes every scene; use down_weight or a higher limit")
    return kept, labels


@dataclass(frozen=True)
class Window:
    """One candidate window: scene, top-left corner, and its label statistics."""

    scene: str
    row: int
    col: int
    cloud_fraction: float
    labeled_fraction: float


def _starts(length: int, window: int, stride: int) -> list[int]:
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


class WindowDataset:
    """A map-style torch dataset of windows: ``(image float32 (C,h,w), mask int64 (h,w))``.

    Images are scaled to reflectance and normalized; masks are mapped to model classes
    with everything else set to the ignore value. Scenes smaller than a window are padded
    with ignored pixels.
    """

    def __init__(
        self,
        dataset: StoredDataset,
        scenes: list[str],
        config: DataConfig,
        classes: list[str],
        mean: np.ndarray,
        std: np.ndarray,
        labels: dict[str, SceneLabels] | None = None,
    ) -> None:
        """Index the candidate windows of ``scenes``.

        ``labels`` says, per scene, which windows are not trained on and which are drawn
        less often (:func:`usable_scenes`); every label is used as stored when None.

        Raises:
            InputError: If a band is missing or no window holds labeled pixels.
        """
        self.dataset = dataset
        self.config = config
        self.window = config.window
        self.band_index = check_bands(
            config.bands or dataset.bands, dataset.bands, dataset.storage.url
        )
        self.table = lookup_table(
            map_classes(dataset.classes, classes, config.class_map), config.ignore_index
        )
        self.cloud_values = [i for i, name in enumerate(classes) if class_kind(name) == "cloud"]
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        stride = config.stride or max(1, config.window // 2)
        windows = []
        self.labels = labels or {}
        weights = []
        for scene in scenes:
            mask = dataset.read_mask(scene)  # the imagery is read per window, when drawn
            mask = self._ignore_removed(scene, self.table[mask], 0, 0)
            use = self.labels.get(scene, SceneLabels([], []))
            rows, cols = mask.shape
            for row in _starts(rows, self.window, stride):
                for col in _starts(cols, self.window, stride):
                    part = mask[row : row + self.window, col : col + self.window]
                    labeled = part != config.ignore_index
                    n = int(labeled.sum())
                    if n == 0:
                        continue
                    cloud = int(np.isin(part[labeled], self.cloud_values).sum())
                    windows.append(Window(scene, row, col, cloud / n, n / part.size))
                    box = (row, col, self.window, self.window)
                    down = any(_overlaps(box, w) for w in use.weighted)
                    weights.append(use.weight * (self.config.label_quality.weight if down else 1))
        if not windows:
            raise InputError(f"no labeled {self.window}-pixel window in scenes {', '.join(scenes)}")
        self.windows = windows
        self.weights = np.array(weights, dtype=np.float64)

    def _ignore_removed(self, scene: str, mask: np.ndarray, row: int, col: int) -> np.ndarray:
        """``mask`` (read at ``row, col``) with the scene's removed windows unlabeled."""
        use = self.labels.get(scene)
        if not use or not use.ignored:
            return mask
        mask = mask.copy()
        for r, c, h, w in use.ignored:
            r0, c0 = max(r - row, 0), max(c - col, 0)
            r1, c1 = min(r + h - row, mask.shape[0]), min(c + w - col, mask.shape[1])
            if r1 > r0 and c1 > c0:
                mask[r0:r1, c0:c1] = self.config.ignore_index
        return mask

    def __len__(self) -> int:
        """Number of candidate windows."""
        return len(self.windows)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        """Read one window (only the chunks under it)."""
        import torch

        w = self.windows[index]
        rows, cols = self.dataset.shape(w.scene)
        h, wd = min(self.window, rows), min(self.window, cols)
        image, mask = self.dataset.read(w.scene, (w.row, w.col, h, wd))
        image = image[self.band_index].astype(np.float32) * self.config.scale
        image = normalize(image, self.mean, self.std)
        mask = self._ignore_removed(w.scene, self.table[mask], w.row, w.col)
        if (h, wd) != (self.window, self.window):
            pad = ((0, self.window - h), (0, self.window - wd))
            image = np.pad(image, ((0, 0), *pad))
            mask = np.pad(mask, pad, constant_values=self.config.ignore_index)
        image = np.nan_to_num(image, nan=0.0)
        return torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(
            mask.astype(np.int64)
        )

    def cloud_fractions(self) -> np.ndarray:
        """Cloud fraction of each window's labeled pixels."""
        return np.array([w.cloud_fraction for w in self.windows])


CLOUD_BINS = (0.0, 0.01, 0.3, 0.7, 0.99, 1.0)


def balanced_weights(cloud_fractions: np.ndarray) -> np.ndarray:
    """Sampling weights that give each cloud-fraction bin the same share.

    Bins: clear (< 1 %), low (< 30 %), mid (< 70 %), high (< 99 %), overcast. Without
    this, cloud-free and overcast windows (most of any archive) dominate training.
    """
    bins = np.digitize(cloud_fractions, CLOUD_BINS[1:-1])
    counts = np.bincount(bins, minlength=len(CLOUD_BINS) - 1).astype(np.float64)
    return 1.0 / counts[bins]


def make_sampler(dataset: WindowDataset, kind: str, num_samples: int, seed: int) -> Any:
    """Return the torch sampler for ``kind`` (``balanced`` or ``random``).

    Both draw ``num_samples`` windows with replacement: ``random`` uniformly over all
    candidate windows, ``balanced`` weighted by :func:`balanced_weights`; both times the
    dataset's label-quality weights (down-weighted flagged scenes or windows).

    Raises:
        InputError: For an unknown kind.
    """
    import torch
    from torch.utils.data import RandomSampler, WeightedRandomSampler

    generator = torch.Generator().manual_seed(seed)
    quality = dataset.weights
    if kind == "random":
        if (quality == 1).all():
            return RandomSampler(
                dataset, replacement=True, num_samples=num_samples, generator=generator
            )
        weights = torch.from_numpy(quality.copy())
        return WeightedRandomSampler(weights, num_samples, replacement=True, generator=generator)
    if kind == "balanced":
        weights = torch.from_numpy(balanced_weights(dataset.cloud_fractions()) * quality)
        return WeightedRandomSampler(weights, num_samples, replacement=True, generator=generator)
    raise InputError(f"unknown sampler {kind!r}; use balanced or random")


def store_normalization(
    dataset: StoredDataset, scenes: list[str], bands: list[str], scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of reflectance per band over ``scenes`` (pooled).

    Uses the per-scene band statistics that ingestion wrote into the STAC Items, so no
    pixel is read.
    """
    means, variances, weights = [], [], []
    for scene in scenes:
        item = dataset.item(scene)
        stats = item.properties["cloudseg:band_stats"]
        rows, cols = item.properties["proj:shape"]
        means.append([stats[b]["mean"] * scale for b in bands])
        variances.append([(stats[b]["std"] * scale) ** 2 for b in bands])
        weights.append(rows * cols)
    m, v, w = np.array(means), np.array(variances), np.array(weights, dtype=np.float64)[:, None]
    mean = (m * w).sum(0) / w.sum()
    var = ((v + (m - mean) ** 2) * w).sum(0) / w.sum()
    return mean.astype(np.float32), np.sqrt(np.maximum(var, 1e-12)).astype(np.float32)

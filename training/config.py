"""The training configuration: one YAML file, saved beside the checkpoints it produced.

Example (``docs/train-cloudsen12.yaml`` is a complete one)::

    name: cloudsen12-rgb
    data:
      store: runs/store            # or s3://bucket/prefix (with endpoint_url)
      bands: [B02, B03, B04]
      classes: [clear, cloud, cloud shadow]
      split: {group_pattern: "^[^-]+", val_groups: [ROI_2507]}
    model:
      architecture: Unet
      encoder: efficientnet-b4
      init: ukis-csmask-4b-l1c     # start from a real cloud model
    train:
      epochs: 20
      batch_size: 8
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backend.errors import InputError

CONFIG_NAME = "config.yaml"


@dataclass
class SplitConfig:
    """How scenes are split into training and validation (by scene, never by tile).

    Attributes:
        val_scenes: Scene ids for validation; when empty, groups are drawn.
        val_groups: Groups (see ``group_pattern``) for validation.
        group_pattern: Regular expression whose first match in a scene id names the
            scene's group (its place, e.g. ``^[^-]+`` for ``ROI_2507-cloudy``); scenes of
            one group go to the same side. None: each scene is its own group.
        val_fraction: Share of groups drawn for validation when nothing is named.
    """

    val_scenes: list[str] = field(default_factory=list)
    val_groups: list[str] = field(default_factory=list)
    group_pattern: str | None = None
    val_fraction: float = 0.2


@dataclass
class LabelQualityConfig:
    """What training does with labels the label check flagged (``cloudseg labels check``).

    The check writes ``cloudseg:label_quality`` into each scene's STAC Item; the label
    dock's review writes ``cloudseg:label_review``. Reviewed windows always count: a
    window dropped or corrected in review is never trained on (its corrected version is
    a scene of its own), and an accepted window is never treated as flagged.

    Attributes:
        action: ``keep`` (flags are ignored), ``exclude`` (flagged scenes or windows are
            not trained on) or ``down_weight`` (drawn ``weight`` times as often).
        level: ``scene`` (a scene whose flagged share is above ``max_flagged_share``) or
            ``window`` (the check's windows above it).
        max_flagged_share: Share of a scene's or window's labeled pixels flagged above
            which it counts as flagged; None (default) takes the check's own limit
            (10 %, or twice the median share of the scenes it checked if higher).
        weight: Sampling weight of flagged windows under ``down_weight`` (0-1).
    """

    action: str = "keep"
    level: str = "scene"
    max_flagged_share: float | None = None
    weight: float = 0.25


@dataclass
class DataConfig:
    """Where the windows come from and how they are prepared.

    Attributes:
        store: Ingested store (folder or ``s3://bucket/prefix``).
        endpoint_url: S3 endpoint (MinIO); credentials come from the environment or .env.
        bands: Input bands by name; default all bands of the store.
        classes: Model classes by name; default the store's classes. Store classes map
            to them by name (``thick cloud`` -> ``cloud``) unless ``class_map`` says.
        class_map: Store class name -> model class name; None means ignore.
        window: Window edge in pixels.
        stride: Step between candidate windows (default half a window).
        sampler: ``balanced`` (by cloud fraction) or ``random``.
        samples_per_epoch: Windows drawn per training epoch.
        scale: Reflectance per stored value (0.0001 for values x 10000).
        normalization: ``store`` (the store's band statistics), ``card`` (the initial
            model's card) or ``{"mean": [...], "std": [...]}`` on reflectance.
        ignore_index: Mask value excluded from losses and metrics.
        product_level: ``L1C``, ``L2A`` or ``any``, written into the model card.
        resolution_m: Pixel size for the card; default the store's.
        split: The scene split.
        scenes: Scene ids to use (default all of the store's).
        label_quality: Use of the label check's flags and the label review.
    """

    store: str = ""
    endpoint_url: str | None = None
    bands: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    class_map: dict[str, str | None] = field(default_factory=dict)
    window: int = 256
    stride: int | None = None
    sampler: str = "balanced"
    samples_per_epoch: int = 256
    scale: float = 0.0001
    normalization: Any = "store"
    ignore_index: int = 255
    product_level: str = "any"
    resolution_m: float | None = None
    split: SplitConfig = field(default_factory=SplitConfig)
    scenes: list[str] = field(default_factory=list)
    label_quality: LabelQualityConfig = field(default_factory=LabelQualityConfig)


@dataclass
class ModelConfig:
    """The network.

    Attributes:
        architecture: Unet, UnetPlusPlus, FPN, DeepLabV3Plus, PSPNet or Segformer.
        encoder: smp encoder; default per architecture.
        init: None (random), a built-in ONNX model name (ukis-csmask-...) or a cloudseg
            torch checkpoint (``model.pt``) to start from.
    """

    architecture: str = "Unet"
    encoder: str | None = None
    init: str | None = None


@dataclass
class TrainConfig:
    """Optimisation settings.

    Attributes:
        epochs: Maximum epochs.
        batch_size: Windows per step.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        loss: ``focal_dice``, ``cross_entropy``, ``dice`` or ``lovasz``.
        focal_weight: Weight of the focal term in ``focal_dice``.
        dice_weight: Weight of the dice term in ``focal_dice``.
        class_weights: Per-class weights for ``cross_entropy``.
        patience: Epochs without a better validation IoU before stopping.
        augment: Flips, 90-degree rotations, brightness and contrast jitter.
        seed: Seed of everything (weights, sampling, augmentation).
        num_workers: DataLoader worker processes.
        device: ``auto``, ``cpu`` or ``cuda``.
        devices: Devices (GPUs, or CPU processes) per node; more than one trains with
            ``strategy`` (``ddp`` by default).
        num_nodes: Machines taking part (torch distributed; set MASTER_ADDR, MASTER_PORT,
            NODE_RANK on each, or let SLURM / torchrun set them).
        strategy: ``auto`` (one device; DDP when ``devices`` or ``num_nodes`` > 1),
            ``ddp`` or ``ddp_spawn``; any other Lightning strategy name is passed on.
        precision: ``auto`` (bf16 mixed on a GPU, 32 on the CPU) or a Lightning value.
        val_every: Validate every N epochs.
    """

    epochs: int = 20
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 1e-4
    loss: str = "focal_dice"
    focal_weight: float = 0.25
    dice_weight: float = 0.75
    class_weights: list[float] | None = None
    patience: int = 5
    augment: bool = True
    seed: int = 42
    num_workers: int = 0
    device: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"
    val_every: int = 1


@dataclass
class Config:
    """A whole training run: data, model, training and where it goes.

    Attributes:
        name: Model name (in the card and the registry).
        output: Run folder: checkpoints, logs, the config and ``model.pt``.
        data: Data settings.
        model: Network settings.
        train: Optimisation settings.
    """

    name: str = "cloudseg-model"
    output: str = "runs/model"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> Config:
        """Build a config, refusing unknown keys with the valid ones named.

        Raises:
            InputError: For unknown keys or wrong types.
        """
        return _build(cls, data or {}, where)

    @classmethod
    def load(cls, path: str | Path) -> Config:
        """Read a YAML config file.

        Raises:
            InputError: If the file is missing or not a valid config.
        """
        return cls.from_dict(load_yaml(path), str(path))

    def to_dict(self) -> dict[str, Any]:
        """Return the config as plain data."""
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> Path:
        """Write the config as YAML."""
        import yaml

        path = Path(path)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")
        return path


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path``.

    Raises:
        InputError: If the file is missing, not YAML, or not a mapping.
    """
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"no config file {path}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping with data, model and train")
    return data


_SECTIONS = {
    c.__name__: c for c in (SplitConfig, LabelQualityConfig, DataConfig, ModelConfig, TrainConfig)
}


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    """``cls`` (a config dataclass) from ``data``, its sections built the same way.

    Unknown keys are refused with the section's path and valid keys, from the
    dataclasses' own fields: no second list of keys to keep. Not pydantic, which the
    server validates its requests with: pydantic is not in the ``training`` group, which
    the QGIS plugin installs into QGIS's own Python, and one more compiled package there
    (pydantic-core) is not worth these few lines.
    """
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InputError(
            f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(fields)}"
        )
    values = {}
    for name, value in data.items():
        kind = fields[name].type
        nested = _SECTIONS.get(kind)
        values[name] = _build(nested, value, f"{where}: {name}") if nested else value
    try:
        return cls(**values)
    except TypeError as exc:
        raise InputError(f"{where}: {exc}") from exc

"""Train or fine-tune a segmentation model on an ingested store, with PyTorch Lightning.

A run folder holds what a run produced::

    runs/model/
      config.yaml              the config as run (resolved: bands, normalization)
      checkpoints/best.ckpt    best validation IoU (Lightning, resumable)
      checkpoints/last.ckpt    the latest epoch (``--resume`` continues from it)
      logs/metrics.csv         losses, IoU and learning rate per step and epoch
      tensorboard/             the same for TensorBoard
      model.pt                 the best weights with their model card: give it to
                               ``cloudseg segment --model`` or ``cloudseg export``

``model.pt`` is written last, under a temporary name: a run that failed or was
cancelled has no ``model.pt``, only checkpoints to resume from.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning as L  # noqa: N812 (Lightning's own convention)
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..backend._version import __version__
from ..backend.accounting import RunMeter
from ..backend.atomic import atomic_path, claim, write_bytes
from ..backend.callbacks import CancelCallback, ProgressCallback
from ..backend.errors import CancelledError, InputError, ModelError, OutputExistsError
from ..backend.models.cards import ModelCard, metric_entry
from ..backend.models.networks import ARCHITECTURES, architecture_name, create_network
from ..backend.models.registry import load_checkpoint as read_checkpoint
from ..backend.models.registry import load_model
from ..backend.store.dataset import StoredDataset, open_dataset
from .augment import make_augmentation
from .config import CONFIG_NAME, Config
from .data import WindowDataset, make_sampler, split_scenes, store_normalization, usable_scenes
from .export import load_checkpoint
from .losses import create_loss
from .metrics import confusion_matrix, metrics_from_confusion
from .models import class_infos, import_onnx_unet

logger = logging.getLogger(__name__)


class _NoAdverts(logging.Filter):
    """Drop Lightning's start-up tip about a hosted logging service from our users' logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdverts())


def _silence_leafspec() -> None:
    """Silence the one Lightning warning that is not ours to fix (called again per run).

    Lightning 2.6 builds its batches' tree specs with torch's ``LeafSpec()``, which
    torch 2.9+ deprecates: a FutureWarning per epoch that QGIS logs with a traceback.
    The specs are right. Set again at each run: whoever resets the warning filters
    meanwhile (a test runner) does not bring it back.
    """
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )


_silence_leafspec()

MODEL_NAME = "model.pt"


class SegmentationModule(L.LightningModule):
    """A network, its loss and optimiser, and the validation confusion matrix."""

    def __init__(self, network: torch.nn.Module, classes: list[str], config: Config) -> None:
        super().__init__()
        self.network = network.train()  # imported models come in eval mode
        self.classes = classes
        self.settings = config.train
        self.ignore_index = config.data.ignore_index
        self.loss = create_loss(
            config.train.loss,
            config.data.ignore_index,
            config.train.class_weights,
            config.train.focal_weight,
            config.train.dice_weight,
        )
        self.augment = make_augmentation() if config.train.augment else None
        self.confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
        self.epoch_losses: list[float] = []
        self._loss_sum = 0.0
        self._loss_count = 0
        self.val_metrics: dict[str, Any] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits."""
        return self.network(x)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Augment training batches on the device they are on."""
        if self.augment is not None and self.trainer is not None and self.trainer.training:
            return self.augment(*batch)
        return batch

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """One optimisation step."""
        images, masks = batch
        loss = self.loss(self(images), masks)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        self._loss_sum += float(loss.detach())
        self._loss_count += 1
        return loss

    def on_train_epoch_end(self) -> None:
        """Record the epoch's mean training loss."""
        if self._loss_count:
            self.epoch_losses.append(self._loss_sum / self._loss_count)
        self._loss_sum, self._loss_count = 0.0, 0

    def on_validation_epoch_start(self) -> None:
        """Start a new confusion matrix."""
        self.confusion[:] = 0

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Accumulate the confusion matrix and log the loss."""
        images, masks = batch
        logits = self(images)
        distributed = self.trainer is not None and self.trainer.world_size > 1
        loss = self.loss(logits, masks)
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, sync_dist=distributed)
        self.confusion += confusion_matrix(
            masks.cpu().numpy(),
            logits.argmax(1).cpu().numpy(),
            len(self.classes),
            self.ignore_index,
        )

    def on_validation_epoch_end(self) -> None:
        """Log mean IoU and per-class IoU, from the confusion matrices of all ranks."""
        if self.trainer is not None and self.trainer.world_size > 1:
            summed = self.trainer.strategy.reduce(
                torch.as_tensor(self.confusion, device=self.device), reduce_op="sum"
            )
            self.confusion = summed.cpu().numpy().astype(np.int64)
        metrics = metrics_from_confusion(self.confusion, self.classes)
        self.val_metrics = metrics
        self.log("val_iou", metrics["mean_iou"] or 0.0, prog_bar=True)
        for name, values in metrics["per_class"].items():
            if values["iou"] is not None:
                self.log(f"val_iou_{name.replace(' ', '_')}", values["iou"])

    def configure_optimizers(self) -> Any:
        """AdamW, with the learning rate reduced when validation IoU stops improving."""
        optimizer = torch.optim.AdamW(
            self.parameters(), lr=self.settings.lr, weight_decay=self.settings.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=0.5, patience=max(1, self.settings.patience // 2)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": "val_iou"},
        }


class _Progress(L.Callback):
    """Reports progress per batch and stops the run when asked to."""

    def __init__(self, progress: ProgressCallback | None, cancelled: CancelCallback | None) -> None:
        self.progress = progress
        self.cancelled = cancelled
        self.was_cancelled = False
        # Time of the training epochs, loading included, validation and checkpoints not.
        self.train_seconds = 0.0
        self.train_batches = 0
        self._epoch_started = 0.0
        self._val_started = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._epoch_started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.train_seconds += time.perf_counter() - self._epoch_started

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._val_started = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.training:  # validation inside a training epoch: not training time
            self.train_seconds -= time.perf_counter() - self._val_started

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        self.train_batches += 1
        batches = max(1, int(trainer.num_training_batches))
        done = (trainer.current_epoch + (idx + 1) / batches) / max(1, trainer.max_epochs)
        if self.progress:
            loss = trainer.callback_metrics.get("train_loss_step")
            text = f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"
            if loss is not None:
                text += f", loss {float(loss):.4f}"
            self.progress(100.0 * min(done, 1.0), text)
        if self.cancelled and self.cancelled():
            self.was_cancelled = True
            trainer.should_stop = True


@dataclass
class TrainResult:
    """What a training run produced."""

    model_path: Path
    best_checkpoint: Path
    last_checkpoint: Path
    epochs: int
    best_val_iou: float | None
    epoch_losses: list[float]
    val_metrics: dict[str, Any]
    seconds: float
    windows_per_second: float
    device: str
    train_scenes: list[str] = field(default_factory=list)
    val_scenes: list[str] = field(default_factory=list)
    #: Seconds, km² of windows trained on, and energy (see backend.accounting).
    accounting: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the result as JSON-serialisable data."""
        data = self.__dict__.copy()
        for key in ("model_path", "best_checkpoint", "last_checkpoint"):
            data[key] = str(data[key])
        return data


def _initial_network(
    config: Config, bands: list[str], classes: list[str]
) -> tuple[Any, ModelCard | None]:
    """Build the network: random, from a built-in ONNX model, or from a cloudseg checkpoint."""
    init = config.model.init
    if not init:
        network = create_network(
            config.model.architecture, len(bands), len(classes), config.model.encoder
        )
        return network, None
    if str(init).endswith((".pt", ".pth")):
        network, card = load_checkpoint(init)
        if list(card.bands) != bands or len(card.classes) != len(classes):
            raise InputError(
                f"{init} takes bands {', '.join(card.bands)} and {len(card.classes)} classes; "
                "to change bands or classes start from a built-in ONNX model"
            )
        return network, card
    model = load_model(init)
    if model.path.suffix.lower() != ".onnx":
        raise InputError(f"model.init {init!r}: use a built-in ONNX model name or a model.pt")
    network, card = import_onnx_unet(init, bands, len(classes))
    return network, card


def _normalization(
    config: Config,
    dataset: StoredDataset,
    scenes: list[str],
    bands: list[str],
    card: ModelCard | None,
) -> tuple[np.ndarray, np.ndarray]:
    norm = config.data.normalization
    if isinstance(norm, dict):  # given: the store's statistics are not needed
        mean = np.asarray(norm.get("mean", ()), np.float32)
        std = np.asarray(norm.get("std", ()), np.float32)
        if len(mean) != len(bands) or len(std) != len(bands):
            raise InputError(f"normalization needs {len(bands)} mean and std values")
        return mean, std
    if norm not in ("store", "card"):
        raise InputError("normalization must be store, card or {mean: [...], std: [...]}")
    if norm == "card" and card is None:
        raise InputError("normalization: card needs model.init (a model with a card)")
    mean, std = store_normalization(dataset, scenes, bands, config.data.scale)
    if norm == "card":
        for i, band in enumerate(bands):  # the card's values where it has the band
            if band in card.bands:
                mean[i], std[i] = card.band_statistics(band)
    return mean, std


def _device(config: Config) -> str:
    wanted = config.train.device
    if wanted == "cuda" and not torch.cuda.is_available():
        raise InputError("train.device cuda: torch sees no CUDA GPU here; use cpu or auto")
    return "cuda" if wanted != "cpu" and torch.cuda.is_available() else "cpu"


def prepare_output(folder: Path, resume: bool, overwrite: bool) -> Callable[[], None]:
    """Check the run folder: refuse to mix runs unless told to resume or overwrite.

    Nothing is changed yet: the returned function clears an earlier run (with
    ``overwrite``) and creates the folder; ``train`` calls it only once the store, the
    model and the settings have been checked, so a run that fails early leaves the
    folder as it was.

    Raises:
        OutputExistsError: If the folder holds a run and neither flag is given.
        InputError: If resume is asked but there is nothing to resume.
    """
    last = folder / "checkpoints" / "last.ckpt"
    if resume:
        if not last.is_file():
            raise InputError(f"nothing to resume: {last} does not exist")
        check_resumable(folder)
        return lambda: None
    if ((folder / "checkpoints").exists() or (folder / MODEL_NAME).exists()) and not overwrite:
        raise OutputExistsError(
            f"{folder} holds a training run; use --resume to continue it or "
            "--overwrite to start again"
        )

    def start() -> None:
        """Clear an earlier run (``overwrite``) and create the folder: once all checks pass."""
        if overwrite:
            for name in ("checkpoints", "logs", "tensorboard", MODEL_NAME, CONFIG_NAME):
                path = folder / name
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
        folder.mkdir(parents=True, exist_ok=True)

    return start


#: What a Lightning training checkpoint holds besides the weights (``--resume`` needs them).
_RESUME_KEYS = ("state_dict", "optimizer_states", "loops", "epoch")


def check_resumable(folder: Path) -> None:
    """Check the run folder's checkpoints before a resume changes anything.

    ``last.ckpt`` (what the run continues from) and ``best.ckpt`` (read again at the
    end) are read by the one safe loader: a file that would run code, or that is not a
    training checkpoint, stops the resume here, with the folder as it was.

    Raises:
        ModelError: If a checkpoint cannot be loaded safely or is not one a run wrote.
    """
    for name in ("last.ckpt", "best.ckpt"):
        path = folder / "checkpoints" / name
        if not path.is_file():
            continue
        state = read_checkpoint(path)
        missing = [k for k in _RESUME_KEYS if not isinstance(state, dict) or k not in state]
        if missing:
            raise ModelError(
                f"{path} is not a training checkpoint to resume from (no {', '.join(missing)}); "
                "start again with --overwrite"
            )


class WeightsOnlyCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint reader, through cloudseg's one safe loader.

    Lightning's resume (``trainer.fit(ckpt_path=...)``) reads the checkpoint with this
    instead of its own ``torch.load``: tensors and plain data only, never code.
    """

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Read ``path`` with :func:`cloudseg.backend.models.registry.load_checkpoint`."""
        return read_checkpoint(Path(path))


def train(
    config: Config,
    resume: bool = False,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    cancelled: CancelCallback | None = None,
    progress_bar: bool = False,
) -> TrainResult:
    """Train a model as ``config`` says and write the run folder.

    Args:
        config: The run's settings.
        resume: Continue from ``checkpoints/last.ckpt`` of the run folder.
        overwrite: Replace an earlier run in the folder.
        progress: Called with (percent, message) after every batch.
        cancelled: Polled after every batch; True stops the run (checkpoints stay,
            ``model.pt`` is not written) and raises :class:`CancelledError`.
        progress_bar: Show Lightning's progress bar (the CLI does).

    Returns:
        A :class:`TrainResult`.

    Raises:
        CloudsegError: For a bad config, store or model, an existing run, or cancellation.
    """
    out = Path(config.output).expanduser()
    if global_rank() > 0:  # a DDP worker started by rank 0, which holds and writes the folder
        return _train(config, out, resume, overwrite, progress, cancelled, False)
    with claim([out]):  # a second run into the same folder is refused meanwhile
        return _train(config, out, resume, overwrite, progress, cancelled, progress_bar)


def global_rank() -> int:
    """This process's rank in a distributed run (0 alone, and in the process that starts one).

    Lightning starts the other processes with ``LOCAL_RANK`` and ``NODE_RANK`` set;
    SLURM and torchrun set ``RANK``.
    """
    if os.environ.get("RANK", "").isdigit():
        return int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    node = int(os.environ.get("NODE_RANK", "0") or 0)
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return node * per_node + local


def _strategy(config: Config) -> str:
    """Lightning's strategy: DDP when more than one device or node takes part."""
    distributed = config.train.devices > 1 or config.train.num_nodes > 1
    if config.train.strategy == "auto":
        return "ddp" if distributed else "auto"
    return config.train.strategy


def _train(
    config: Config,
    out: Path,
    resume: bool,
    overwrite: bool,
    progress: ProgressCallback | None,
    cancelled: CancelCallback | None,
    progress_bar: bool,
) -> TrainResult:
    """:func:`train`, once the run folder is held."""
    started = time.perf_counter()
    follower = global_rank() > 0
    start = (lambda: None) if follower else prepare_output(out, resume, overwrite)
    dataset = open_dataset(config.data.store, config.data.endpoint_url)
    bands = [*(config.data.bands or dataset.bands)]
    classes = [*(config.data.classes or [c["name"] for c in dataset.classes])]
    scenes, labels = usable_scenes(dataset, config.data)
    train_scenes, val_scenes = split_scenes(scenes, config.data.split, config.train.seed)
    L.seed_everything(config.train.seed, workers=True, verbose=False)
    network, init_card = _initial_network(config, bands, classes)
    mean, std = _normalization(config, dataset, train_scenes, bands, init_card)
    data_config = replace(config.data, bands=bands)
    train_set = WindowDataset(dataset, train_scenes, data_config, classes, mean, std, labels)
    val_set = WindowDataset(  # windows removed in review are not scored either
        dataset,
        val_scenes,
        replace(data_config, stride=config.data.window),
        classes,
        mean,
        std,
        labels,
    )
    sampler = make_sampler(
        train_set, config.data.sampler, config.data.samples_per_epoch, config.train.seed
    )
    loader_args = {
        "batch_size": config.train.batch_size,
        "num_workers": config.train.num_workers,
        "persistent_workers": config.train.num_workers > 0,
        "pin_memory": torch.cuda.is_available(),
    }
    train_loader = torch.utils.data.DataLoader(
        train_set, sampler=sampler, drop_last=True, **loader_args
    )
    val_loader = torch.utils.data.DataLoader(val_set, shuffle=False, **loader_args)
    if len(train_loader) == 0:
        raise InputError(
            f"samples_per_epoch ({config.data.samples_per_epoch}) is below one batch "
            f"({config.train.batch_size})"
        )

    resolved = replace(
        config,
        data=replace(
            data_config,
            classes=classes,
            normalization={"mean": mean.tolist(), "std": std.tolist()},
            resolution_m=config.data.resolution_m or _store_resolution(dataset, train_scenes[0]),
        ),
    )
    created = not out.exists()
    start()
    try:
        if not follower:
            resolved.save(out / CONFIG_NAME)
        module = SegmentationModule(network, classes, resolved)
        device = _device(config)
        precision = config.train.precision
        if precision == "auto":
            precision = "bf16-mixed" if device == "cuda" else "32-true"
        from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
        from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

        checkpoints = ModelCheckpoint(
            dirpath=out / "checkpoints",
            filename="best",
            monitor="val_iou",
            mode="max",
            save_top_k=1,
            save_last=True,
            enable_version_counter=False,
        )
        watcher = _Progress(progress, cancelled)
        log_version = f"resumed-{time.strftime('%Y%m%d-%H%M%S')}" if resume else ""
        _silence_leafspec()
        trainer = L.Trainer(
            default_root_dir=out,
            max_epochs=config.train.epochs,
            accelerator="gpu" if device == "cuda" else "cpu",
            devices=config.train.devices,
            num_nodes=config.train.num_nodes,
            strategy=_strategy(config),
            precision=precision,
            callbacks=[
                checkpoints,
                EarlyStopping(monitor="val_iou", mode="max", patience=config.train.patience),
                LearningRateMonitor(logging_interval="epoch"),
                watcher,
            ],
            logger=[  # a resumed run logs beside the first one instead of replacing its logs
                CSVLogger(out, name="logs", version=log_version),
                TensorBoardLogger(
                    out, name="tensorboard", version=log_version, default_hp_metric=False
                ),
            ],
            log_every_n_steps=1,
            check_val_every_n_epoch=config.train.val_every,
            num_sanity_val_steps=0,
            enable_progress_bar=progress_bar,
            enable_model_summary=False,
            deterministic="warn" if device == "cpu" else False,
            plugins=[WeightsOnlyCheckpointIO()],
        )
        os.environ.setdefault("PYTHONHASHSEED", str(config.train.seed))
        ckpt_path = out / "checkpoints" / "last.ckpt" if resume else None
        meter = RunMeter(device)
        with meter.stage("fit"):
            trainer.fit(module, train_loader, val_loader, ckpt_path=ckpt_path)
        if watcher.was_cancelled:
            raise CancelledError(
                f"training cancelled at epoch {trainer.current_epoch + 1}; "
                f"continue with --resume (checkpoints in {out / 'checkpoints'})"
            )
        best = Path(checkpoints.best_model_path or out / "checkpoints" / "last.ckpt")
        state = read_checkpoint(best)["state_dict"]
        module.load_state_dict(state)
        # Metrics of the best weights on the validation scenes, for the card (every rank
        # validates its share; the confusion matrices are summed).
        trainer.validate(module, val_loader, verbose=False)
        if not trainer.is_global_zero:  # only rank 0 writes the model, card and cost
            return TrainResult(out / MODEL_NAME, best, out / "checkpoints" / "last.ckpt",
                               trainer.current_epoch, module.val_metrics.get("mean_iou"),
                               module.epoch_losses, module.val_metrics, 0.0, 0.0, "follower",
                               train_scenes, val_scenes)  # fmt: skip
        windows = watcher.train_batches * config.train.batch_size
        # What the training cost, per km² of windows trained on (each window counted
        # every time it is drawn): in the card, cost.json and the log.
        pixel_m = resolved.data.resolution_m or 10.0
        cost = meter.finish(windows * config.data.window**2 * pixel_m**2 / 1e6)
        card = build_card(
            resolved, bands, classes, mean, std, init_card, module.val_metrics, val_scenes
        )
        card = replace(card, source=card.source | {"training_cost": cost.to_dict()})
        write_bytes(out / "cost.json", (json.dumps(cost.to_dict(), indent=2) + "\n").encode())
        logger.info("training cost: %s", cost.summary())
        model_path = save_model(module.network, card, resolved, out / MODEL_NAME)
        return TrainResult(
            model_path=model_path,
            best_checkpoint=best,
            last_checkpoint=out / "checkpoints" / "last.ckpt",
            epochs=trainer.current_epoch,
            best_val_iou=module.val_metrics.get("mean_iou"),
            epoch_losses=module.epoch_losses,
            val_metrics=module.val_metrics,
            seconds=round(time.perf_counter() - started, 2),
            windows_per_second=round(windows / watcher.train_seconds, 3) if windows else 0.0,
            device=torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
            train_scenes=train_scenes,
            val_scenes=val_scenes,
            accounting=cost.to_dict() | {"summary": cost.summary()},
        )
    except BaseException:
        # A run that stops before its first checkpoint leaves no folder it created.
        if created and not follower and not (out / "checkpoints").exists():
            shutil.rmtree(out, ignore_errors=True)
        raise


def _store_resolution(dataset: StoredDataset, scene: str) -> float:
    transform = dataset.item(scene).properties.get("proj:transform") or [10.0]
    return abs(float(transform[0])) or 10.0


def build_card(
    config: Config,
    bands: list[str],
    classes: list[str],
    mean: np.ndarray,
    std: np.ndarray,
    init_card: ModelCard | None,
    metrics: dict[str, Any],
    val_scenes: list[str],
) -> ModelCard:
    """The model card of a trained model: what it needs, what it returns, how it scored."""
    store_colors = {}
    if init_card is not None:
        store_colors = {c.name: c.color for c in init_card.classes}
    infos = class_infos([{"name": n, "color": store_colors.get(n)} for n in classes])
    encoder = config.model.encoder
    architecture = config.model.architecture
    if init_card is not None:
        architecture = init_card.architecture["name"]
        encoder = init_card.architecture.get("encoder")
    architecture = architecture_name(architecture)
    window = config.data.window
    return ModelCard(
        name=config.name,
        version=f"{__version__}+{time.strftime('%Y%m%d')}",
        description=(
            f"{architecture} ({encoder or ARCHITECTURES[architecture]}) trained with cloudseg on "
            f"{config.data.store}"
            + (f", starting from {init_card.name}" if init_card else "")
            + "."
        ),
        license=init_card.license if init_card else "",
        source={"trained_with": f"cloudseg {__version__}", "init": config.model.init},
        architecture={
            "framework": "segmentation-models-pytorch",
            "name": architecture,
            "encoder": encoder or ARCHITECTURES[architecture],
        },
        format="torch",
        bands=tuple(bands),
        product_level=config.data.product_level.upper()
        if config.data.product_level.lower() != "any"
        else "any",
        normalization={"mean": [float(v) for v in mean], "std": [float(v) for v in std]},
        resolution_m=float(config.data.resolution_m or 10.0),
        tile_size=window,
        overlap=window // 8,
        output="logits",
        classes=infos,
        metrics=[
            metric_entry(
                "validation",
                f"{config.data.store}: validation scenes {', '.join(val_scenes)}",
                "validation",
                metrics,
                pixel_accuracy=metrics.get("pixel_accuracy"),
                measured=time.strftime("%Y-%m-%d"),
            )
        ],
    )


def save_model(network: torch.nn.Module, card: ModelCard, config: Config, path: Path) -> Path:
    """Write ``{"card", "state_dict", "config"}`` to ``path`` atomically."""
    state = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    with atomic_path(path) as partial:
        torch.save(
            {"card": card.to_dict(), "state_dict": state, "config": config.to_dict()}, partial
        )
    return path

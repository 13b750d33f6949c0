"""The model registry: built-in models, registered model versions, and model files.

Built-in cards live in ``resources/models``; their weights come from installed
packages (the four ukis-csmask ONNX models). Fine-tuned versions are registered in the
user's model folder (:func:`models_dir`: ``$CLOUDSEG_MODELS_DIR``, else the platform's
data folder), as ``<name>.pt`` with ``<name>.pt.card.json`` beside it, and are listed by
name like the built-ins. A path may name an ONNX file with an embedded card or a torch
checkpoint with its card.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import sys
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..atomic import file_sha256
from ..errors import BandError, ModelError
from ..metadata_files import read_text
from .cards import ONNX_CARD_KEY, ModelCard, check_network_shape

logger = logging.getLogger(__name__)

CARDS_DIR = Path(__file__).resolve().parents[2] / "resources" / "models"
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt")


@dataclass(frozen=True)
class Model:
    """A model card together with the file that holds the weights.

    Attributes:
        card: The model card.
        path: The ONNX file or torch checkpoint.
        builtin: Whether it ships with cloudseg.
    """

    card: ModelCard
    path: Path
    builtin: bool = False

    @property
    def sha256(self) -> str:
        """Return the SHA-256 of the weights file (hashed once per file version)."""
        stat = self.path.stat()
        return _cached_sha256(self.path.resolve(), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=32)
def _cached_sha256(path: Path, size: int, mtime_ns: int) -> str:
    """:func:`~..atomic.file_sha256`, once per file version (``size`` and ``mtime_ns``)."""
    del size, mtime_ns  # they key the cache only
    return file_sha256(path)


def _package_file(package: str, name: str) -> Path | None:
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / name
    return path if path.is_file() else None


def builtin_models() -> list[Model]:
    """Return the built-in models whose weights are installed, in name order."""
    models = []
    for card_file in sorted(CARDS_DIR.glob("*.json")):
        card = ModelCard.from_json(card_file.read_text(encoding="utf-8"))
        weights = _package_file(card.source["package"], card.source["file"])
        if weights is None:
            logger.warning(
                "built-in model %s is unavailable: install the Python package %s",
                card.name,
                card.source["package"],
            )
            continue
        models.append(Model(card, weights, builtin=True))
    return models


#: Environment variable naming the folder of registered model versions.
MODELS_DIR_ENV = "CLOUDSEG_MODELS_DIR"


def models_dir() -> Path:
    """The folder of registered model versions (not created here)."""
    if os.environ.get(MODELS_DIR_ENV):
        return Path(os.environ[MODELS_DIR_ENV]).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "cloudseg" / "models"


def registered_models() -> list[Model]:
    """The registered model versions, newest first; unreadable entries are skipped."""
    folder = models_dir()
    if not folder.is_dir():
        return []
    models = []
    for card_file in folder.glob("*.pt.card.json"):
        weights = card_file.with_name(card_file.name[: -len(".card.json")])
        if not weights.is_file():
            continue  # a registration that did not complete
        try:
            card = ModelCard.from_json(read_text(card_file))  # within the metadata limit
        except (OSError, ValueError, ModelError) as exc:
            logger.warning("skipped the registered model %s: %s", card_file.name, exc)
            continue
        models.append(Model(card, weights))
    return sorted(models, key=lambda m: m.path.stat().st_mtime_ns, reverse=True)


def available_models() -> list[Model]:
    """The built-in models, then the registered versions: what the dock and Processing list."""
    builtin = builtin_models()
    names = {m.card.name for m in builtin}
    return builtin + [m for m in registered_models() if m.card.name not in names]


def free_model_name(stem: str) -> str:
    """A name no built-in or registered model has: ``stem``, else ``stem-2``, ``stem-3``..."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._") or "model"
    taken = {m.card.name for m in available_models()}
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}"
    return name


def clean_models_dir() -> None:
    """Remove the temporaries of registrations killed midway (their process is gone)."""
    from ..atomic import dead_temporaries, remove

    folder = models_dir()
    if folder.is_dir():
        remove(*dead_temporaries(folder))


def register_model(checkpoint: Path, card: ModelCard) -> Model:
    """Register a torch checkpoint under ``card.name``: copied into :func:`models_dir`.

    The weights and the card are written under temporary names and published in one
    step (:func:`~cloudseg.backend.atomic.publish`, the card last: a version is listed
    once its card is there), so a failed or killed registration lists nothing; the
    temporaries of killed ones are removed first.

    Raises:
        ModelError: If a model of that name exists already.
    """
    from ..atomic import cleanup_on_failure, publish, temporary_sibling

    if any(m.card.name == card.name for m in available_models()):
        raise ModelError(f"a model named {card.name!r} exists already; choose another name")
    folder = models_dir()
    folder.mkdir(parents=True, exist_ok=True)
    clean_models_dir()
    weights = folder / f"{card.name}.pt"
    card_file = weights.with_name(weights.name + ".card.json")
    parts = temporary_sibling(weights), temporary_sibling(card_file)
    with cleanup_on_failure(*parts):
        shutil.copyfile(checkpoint, parts[0])
        parts[1].write_text(card.to_json(), encoding="utf-8")
        publish([(parts[0], weights), (parts[1], card_file)])
    return Model(card, weights)


def read_onnx_card(path: Path) -> ModelCard:
    """Read the card embedded in an ONNX file's metadata.

    Raises:
        ModelError: If the file has no card or is not ONNX.
    """
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others from protobuf
        raise ModelError(f"{path} is not a readable ONNX model: {exc}") from exc
    props = {p.key: p.value for p in proto.metadata_props}
    if ONNX_CARD_KEY not in props:
        raise ModelError(
            f"{path} has no cloudseg model card (ONNX metadata key {ONNX_CARD_KEY!r}); "
            "export it with 'cloudseg export' or add the card with "
            "cloudseg.backend.models.registry.embed_onnx_card"
        )
    card = ModelCard.from_json(props[ONNX_CARD_KEY])
    check_network_shape(card, *_onnx_channels(proto), str(path))
    return card


def _onnx_channels(proto: Any) -> tuple[int | None, int | None]:
    """Channels (axis 1) of an ONNX graph's first input and output, where declared."""

    def channels(values: Any) -> int | None:
        dims = values[0].type.tensor_type.shape.dim if len(values) else []
        return dims[1].dim_value or None if len(dims) > 1 else None

    return channels(proto.graph.input), channels(proto.graph.output)


def embed_onnx_card(path: Path, card: ModelCard, target: Path | None = None) -> Path:
    """Write ``card`` into an ONNX file's metadata (in place, or into ``target``).

    Returns:
        The path written.
    """
    import onnx

    proto = onnx.load(str(path))
    kept = [p for p in proto.metadata_props if p.key != ONNX_CARD_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    entry = proto.metadata_props.add()
    entry.key, entry.value = ONNX_CARD_KEY, card.to_json()
    target = target or path
    onnx.save(proto, str(target))
    return target


def load_checkpoint(path: Path) -> Any:
    """Load a torch checkpoint safely: tensors and plain data only, never code.

    The one loader of every torch file cloudseg reads: models given with ``--model``,
    registered versions, the starting model of a training run and Lightning's own
    ``best.ckpt`` and ``last.ckpt`` (``--resume`` included). ``torch.load`` runs with
    ``weights_only=True``: a pickle that names a function or class (``os.system``,
    ``exec``, a custom class) is refused before anything of it runs.

    Raises:
        ModelError: One line, if the file is not a checkpoint torch can load safely
            (corrupt, truncated, another format, or one that would run code).
    """
    import torch

    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        text = str(exc)
        unsafe = re.search(r"GLOBAL ([\w.]+)", text)
        if unsafe or "Weights only load failed" in text:
            found = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
            what = (
                f"it holds Python objects that would run code ({unsafe[1]})"
                if unsafe
                else f"not tensors and plain data ({found[1][:80] if found else 'unreadable'})"
            )
            raise ModelError(
                f"{path} is not a torch checkpoint cloudseg can load: {what}; nothing in it "
                "was run (cloudseg loads tensors and plain data only)"
            ) from None
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        detail = lines[0].split(". ")[0][:120] if lines else type(exc).__name__
        raise ModelError(
            f"{path} is not a torch checkpoint cloudseg can load ({detail}); check the file "
            "is complete and was saved with cloudseg train or torch.save of a state dict"
        ) from None


def read_torch_card(path: Path) -> ModelCard:
    """Read the card of a torch checkpoint: inside it, or in ``<path>.card.json``.

    Raises:
        ModelError: If no card is found.
    """
    beside = path.with_name(path.name + ".card.json")
    if beside.is_file():
        return ModelCard.from_json(read_text(beside))  # within the metadata limit
    checkpoint = load_checkpoint(path)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("card"), dict):
        return ModelCard.from_dict(checkpoint["card"])
    raise ModelError(
        f"{path} has no model card: put it in the checkpoint under 'card' "
        f"or beside it as {beside.name}"
    )


def load_model(name_or_path: str | Path) -> Model:
    """Find a model by built-in name or file path.

    Raises:
        ModelError: If no such model exists, listing the valid names.
    """
    text = str(name_or_path)
    for model in available_models():
        if model.card.name == text:
            return model
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".onnx":
            return Model(read_onnx_card(path), path)
        if path.suffix.lower() in TORCH_SUFFIXES:
            return Model(read_torch_card(path), path)
        raise ModelError(
            f"{path}: unknown model format; use an .onnx file or a torch "
            f"checkpoint ({', '.join(TORCH_SUFFIXES)})"
        )
    names = ", ".join(m.card.name for m in available_models()) or "none installed"
    raise ModelError(f"no model named {text!r} and no such file; models: {names}")


def _no_builtin_models() -> str:
    """Why no built-in model is there, in one line: the package that brings them is missing."""
    from ..dependencies import GROUPS, install_hint

    packages = sorted(
        {
            str(ModelCard.from_json(f.read_text(encoding="utf-8")).source["package"])
            for f in CARDS_DIR.glob("*.json")
        }
    )
    missing = [r for g in GROUPS for r in g.requirements if r.distribution in packages]
    return (
        f"no built-in model is installed (they come with the Python package "
        f"{', '.join(packages)}); {install_hint(missing[:1]) or 'reinstall it'}"
    )


def choose_model(bands: list[str], product_level: str | None) -> tuple[Model, str]:
    """Pick the built-in model that fits the input best.

    Prefers the product level of the input and, among those, the model using the most
    of the input's bands.

    Args:
        bands: Canonical names of the bands the input has.
        product_level: ``"L1C"``, ``"L2A"`` or None if unknown (then L1C models).

    Returns:
        The model and one line that says why it was chosen.

    Raises:
        BandError: If no built-in model's bands are all present, naming what is missing.
    """
    level = product_level or "L1C"
    installed = builtin_models()
    if not installed:
        raise ModelError(_no_builtin_models())
    candidates = [m for m in installed if m.card.product_level in (level, "any")]
    if not candidates:
        raise ModelError(f"no built-in model for product level {level}")
    fitting = [m for m in candidates if set(m.card.bands) <= set(bands)]
    if not fitting:
        fewest = min(candidates, key=lambda m: len(set(m.card.bands) - set(bands)))
        missing = [b for b in fewest.card.bands if b not in bands]
        raise BandError(
            f"the input lacks band(s) {', '.join(missing)} that the smallest fitting model "
            f"{fewest.card.name} needs (it has {', '.join(bands) or 'no named bands'}); "
            "if the bands are there but unnamed, pass --bands"
        )
    best = max(fitting, key=lambda m: len(m.card.bands))
    why = (
        f"chose {best.card.name}: {level} input"
        f"{' (level unknown, assumed L1C)' if product_level is None else ''} with bands "
        f"{', '.join(best.card.bands)}"
    )
    return best, why


def preview_cost() -> str:
    """What ``--resolution preview`` cost in accuracy, as measured for the built-in cards.

    Read from the cards' metrics (no weights are loaded): the model with the most bands
    that has both a ``preview`` and a ``default-fp32`` entry on the same data.

    Returns:
        ``measured with <model> on <data>: cloud IoU 0.709 vs 0.761 native, ...``, or
        ``""`` when no card records it.
    """
    cards = [
        ModelCard.from_json(path.read_text(encoding="utf-8"))
        for path in sorted(CARDS_DIR.glob("*.json"))
    ]
    for card in sorted(cards, key=lambda c: (-len(c.bands), c.product_level, c.name)):
        entries = {(m.get("dataset"), m.get("config")): m for m in card.metrics}
        for (dataset, config), preview in entries.items():
            native = entries.get((dataset, "default-fp32"))
            if config != "preview" or native is None:
                continue
            parts = [
                f"{name} IoU {preview['iou'][name]:.3f} vs {native['iou'][name]:.3f}"
                for name in card.class_names()[1:]
                if preview["iou"].get(name) is not None and native["iou"].get(name) is not None
            ]
            return f"measured with {card.name} on {dataset}: {', '.join(parts)} native"
    return ""

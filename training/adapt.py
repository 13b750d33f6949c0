"""Adapt a model to a few labeled boxes: the fine-tuning recipes of the active-learning loop.

A handful of boxes cannot teach a 19-million-parameter network much, but they can undo
it. The base model is the prior, so every recipe here starts from its weights, keeps
its batch-norm statistics (the network stays in eval mode), trains only the part the
recipe names, and can be pulled back toward the base:

- ``scope``: what is trained. ``calibration``: a 3x3 map and a bias on the logits
  (folded into the segmentation head afterwards, so the version is an ordinary
  network); ``head``: the segmentation head; ``decoder``: the decoder and the head
  (the encoder's features are computed once per round, so a step costs a decoder
  pass); ``all``: every weight (the encoder runs in every step).
- ``distill``: weight of the base model's own soft predictions on the pixels nobody
  labeled (the context around each box and unlabeled windows of the scene): the new
  version may change where labels say so and should agree with the base elsewhere.
- ``l2sp``: weight of the squared distance to the starting weights (L2-SP).
- Class balance: the cross-entropy weights each class by the inverse square root of
  its labeled share, so the few shadow pixels of a few boxes still count.

The recipe used by ``cloudseg fine-tune`` and the dock is :data:`DEFAULT_RECIPE` (the
head: the base's features computed once, a few hundred weights trained), chosen with the
simulated analyst of ``dev/benchmark_active_learning.py`` (see
``docs/active-learning.md``). The loop is plain torch, not Lightning: a round is a few
dozen steps over tensors already in memory, where a Trainer's set-up would cost more
than the training.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..backend.callbacks import CancelCallback, ProgressCallback
from ..backend.errors import CancelledError, InputError
from ..backend.store.keys import IGNORE

SCOPES = ("calibration", "head", "decoder", "all")
#: The encoder's output stride: crops of the cached features align to it.
STRIDE = 32


@dataclass(frozen=True)
class Recipe:
    """How one round fine-tunes.

    Attributes:
        name: The recipe's name (``cloudseg fine-tune --recipe``).
        scope: What is trained: one of :data:`SCOPES`.
        steps: Optimizer steps (fixed: the held-out boxes judge, they do not steer).
        lr: AdamW learning rate.
        distill: Weight of the distillation toward the base on unlabeled pixels.
        l2sp: Weight of the squared distance to the starting weights.
        balance: Weight classes by the inverse square root of their labeled share.
        batch: Labeled windows per step (0: all of them).
        crop: Each step trains on a random square of this edge inside each window
            (aligned to the encoder's stride of 32; the whole window when smaller):
            four times fewer pixels per step than a 192 px window, and new crops each step.
    """

    name: str
    scope: str
    steps: int
    lr: float
    distill: float = 0.0
    l2sp: float = 0.0
    balance: bool = True
    batch: int = 0
    crop: int = 96

    def to_dict(self) -> dict[str, Any]:
        """The recipe as JSON-serialisable data (recorded in the version's card)."""
        return asdict(self)


#: The recipes the benchmark compares; ``full`` is the earlier product's recipe shape
#: (every weight, no pull toward the base).
RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("full", "all", steps=40, lr=1e-4, balance=False, batch=4),
        Recipe("calibration", "calibration", steps=100, lr=2e-2, distill=1.0),
        Recipe("head", "head", steps=60, lr=1e-3, distill=1.0),
        Recipe("decoder", "decoder", steps=30, lr=1e-4, distill=0.0),
        Recipe("decoder-distill", "decoder", steps=30, lr=1e-4, distill=1.0, l2sp=1e-2),
        Recipe("decoder-anchored", "decoder", steps=30, lr=1e-4, distill=3.0, l2sp=5e-2),
    )
}
#: The product's recipe (chosen on the simulated analyst; docs/active-learning.md): the
#: recipe whose adopted versions lost least on the scenes never labeled.
DEFAULT_RECIPE = "head"


def recipe_named(name: str) -> Recipe:
    """The recipe of that name.

    Raises:
        InputError: For an unknown name, listing the known ones.
    """
    if name not in RECIPES:
        raise InputError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name]


def set_threads() -> int:
    """Use every core this process may use for torch, once, without oversubscription.

    ``CLOUDSEG_THREADS`` overrides (a batch worker's share). Inter-op threads stay at
    one: a round's work is one chain of large operations.
    """
    import torch

    from ..backend.inference.runners import cpu_threads

    threads = cpu_threads()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if torch.get_num_interop_threads() != 1:
        with contextlib.suppress(RuntimeError):  # settable once, before any parallel work
            torch.set_num_interop_threads(1)
    return threads


def _decode(network: Any, features: list[Any]) -> Any:
    """The decoder's output for the encoder's features (smp 0.4 and 0.5 signatures)."""
    try:
        return network.decoder(features)
    except TypeError:
        return network.decoder(*features)


def class_weights(labels: np.ndarray, classes: int, balance: bool) -> np.ndarray:
    """Cross-entropy weights: inverse square root of each labeled class's share, mean 1.

    Classes without labeled pixels get weight 0 (they do not occur in the loss anyway).
    """
    counts = np.bincount(labels[labels != IGNORE].ravel(), minlength=classes)[:classes]
    weights = np.zeros(classes, np.float32)
    present = counts > 0
    if not balance:
        weights[present] = 1.0
        return weights
    weights[present] = 1.0 / np.sqrt(counts[present] / counts[present].sum())
    weights[present] /= weights[present].mean()
    return weights


@dataclass
class AdaptResult:
    """What a round's training did: steps, seconds, the last losses."""

    steps: int
    seconds: float
    loss: float
    distill_loss: float
    labeled_pixels: int
    unlabeled_pixels: int

    def to_dict(self) -> dict[str, Any]:
        """As JSON-serialisable data."""
        return asdict(self)


def adapt(
    network: Any,
    images: np.ndarray,
    labels: np.ndarray,
    recipe: Recipe,
    unlabeled: np.ndarray | None = None,
    seed: int = 0,
    progress: ProgressCallback | None = None,
    cancelled: CancelCallback | None = None,
) -> AdaptResult:
    """Fine-tune ``network`` in place on labeled windows, as ``recipe`` says.

    Args:
        network: An smp network (``encoder``, ``decoder``, ``segmentation_head``),
            float32 on the CPU or GPU; it stays in eval mode.
        images: ``(N, bands, S, S)`` normalized model input of the labeled windows.
        labels: ``(N, S, S)`` class values, :data:`IGNORE` where unlabeled.
        recipe: What to train and how.
        unlabeled: ``(M, bands, S, S)`` windows nobody labeled (distillation only).
        seed: Seeds the window order.
        progress: Called with (percent, message), the message with the time left.
        cancelled: Polled every step.

    Returns:
        An :class:`AdaptResult`.

    Raises:
        CancelledError: When cancelled (the network is then partly trained: discard it).
        InputError: Without labeled pixels.
    """
    import torch
    import torch.nn.functional as F  # noqa: N812 (torch's own spelling)

    if recipe.scope not in SCOPES:
        raise InputError(f"recipe scope must be one of {', '.join(SCOPES)}")
    report = progress or (lambda percent, message: None)
    stop = cancelled or (lambda: False)
    labeled = int((labels != IGNORE).sum())
    if not labeled:
        raise InputError("the boxes hold no labeled pixel to fine-tune on")
    started = time.perf_counter()
    torch.manual_seed(seed)
    generator = np.random.default_rng(seed)
    device = next(network.parameters()).device
    network.eval()
    for p in network.parameters():
        p.requires_grad_(False)
    classes = network.segmentation_head[0].out_channels
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(device)
    y = torch.from_numpy(labels.astype(np.int64)).to(device)
    if unlabeled is not None and len(unlabeled) and recipe.distill > 0:
        x = torch.cat([x, torch.from_numpy(np.ascontiguousarray(unlabeled, np.float32)).to(device)])
        y = torch.cat([y, torch.full((len(unlabeled), *y.shape[1:]), IGNORE, device=device)])
    n_labeled = len(images)

    # What is computed once: the base's soft predictions, and what the scope leaves fixed.
    with torch.no_grad():  # not inference_mode: cached tensors feed autograd later
        cached: list[Any] = []
        base_logp = []
        for i in range(len(x)):
            features = network.encoder(x[i : i + 1])
            decoded = _decode(network, features)
            logits = network.segmentation_head(decoded)
            base_logp.append(F.log_softmax(logits, dim=1))
            if recipe.scope == "decoder":
                cached.append(list(features))
            elif recipe.scope == "head":
                cached.append(decoded)
            elif recipe.scope == "calibration":
                cached.append(logits)
        base_logp_all = torch.cat(base_logp)
    unlabeled_pixels = int((y == IGNORE).sum())

    calibration = None
    if recipe.scope == "calibration":
        calibration = torch.nn.Conv2d(classes, classes, 1).to(device)
        with torch.no_grad():
            calibration.weight.copy_(torch.eye(classes).view(classes, classes, 1, 1))
            calibration.bias.zero_()
        params = list(calibration.parameters())
    else:
        module = {"head": network.segmentation_head, "all": network}.get(recipe.scope)
        modules = [module] if module is not None else [network.decoder, network.segmentation_head]
        params = [p for m in modules for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    start_weights = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.0)
    weights = torch.from_numpy(class_weights(labels, classes, recipe.balance)).to(device)

    size = x.shape[-1]
    crop = size if recipe.crop >= size else max(STRIDE, recipe.crop // STRIDE * STRIDE)
    starts = list(range(0, size - crop + 1, STRIDE))

    def cut(window: Callable[[int], Any], places: list[tuple[int, int, int]], step: int = 1) -> Any:
        """The crops ``(window, row, col)`` of ``window(i)`` (on a grid ``step`` times coarser)."""
        return torch.cat(
            [
                window(i)[..., r // step : (r + crop) // step, c // step : (c + crop) // step]
                for i, r, c in places
            ]
        )

    def forward(places: list[tuple[int, int, int]]) -> Any:
        """Logits of a batch of crops ``(window, row, col)``, in one pass."""
        if recipe.scope == "all":
            return network(cut(lambda i: x[i : i + 1], places))
        if recipe.scope == "decoder":
            levels = [
                cut(lambda i, k=k: cached[i][k], places, size // cached[0][k].shape[-1])
                for k in range(len(cached[0]))
            ]
            return network.segmentation_head(_decode(network, levels))
        window = cut(lambda i: cached[i], places)
        return network.segmentation_head(window) if recipe.scope == "head" else calibration(window)

    loss_value = distill_value = 0.0
    training_started = time.perf_counter()
    for step in range(recipe.steps):
        if stop():
            raise CancelledError("fine-tuning cancelled; no model version was made")
        order = generator.permutation(n_labeled)
        chosen = order[: recipe.batch] if recipe.batch else order
        if len(x) > n_labeled:  # unlabeled windows join each step, as many as labeled ones
            extra = generator.permutation(np.arange(n_labeled, len(x)))[: len(chosen)]
            chosen = np.concatenate([chosen, extra])
        optimizer.zero_grad(set_to_none=True)
        places = [
            (int(i), int(generator.choice(starts)), int(generator.choice(starts))) for i in chosen
        ]
        truth = cut(lambda i: y[i : i + 1], places)
        base = cut(lambda i: base_logp_all[i : i + 1], places)
        free = truth == IGNORE
        logits = forward(places)
        loss = logits.new_zeros(())
        labeled_here = int((~free).sum())
        if labeled_here:
            ce = F.cross_entropy(
                logits, truth, weight=weights, ignore_index=IGNORE, reduction="sum"
            )
            loss = loss + ce / labeled_here
            loss_value = float(ce.detach()) / labeled_here
        if recipe.distill > 0 and bool(free.any()):
            kl = (base.exp() * (base - F.log_softmax(logits, dim=1))).sum(1)
            kd = kl[free].mean()
            loss = loss + recipe.distill * kd
            distill_value = float(kd.detach())
        if loss.requires_grad:
            loss.backward()
        if recipe.l2sp > 0:
            penalty = sum(
                ((p - p0) ** 2).sum() for p, p0 in zip(params, start_weights, strict=True)
            )
            (recipe.l2sp * penalty).backward()
        optimizer.step()
        done = step + 1
        left = (time.perf_counter() - training_started) / done * (recipe.steps - done)
        report(100 * done / recipe.steps, f"step {done}/{recipe.steps}, about {_eta(left)} left")

    for p in params:
        p.requires_grad_(False)
    if calibration is not None:
        fold_calibration(network, calibration)
    return AdaptResult(
        recipe.steps,
        round(time.perf_counter() - started, 2),
        round(loss_value, 4),
        round(distill_value, 4),
        labeled,
        unlabeled_pixels,
    )


def fold_calibration(network: Any, calibration: Any) -> None:
    """Fold a 1x1 map on the logits into the segmentation head's last convolution."""
    import torch

    head = network.segmentation_head[0]
    a = calibration.weight.detach()[:, :, 0, 0]
    with torch.no_grad():
        weight = head.weight.detach().clone()
        head.weight.copy_(torch.einsum("ij,jkhw->ikhw", a, weight))
        head.bias.copy_(a @ head.bias.detach() + calibration.bias.detach())


def _eta(seconds: float) -> str:
    """Seconds as a short duration: ``40 s``, ``3 min``."""
    if seconds < 90:
        return f"{max(math.ceil(seconds), 1)} s"
    return f"{round(seconds / 60)} min"


__all__ = ["DEFAULT_RECIPE", "RECIPES", "AdaptResult", "Recipe", "adapt", "recipe_named"]

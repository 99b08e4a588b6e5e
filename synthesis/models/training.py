"""Training of the reference segmenter.

Models take per-image z-scored input (:func:`synthesis.normalize.zscore`, the one definition
shared with the attacks, ``evaluate`` and ``collate``).

:func:`train_segmenter` is deterministic on CPU for a given seed, whatever the process's
thread count: it always runs on :data:`synthesis.thread_invariant.MODEL_THREADS` threads (oneDNN splits
its sums and picks its kernels by the thread count, which changes the last bits). Weights are
initialised from the seed (:func:`synthesis.models.unet.init_weights`), and the shuffling, dihedral
flips and random crops come from one ``torch.Generator`` seeded with it. The best epoch by validation IoU
(aggregate over all validation pixels) is kept in memory and loaded back into the model.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from synthesis.checks import check_images, check_mask
from synthesis.metrics import SegmentationScores, check_logits, logits_to_mask
from synthesis.models.unet import init_weights
from synthesis.thread_invariant import on_model_threads

__all__ = ["LOSSES", "TrainResult", "segmentation_loss", "train_segmenter"]

logger = logging.getLogger(__name__)

#: Training losses by name. For two-channel models "bce" means the cross-entropy.
LOSSES: tuple[str, ...] = ("bce_dice", "bce", "dice")
#: A constant image has no contrast to normalise; its std is floored here (in image units).
#: Laplace smoothing of the soft Dice loss (keeps empty masks finite).
_DICE_SMOOTH = 1.0


def _foreground_prob(logits: Tensor) -> Tensor:
    if logits.shape[1] == 1:
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=1)[:, 1:2]


def segmentation_loss(logits: Tensor, mask: Tensor, kind: str = "bce_dice") -> Tensor:
    """Mean training loss of a batch.

    ``bce``: binary cross-entropy with logits (one channel) or cross-entropy (two channels);
    ``dice``: soft Dice loss ``1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1)`` per image on
    the foreground probability, averaged over the batch; ``bce_dice``: their sum.

    Args:
        logits: ``(B, 1, H, W)`` or ``(B, 2, H, W)``.
        mask: ``(B, 1, H, W)`` bool ground truth.
        kind: one of :data:`LOSSES`.

    Returns:
        A scalar tensor.

    Raises:
        ValueError: unknown ``kind`` or logits not matching the mask.
    """
    if kind not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}. Got {kind!r}")
    check_logits(logits, mask)
    target = mask.to(logits.dtype)
    total = logits.new_zeros(())
    if kind in ("bce", "bce_dice"):
        if logits.shape[1] == 1:
            total = total + F.binary_cross_entropy_with_logits(logits, target)
        else:
            total = total + F.cross_entropy(logits, mask[:, 0].long())
    if kind in ("dice", "bce_dice"):
        p = _foreground_prob(logits).flatten(1)
        t = target.flatten(1)
        score = (2 * (p * t).sum(1) + _DICE_SMOOTH) / (p.sum(1) + t.sum(1) + _DICE_SMOOTH)
        total = total + (1 - score).mean()
    return total


@dataclass
class TrainResult:
    """What :func:`train_segmenter` returns.

    Attributes:
        state_dict: the best epoch's weights (CPU tensors), already loaded into the model.
        history: one dict per epoch: ``epoch`` (1-based), ``train_loss``, ``val_loss``,
            ``val_iou`` (aggregate), ``val_dice``, ``val_iou_mean`` (per image), ``seconds``.
        best_val_iou: the validation IoU of the best epoch.
        best_epoch: its number (1-based).
        settings: the training settings, JSON-serialisable (for the model card).
    """

    state_dict: dict[str, Tensor]
    history: list[dict[str, float]] = field(default_factory=list)
    best_val_iou: float = float("nan")
    best_epoch: int = 0
    settings: dict[str, Any] = field(default_factory=dict)


def _augment(
    images: Tensor, masks: Tensor, gen: torch.Generator, crop: int | None
) -> tuple[Tensor, Tensor]:
    """Per-sample random dihedral flips (and an optional random crop), batched."""
    b, _, h, w = images.shape
    flags = torch.rand(b, 3, generator=gen) < 0.5
    dims = {0: (-1,), 1: (-2,)}
    for i, d in dims.items():
        f = flags[:, i].to(images.device).view(b, 1, 1, 1)
        images = torch.where(f, images.flip(d), images)
        masks = torch.where(f, masks.flip(d), masks)
    if h == w:
        f = flags[:, 2].to(images.device).view(b, 1, 1, 1)
        images = torch.where(f, images.transpose(-1, -2), images)
        masks = torch.where(f, masks.transpose(-1, -2), masks)
    if crop is not None and (crop < h or crop < w):
        ch, cw = min(crop, h), min(crop, w)
        oy = torch.randint(0, h - ch + 1, (b,), generator=gen).to(images.device)
        ox = torch.randint(0, w - cw + 1, (b,), generator=gen).to(images.device)
        rows = (oy[:, None] + torch.arange(ch, device=images.device))[:, :, None]
        cols = (ox[:, None] + torch.arange(cw, device=images.device))[:, None, :]
        batch = torch.arange(b, device=images.device)[:, None, None]
        images = images[batch, 0, rows, cols].unsqueeze(1)
        masks = masks[batch, 0, rows, cols].unsqueeze(1)
    return images, masks


class _LossSum:
    """A sum of batch losses times batch sizes, kept on the training device: reading each
    batch's loss on the host would wait for the device at every step.

    float64, each term ``float64(loss) * n`` added in turn: the very operations of a Python
    float accumulator (products and sums of doubles, rounded alike), so the sum is the same
    bits as ``total += float(loss) * n``.
    """

    def __init__(self, device: torch.device) -> None:
        self.total = torch.zeros((), dtype=torch.float64, device=device)

    def add(self, loss: Tensor, n: int) -> None:
        self.total.add_(loss.detach().to(torch.float64) * n)

    def value(self) -> float:
        return float(self.total)


@torch.no_grad()
def _validate(
    model: nn.Module,
    images: Tensor,
    masks: Tensor,
    batch_size: int,
    device: torch.device,
    loss: str,
) -> dict[str, float]:
    model.eval()
    scores = SegmentationScores()
    loss_sum = _LossSum(device)
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].to(device)
        y = masks[start : start + batch_size].to(device)
        logits = check_logits(model(x), y, "model output")
        loss_sum.add(segmentation_loss(logits, y, loss), x.shape[0])
        scores.update(logits_to_mask(logits), y)
    r = scores.compute()
    return {
        "val_loss": loss_sum.value() / images.shape[0],
        "val_iou": r["iou"],
        "val_dice": r["dice"],
        "val_iou_mean": r["iou_mean"],
    }


@on_model_threads(lambda args: args["device"])
def train_segmenter(
    model: nn.Module,
    train_images: Tensor,
    train_masks: Tensor,
    val_images: Tensor,
    val_masks: Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device | str = "cpu",
    loss: str = "bce_dice",
    crop: int | None = None,
    init: bool = True,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train a segmenter with Adam, keeping the epoch with the best validation IoU.

    Each epoch shuffles the training set, applies random flips (horizontal, vertical and, for
    square images, transposition: the 8 symmetries of the square) and, with ``crop``, a random
    ``crop x crop`` window per image (4x fewer pixels per step at 128 of 256; validation always
    uses whole images). The model is then scored on the validation set in eval mode.

    Args:
        model: a module mapping ``(B, 1, H, W)`` to ``(B, 1|2, H, W)`` logits, e.g.
            :class:`synthesis.models.unet.UNet`. Moved to ``device``; left in eval mode holding the
            best weights.
        train_images: ``(N, 1, H, W)`` float32, already normalised (:func:`synthesis.normalize.zscore`).
        train_masks: ``(N, 1, H, W)`` bool (or 0/1) ground truth.
        val_images: ``(M, 1, H', W')`` float32, normalised.
        val_masks: ``(M, 1, H', W')`` bool (or 0/1).
        epochs: number of passes over the training set (>= 1).
        batch_size: images per optimiser step (>= 1).
        lr: Adam learning rate (> 0).
        seed: seeds the weight initialisation (when ``init``) and the data order/augmentation.
        device: where to train.
        loss: one of :data:`LOSSES`.
        crop: optional random-crop size for training (None: whole images).
        init: re-initialise the weights from ``seed`` first (False: fine-tune as given).
        progress: called as ``progress(epoch, record)`` after every epoch.

    Returns:
        A :class:`TrainResult`.

    Raises:
        TypeError, ValueError: malformed images or masks, or invalid settings.
    """
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1. Got {value!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0. Got {lr!r}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}. Got {loss!r}")
    if crop is not None and (isinstance(crop, bool) or not isinstance(crop, int) or crop < 1):
        raise ValueError(f"crop must be None or an int >= 1. Got {crop!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int. Got {seed!r}")
    check_images(train_images, "train_images", nonnegative=False)
    train_masks = check_mask(train_masks, train_images, "train_masks", require_foreground=False)
    check_images(val_images, "val_images", nonnegative=False)
    val_masks = check_mask(val_masks, val_images, "val_masks", require_foreground=False)

    device = torch.device(device)
    if init:
        init_weights(model, seed)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = train_images.shape[0]
    settings: dict[str, Any] = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "optimizer": "adam",
        "loss": loss,
        "seed": seed,
        "crop": crop,
        "augmentation": "random dihedral flips" + (f", random {crop}px crops" if crop else ""),
        "normalization": "per-image z-score",
        "selection": "best validation IoU (aggregate over pixels)",
        "train_images": n,
        "val_images": val_images.shape[0],
        "device": str(device),
        "torch": torch.__version__,
    }
    best: TrainResult | None = None
    history: list[dict[str, float]] = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=gen)
        loss_sum = _LossSum(device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            x, y = _augment(train_images[idx], train_masks[idx], gen, crop)
            x, y = x.to(device), y.to(device)
            logits = check_logits(model(x), y, "model output")
            batch_loss = segmentation_loss(logits, y, loss)
            optimizer.zero_grad(set_to_none=True)
            batch_loss.backward()
            optimizer.step()
            loss_sum.add(batch_loss, idx.numel())
        record = {"epoch": epoch, "train_loss": loss_sum.value() / n}
        record.update(_validate(model, val_images, val_masks, batch_size, device, loss))
        record["seconds"] = time.perf_counter() - t0
        history.append(record)
        logger.info(
            "epoch %d/%d: train loss %.4f, val loss %.4f, val IoU %.4f (%.1f s)",
            epoch,
            epochs,
            record["train_loss"],
            record["val_loss"],
            record["val_iou"],
            record["seconds"],
        )
        if best is None or record["val_iou"] > best.best_val_iou:
            state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            best = TrainResult(state, best_val_iou=record["val_iou"], best_epoch=epoch)
        if progress is not None:
            progress(epoch, dict(record))
    assert best is not None  # epochs >= 1
    optimizer.zero_grad(set_to_none=True)
    model.load_state_dict(best.state_dict)
    model.eval()
    settings["best_epoch"] = best.best_epoch
    settings["best_val_iou"] = best.best_val_iou
    return TrainResult(
        state_dict=best.state_dict,
        history=history,
        best_val_iou=best.best_val_iou,
        best_epoch=best.best_epoch,
        settings=copy.deepcopy(settings),
    )

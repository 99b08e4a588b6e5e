"""Segmentation scores of the benchmark: IoU, Dice and robustness.

IoU and Dice are computed on the foreground (structure) class of binary masks. A prediction
and a target that are both empty agree perfectly, so both scores are then defined as 1.0
(the usual convention: an image without structure that the model leaves empty is not an
error); when only one of the two is empty the score is 0.0.

Robustness (``docs/definitions.md#normalisation-and-scores``) is ``100 * IoU(split) / IoU(reference)``.

Consistency (:func:`consistency`) needs no ground truth: the IoU of a model's prediction on a
degraded image against its own prediction on the same image undegraded (for real images
that have no manual masks). :class:`ConsistencyScores` accumulates it over a split: the
aggregate (intersections and unions of the two predictions summed over every pixel) and the
per-image mean.

:class:`SegmentationScores` accumulates over a whole split and reports both the aggregate
scores (intersections and unions summed over every pixel of every image, which weights large
structures more) and the mean of the per-image scores (every image counts the same).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

__all__ = [
    "ConsistencyScores",
    "SegmentationScores",
    "check_logits",
    "consistency",
    "dice",
    "iou",
    "iou_of_counts",
    "logits_to_mask",
    "robustness",
]

logger = logging.getLogger(__name__)


def check_logits(logits: object, like: Tensor | None = None, name: str = "logits") -> Tensor:
    """Check one- or two-channel segmentation logits ``(B, 1|2, H, W)`` and return them.

    Args:
        logits: the model output.
        like: optional ``(B, 1, H, W)`` input or mask the logits must match in batch and size.
        name: how the value is called in error messages.

    Returns:
        The logits, unchanged.

    Raises:
        TypeError: not a floating-point tensor (e.g. a model returning a dict or tuple).
        ValueError: not 4-D, not one or two channels, or batch/size differing from ``like``.
    """
    if not isinstance(logits, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape (B, 1, H, W) or (B, 2, H, W). "
            f"Got {type(logits).__name__}"
        )
    if not logits.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor. Got dtype {logits.dtype}")
    if logits.dim() != 4 or logits.shape[1] not in (1, 2):
        raise ValueError(
            f"{name} must have shape (B, 1, H, W) (one foreground logit) or (B, 2, H, W) "
            f"(background/foreground logits). Got {tuple(logits.shape)}"
        )
    if like is not None:
        want = (like.shape[0], like.shape[-2], like.shape[-1])
        got = (logits.shape[0], logits.shape[-2], logits.shape[-1])
        if want != got:
            raise ValueError(
                f"{name} must match the input in batch size and image size (B, H, W) = {want}. "
                f"Got {tuple(logits.shape)}"
            )
    return logits


def logits_to_mask(logits: Tensor) -> Tensor:
    """Foreground mask of one- or two-channel logits.

    One channel: foreground where the logit is > 0 (sigmoid > 0.5, the spec's threshold).
    Two channels: foreground where channel 1 is strictly larger than channel 0 (argmax; a tie
    goes to background).

    Args:
        logits: ``(B, 1, H, W)`` or ``(B, 2, H, W)`` float tensor.

    Returns:
        ``(B, 1, H, W)`` bool tensor.

    Raises:
        TypeError, ValueError: see :func:`check_logits`.

    Example:
        >>> logits_to_mask(torch.tensor([[[[-1.0, 2.0]]]])).tolist()
        [[[[False, True]]]]
        >>> logits_to_mask(torch.tensor([[[[0.0, 1.0]], [[1.0, 0.0]]]])).tolist()
        [[[[True, False]]]]
    """
    check_logits(logits)
    if logits.shape[1] == 1:
        return logits > 0
    return logits[:, 1:2] > logits[:, 0:1]


def _check_pair(
    pred: object, target: object, names: tuple[str, str] = ("pred", "target")
) -> tuple[Tensor, Tensor]:
    for name, value in zip(names, (pred, target), strict=True):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a bool torch.Tensor. Got {type(value).__name__}")
        if value.dtype != torch.bool:
            raise TypeError(
                f"{name} must be a bool tensor (use logits_to_mask or mask != 0). Got dtype {value.dtype}"
            )
        if value.dim() < 2:
            raise ValueError(
                f"{name} must have a batch dimension (B, ...). Got {tuple(value.shape)}"
            )
    if pred.shape != target.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape. Got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    return pred, target


def _counts(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image intersection, |pred| and |target| (int64, ``(B,)``)."""
    p = pred.flatten(1)
    t = target.flatten(1)
    return (p & t).sum(1), p.sum(1), t.sum(1)


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """num / den as float64, 1.0 where den == 0 (both masks empty)."""
    num = num.to(torch.float64)
    den = den.to(torch.float64)
    return torch.where(den > 0, num / den.clamp_min(1), torch.ones_like(den))


def iou(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image foreground IoU ``|P & T| / |P | T|``; 1.0 when both masks are empty.

    Args:
        pred: bool ``(B, ...)`` predicted foreground, e.g. ``(B, 1, H, W)``.
        target: bool tensor of the same shape, the ground truth.

    Returns:
        ``(B,)`` float64 tensor in [0, 1].

    Raises:
        TypeError: non-tensor or non-bool input.
        ValueError: shapes differ or no batch dimension.

    Example:
        >>> p = torch.tensor([[True, True, False, False]])
        >>> t = torch.tensor([[True, False, True, False]])
        >>> iou(p, t).tolist()
        [0.3333333333333333]
    """
    pred, target = _check_pair(pred, target)
    inter, n_pred, n_target = _counts(pred, target)
    return _ratio(inter, n_pred + n_target - inter)


def dice(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image foreground Dice ``2 |P & T| / (|P| + |T|)``; 1.0 when both masks are empty.

    Args:
        pred: bool ``(B, ...)`` predicted foreground.
        target: bool tensor of the same shape, the ground truth.

    Returns:
        ``(B,)`` float64 tensor in [0, 1].

    Raises:
        TypeError: non-tensor or non-bool input.
        ValueError: shapes differ or no batch dimension.
    """
    pred, target = _check_pair(pred, target)
    inter, n_pred, n_target = _counts(pred, target)
    return _ratio(2 * inter, n_pred + n_target)


def consistency(pred_degraded: Tensor, pred_clean: Tensor) -> Tensor:
    """Per-image consistency: the foreground IoU of a model's binary prediction on a degraded
    image against its own binary prediction on the same image undegraded,
    ``|D & C| / |D | C|``; 1.0 when both predictions are empty (as :func:`iou`). It needs no
    ground truth: it measures how much the degradation changes the model's answer, not
    whether the answer is right.

    Args:
        pred_degraded: bool ``(B, H, W)`` or ``(B, 1, H, W)`` prediction on the degraded images.
        pred_clean: bool tensor of the same shape, the prediction on the clean images.

    Returns:
        ``(B,)`` float64 tensor in [0, 1].

    Raises:
        TypeError: non-tensor or non-bool input.
        ValueError: shapes differ, or not ``(B, H, W)`` / ``(B, 1, H, W)``.

    Example:
        >>> d = torch.tensor([[[True, True], [False, False]], [[False, False], [False, False]]])
        >>> c = torch.tensor([[[True, False], [False, False]], [[False, False], [False, False]]])
        >>> consistency(d, c).tolist()
        [0.5, 1.0]
    """
    inter, union = _consistency_counts(pred_degraded, pred_clean)
    return _ratio(inter, union)


def _consistency_counts(pred_degraded: Tensor, pred_clean: Tensor) -> tuple[Tensor, Tensor]:
    """Per image, the intersection and union of the two predictions (checked as
    :func:`consistency` says)."""
    pred_degraded, pred_clean = _check_pair(
        pred_degraded, pred_clean, ("pred_degraded", "pred_clean")
    )
    shape = tuple(pred_degraded.shape)
    if not (len(shape) == 3 or (len(shape) == 4 and shape[1] == 1)):
        raise ValueError(
            f"pred_degraded and pred_clean must have shape (B, H, W) or (B, 1, H, W). Got {shape}"
        )
    inter, n_degraded, n_clean = _counts(pred_degraded, pred_clean)
    return inter, n_degraded + n_clean - inter


def robustness(iou_split: float | Tensor, iou_reference: float | Tensor) -> float:
    """Robustness of a split, ``100 * iou_split / iou_reference`` (spec section 2).

    Args:
        iou_split: IoU on the degraded split, in [0, 1].
        iou_reference: IoU on the reference (``test``) split, in (0, 1].

    Returns:
        The robustness in percent (100 = no loss; may exceed 100 if the split scores higher).

    Raises:
        ValueError: an IoU outside [0, 1] or a zero reference IoU (robustness undefined).
    """
    split = float(iou_split)
    ref = float(iou_reference)
    for name, value in (("iou_split", split), ("iou_reference", ref)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be an IoU in [0, 1]. Got {value}")
    if ref == 0.0:
        raise ValueError("iou_reference must be > 0: robustness is undefined. Got 0.0")
    return 100.0 * split / ref


def iou_of_counts(intersection: float, union: float) -> float:
    """Aggregate IoU from pixel counts summed over images: ``intersection / union``, 1.0 when
    the union is empty (no foreground predicted or true anywhere).

    Example:
        >>> iou_of_counts(30, 40), iou_of_counts(0, 0)
        (0.75, 1.0)
    """
    return intersection / union if union else 1.0


class SegmentationScores:
    """Accumulates IoU and Dice over a split, batch by batch.

    Example:
        >>> scores = SegmentationScores()
        >>> scores.update(torch.tensor([[True, False]]), torch.tensor([[True, True]]))
        >>> scores.update(torch.tensor([[False, False]]), torch.tensor([[False, False]]))
        >>> r = scores.compute()
        >>> r["iou"], r["iou_mean"], r["images"]
        (0.5, 0.75, 2)
    """

    #: The accumulators, in the order of :meth:`state`.
    STATE = ("inter", "pred", "target", "iou_sum", "dice_sum", "images", "pixels")

    def __init__(self) -> None:
        self.reset()

    def state(self) -> list[float]:
        """The accumulators as numbers (counts are exact in float64 below 2**53): what
        ranks that scored different splits sum (adding zeros leaves a value unchanged)."""
        return [float(getattr(self, f"_{k}")) for k in self.STATE]

    @classmethod
    def from_state(cls, values: list[float]) -> SegmentationScores:
        """The scores whose :meth:`state` is ``values``."""
        scores = cls()
        for k, v in zip(cls.STATE, values, strict=True):
            setattr(scores, f"_{k}", v if k in ("iou_sum", "dice_sum") else int(v))
        return scores

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._inter = 0
        self._pred = 0
        self._target = 0
        self._iou_sum = 0.0
        self._dice_sum = 0.0
        self._images = 0
        self._pixels = 0

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch of predictions and ground-truth masks (bool, same shape ``(B, ...)``).

        Raises:
            TypeError, ValueError: see :func:`iou`.
        """
        pred, target = _check_pair(pred, target)
        inter, n_pred, n_target = _counts(pred, target)
        self._inter += int(inter.sum())
        self._pred += int(n_pred.sum())
        self._target += int(n_target.sum())
        self._iou_sum += float(_ratio(inter, n_pred + n_target - inter).sum())
        self._dice_sum += float(_ratio(2 * inter, n_pred + n_target).sum())
        self._images += pred.shape[0]
        self._pixels += pred.numel()

    def compute(self) -> dict[str, float | int]:
        """Scores of everything added so far.

        Returns:
            ``iou`` and ``dice``: aggregate over all pixels of all images (1.0 if every mask
            and prediction was empty); ``iou_mean`` and ``dice_mean``: mean of the per-image
            scores; ``images``, ``pixels``, ``foreground_pixels`` (ground truth) and
            ``predicted_pixels``: counts.

        Raises:
            ValueError: nothing was added.
        """
        if self._images == 0:
            raise ValueError("SegmentationScores.compute needs at least one update. Got 0 images")
        union = self._pred + self._target - self._inter
        total = self._pred + self._target
        return {
            "iou": iou_of_counts(self._inter, union),
            "dice": 2 * self._inter / total if total else 1.0,
            "iou_mean": self._iou_sum / self._images,
            "dice_mean": self._dice_sum / self._images,
            "images": self._images,
            "pixels": self._pixels,
            "foreground_pixels": self._target,
            "predicted_pixels": self._pred,
        }


class ConsistencyScores:
    """Accumulates :func:`consistency` over a split, batch by batch: the aggregate
    (intersection and union of the two predictions summed over every pixel of every image,
    :func:`iou_of_counts`) and the mean of the per-image scores.

    Example:
        >>> scores = ConsistencyScores()
        >>> scores.update(torch.tensor([[[True, True]]]), torch.tensor([[[True, False]]]))
        >>> scores.update(torch.tensor([[[False, False]]]), torch.tensor([[[False, False]]]))
        >>> r = scores.compute()
        >>> r["consistency"], r["consistency_mean"], r["images"]
        (0.5, 0.75, 2)
    """

    #: The accumulators, in the order of :meth:`state`.
    STATE = ("inter", "union", "consistency_sum", "images")

    def __init__(self) -> None:
        self._inter = 0
        self._union = 0
        self._consistency_sum = 0.0
        self._images = 0

    def state(self) -> list[float]:
        """The accumulators as numbers (counts are exact in float64 below 2**53): what ranks
        that scored different splits sum (adding zeros leaves a value unchanged)."""
        return [float(getattr(self, f"_{k}")) for k in self.STATE]

    @classmethod
    def from_state(cls, values: list[float]) -> ConsistencyScores:
        """The scores whose :meth:`state` is ``values``."""
        scores = cls()
        for k, v in zip(cls.STATE, values, strict=True):
            setattr(scores, f"_{k}", v if k == "consistency_sum" else int(v))
        return scores

    def update(self, pred_degraded: Tensor, pred_clean: Tensor) -> None:
        """Add a batch of predictions on degraded images and on the same images undegraded
        (bool, ``(B, H, W)`` or ``(B, 1, H, W)``, row for row).

        Raises:
            TypeError, ValueError: see :func:`consistency`.
        """
        inter, union = _consistency_counts(pred_degraded, pred_clean)
        self._inter += int(inter.sum())
        self._union += int(union.sum())
        self._consistency_sum += float(_ratio(inter, union).sum())
        self._images += pred_degraded.shape[0]

    def compute(self) -> dict[str, float | int]:
        """``consistency`` (aggregate), ``consistency_mean`` (per image), ``intersection``,
        ``union`` and ``images``.

        Raises:
            ValueError: nothing was added.
        """
        if self._images == 0:
            raise ValueError("ConsistencyScores.compute needs at least one update. Got 0 images")
        return {
            "consistency": iou_of_counts(self._inter, self._union),
            "consistency_mean": self._consistency_sum / self._images,
            "intersection": self._inter,
            "union": self._union,
            "images": self._images,
        }

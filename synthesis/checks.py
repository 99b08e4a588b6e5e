"""The one input-checking helper of :mod:`synthesis`.

Messages say what was expected and end with "Got X", in the style of torchvision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def check_images(x: object, name: str = "x", *, nonnegative: bool = True) -> Tensor:
    """Check a float image batch of shape ``(B, 1, H, W)`` and return it.

    Raises:
        TypeError: not a floating-point tensor.
        ValueError: wrong shape, non-finite or (with ``nonnegative``) negative values.
    """
    if not isinstance(x, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape (B, 1, H, W). Got {type(x).__name__}"
        )
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor. Got dtype {x.dtype}")
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"{name} must have shape (B, 1, H, W). Got {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"{name} must not be empty. Got shape {tuple(x.shape)}")
    # One pass for both checks (isfinite().all() cost ~20x more); NaN propagates to min and max.
    lo, hi = (float(v) for v in torch.aminmax(x))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} must be finite. Got NaN or inf values")
    if nonnegative and lo < 0:
        raise ValueError(f"{name} must be non-negative (a photon rate). Got minimum {lo:g}")
    return x


def check_mask(
    mask: object, like: Tensor, name: str = "mask", *, require_foreground: bool = True
) -> Tensor:
    """Check a binary mask matching ``like`` (``(B, 1, H, W)``) and return it as bool.

    Raises:
        TypeError: not a tensor.
        ValueError: wrong shape, values other than 0/1, or (with ``require_foreground``) a
            sample without foreground or without background.
    """
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor. Got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(like.shape):
        raise ValueError(
            f"{name} must have the image shape {tuple(like.shape)}. Got {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        bad = (mask != 0) & (mask != 1)
        if bool(bad.any()):
            raise ValueError(
                f"{name} must be binary (0/1). Got values such as {float(mask[bad][0]):g}"
            )
        mask = mask != 0
    mask = mask.to(like.device)
    if require_foreground:
        check_foreground(mask.flatten(1).sum(1), mask[0].numel(), name)
    return mask


def check_foreground(counts: Tensor, total: int, name: str = "mask") -> None:
    """Raise unless every sample's foreground count is strictly between 0 and ``total``.

    Raises:
        ValueError: a sample without foreground or without background (SNR undefined).
    """
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if empty:
        raise ValueError(
            f"{name} has no foreground in sample(s) {empty}: SNR is undefined. Got an empty mask"
        )
    full = torch.nonzero(counts == total).flatten().tolist()
    if full:
        raise ValueError(
            f"{name} has no background in sample(s) {full}: SNR is undefined. Got an all-foreground mask"
        )


def per_sample(
    value: float | Sequence[float] | Tensor,
    batch: int,
    name: str,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    positive: bool = False,
    nonnegative: bool = False,
) -> Tensor:
    """Broadcast a scalar, a ``(1,)`` or a ``(B,)`` value to a ``(B,)`` tensor.

    Raises:
        ValueError: wrong length, non-finite, or violating ``positive``/``nonnegative``.
    """
    t = torch.as_tensor(value, dtype=dtype, device=device)
    if t.dim() == 0:
        t = t.reshape(1)
    if t.dim() != 1 or t.shape[0] not in (1, batch):
        raise ValueError(
            f"{name} must be a scalar or have shape ({batch},). Got shape {tuple(t.shape)}"
        )
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite. Got {t.tolist()}")
    if positive and bool((t <= 0).any()):
        raise ValueError(f"{name} must be > 0. Got {t.tolist()}")
    if nonnegative and bool((t < 0).any()):
        raise ValueError(f"{name} must be >= 0. Got {t.tolist()}")
    return t.expand(batch).contiguous()


def check_seeds(seeds: object, batch: int, device: torch.device | str | None = None) -> Tensor:
    """Return per-row seeds as an int64 ``(B,)`` tensor of values in ``[0, 2**63)``.

    Raises:
        TypeError: a floating-point seed.
        ValueError: wrong length or a negative seed.
    """
    t = torch.as_tensor(seeds, device=device)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise TypeError(f"seeds must be integers. Got dtype {t.dtype}")
    t = t.to(torch.int64)
    if t.dim() == 0:
        t = t.reshape(1)
    if t.dim() != 1 or t.shape[0] not in (1, batch):
        raise ValueError(
            f"seeds must be an int or have shape ({batch},). Got shape {tuple(t.shape)}"
        )
    if bool((t < 0).any()):
        raise ValueError(f"seeds must be >= 0. Got {t.tolist()}")
    return t.expand(batch).contiguous()

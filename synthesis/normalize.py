"""Model input normalisation, defined once: training, attacks, ``evaluate`` and ``collate``
all call these.

The per-image z-score is the authors' convention and the one the reference models use:
``z = (x - mean(x)) / max(std(x), 1e-6)`` over each image's pixels, with the *population*
standard deviation (divide by N, ``correction=0``). The floor maps a constant image to zeros
instead of NaN. A z-score is invariant to affine maps of the image, so a stored ADU image and
its min-max scaled version (the attack space) give the model the same input. Its sums are
taken in a fixed order (:mod:`synthesis.thread_invariant`), so its bits do not depend on the thread count.
Definition: ``docs/definitions.md#normalisation-and-scores``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch-free import: the command line reads NORMALIZATIONS
    from torch import Tensor

__all__ = ["NORMALIZATIONS", "STD_FLOOR", "minmax", "normalize", "zscore"]

#: What ``normalize(x, how)`` accepts.
NORMALIZATIONS: tuple[str, ...] = ("zscore", "minmax", "none")
#: Floor of the standard deviation (and of the min-max range).
STD_FLOOR = 1e-6


def _check(images: Tensor) -> None:
    import torch

    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise TypeError(
            "images must be a floating-point torch.Tensor. "
            f"Got {getattr(images, 'dtype', type(images).__name__)}"
        )
    if images.dim() != 4:
        raise ValueError(f"images must have shape (B, C, H, W). Got {tuple(images.shape)}")


def zscore(images: Tensor) -> Tensor:
    """Per-image z-score of ``(B, C, H, W)`` float images (population std, floored).

    Differentiable (attacks take gradients through it).

    Raises:
        TypeError: not a floating-point tensor.
        ValueError: not 4-D.

    Example:
        >>> import torch
        >>> zscore(torch.tensor([[[[100.0, 300.0]]]])).tolist()
        [[[[-1.0, 1.0]]]]
    """
    from synthesis.thread_invariant import zscore_stable

    _check(images)
    # Fixed-order sums (forward and backward): one image's mean is otherwise split across
    # threads, and a 1-thread worker and a 2-thread process would attack differently.
    return zscore_stable(images, STD_FLOOR)


def minmax(images: Tensor) -> Tensor:
    """Per-image min-max scaling of ``(B, C, H, W)`` float images to [0, 1]."""
    _check(images)
    lo = images.amin(dim=(1, 2, 3), keepdim=True)
    hi = images.amax(dim=(1, 2, 3), keepdim=True)
    return (images - lo) / (hi - lo).clamp_min(STD_FLOOR)


def normalize(images: Tensor, how: str = "zscore") -> Tensor:
    """``zscore``, ``minmax`` or ``none`` (the images unchanged) by name.

    Raises:
        ValueError: an unknown ``how``.
    """
    if how == "zscore":
        return zscore(images)
    if how == "minmax":
        return minmax(images)
    if how == "none":
        return images
    raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}. Got {how!r}")

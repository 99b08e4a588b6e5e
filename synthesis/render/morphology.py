"""Masks and labels for the denoiser's models: grow, shrink, interiors, components, means.

Tensor helpers shared by :mod:`synthesis.render.noise_model` (background and foreground
regions), :mod:`synthesis.render.clean_model` (objects and their ranks) and
:mod:`synthesis.render.denoise` (residual noise):

- :func:`dilate`, :func:`erode` (square structuring elements, by max-pooling) and
  :func:`interior` (pixels whose 3x3 neighbourhood lies in a region, off the image border);
  the background measured is outside the mask dilated by :data:`BG_MARGIN_PX`, the
  foreground inside it eroded by :data:`FG_MARGIN_PX`;
- :func:`masked_mean` (per image) and :func:`object_means` (per labelled object);
- :func:`label_components` (8-connected components) and :func:`rank_labels` (labels
  renumbered per row, so draws indexed by them do not depend on the batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "BG_MARGIN_PX",
    "FG_MARGIN_PX",
    "dilate",
    "erode",
    "interior",
    "label_components",
    "masked_mean",
    "object_means",
    "rank_labels",
]

#: Pixels between the mask and the background region measured (blurred object edges).
BG_MARGIN_PX: int = 3
#: Pixels removed from the foreground edge before measuring inside objects.
FG_MARGIN_PX: int = 2


def dilate(mask: Tensor, r: int) -> Tensor:
    """``(B, 1, H, W)`` bool ``mask`` grown by a ``(2 r + 1)`` square (unchanged for r <= 0)."""
    return F.max_pool2d(mask.float(), 2 * r + 1, stride=1, padding=r) > 0 if r > 0 else mask


def erode(mask: Tensor, r: int) -> Tensor:
    """``(B, 1, H, W)`` bool ``mask`` shrunk by a ``(2 r + 1)`` square (unchanged for r <= 0)."""
    return ~dilate(~mask, r) if r > 0 else mask


def masked_mean(x: Tensor, region: Tensor) -> Tensor:
    """``(B,)`` mean of ``x`` over ``region`` per image (0 where the region is empty)."""
    n = region.flatten(1).sum(1).clamp_min(1)
    return (x * region).flatten(1).sum(1) / n


def interior(region: Tensor | None, images: Tensor) -> Tensor:
    """Pixels whose 3x3 neighbourhood lies in ``region`` and not on the image border."""
    if region is None:
        region = torch.ones_like(images, dtype=torch.bool)
    inner = erode(region, 1)
    inner[..., 0, :] = False
    inner[..., -1, :] = False
    inner[..., :, 0] = False
    inner[..., :, -1] = False
    return inner


def label_components(mask: Tensor) -> Tensor:
    """8-connected components: each foreground pixel gets ``1 +`` the largest flat index of its
    component, background 0. ``(B, 1, H, W)`` bool -> ``(B, 1, H, W)`` int64.

    Labels propagate by 3x3 max-pooling restricted to the mask until nothing changes (as many
    rounds as the longest geodesic radius of a component; convergence is checked every 8).
    """
    if mask.dtype != torch.bool:
        mask = mask != 0
    b, _, h, w = mask.shape
    # float32 holds the indices exactly up to 2**24 pixels (4x faster than float64 here).
    dtype = torch.float32 if h * w < 2**24 else torch.float64
    idx = torch.arange(1, h * w + 1, device=mask.device, dtype=dtype).view(1, 1, h, w)
    lab = torch.where(
        mask, idx.expand(b, 1, h, w), torch.zeros((), dtype=dtype, device=mask.device)
    )
    while True:
        prev = lab
        for _ in range(8):
            lab = F.max_pool2d(lab, 3, stride=1, padding=1).mul_(mask)
        if torch.equal(lab, prev):
            return lab.long()


def rank_labels(labels: Tensor) -> Tensor:
    """Per row, labels renumbered 1..L in increasing order (0 stays 0): ``(B, 1, H, W)``.

    A row's ranks depend only on its own labels, so draws indexed by rank do not depend on
    the batch.
    """
    b = labels.shape[0]
    flat = torch.cat(
        [torch.zeros(b, 1, dtype=torch.long, device=labels.device), labels.flatten(1).long()], 1
    )
    span = int(flat.max()) + 1
    offsets = torch.arange(b, device=labels.device) * span
    uniq, inv = torch.unique(flat + offsets[:, None], return_inverse=True)
    first = torch.searchsorted(uniq, offsets)
    return (inv - first[:, None])[:, 1:].reshape(labels.shape)


def object_means(images: Tensor, labels: Tensor) -> Tensor:
    """Mean intensity of every labelled object of the batch, 1-D float64."""
    b = images.shape[0]
    flat_lab = labels.flatten(1)
    offset = (torch.arange(b, device=labels.device) * (flat_lab.shape[1] + 1))[:, None]
    key = torch.where(flat_lab > 0, flat_lab + offset, torch.zeros_like(flat_lab)).flatten()
    uniq, inv = torch.unique(key, return_inverse=True)
    sums = torch.zeros(uniq.shape[0], dtype=torch.float64, device=images.device)
    cnt = torch.zeros_like(sums)
    sums.index_add_(0, inv, images.flatten().to(torch.float64))
    cnt.index_add_(0, inv, torch.ones_like(images.flatten(), dtype=torch.float64))
    keep = uniq > 0
    return (sums / cnt)[keep]

"""Shared helpers of the procedural mask generators.

- :class:`_Draws`: the per-row scalar draws of a layout (a ``torch.Generator`` seeded with
  the row's seed), and :func:`_r` (parameters rounded for the per-row params).
- :func:`_smooth_field`: smooth (bicubic) fields from the finite normal noise of
  :func:`synthesis.rng.finite_normal`.
- Stamping (:func:`_patches`, :func:`_stamp_union`, :func:`_stamp_labels`): rasterising
  batches of shapes, each over its own patch, as a union or as instance labels.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from synthesis import rng

Range = tuple[float, float]


# ----------------------------------------------------------------------------- draws


class _Draws:
    """Scalar draws for a layout from a ``torch.Generator`` seeded with the row's seed.

    Draws come in blocks (a torch call per scalar cost ~10 us, most of a layout's time); the
    sequence is still a pure function of the seed and the order of the calls.
    """

    _BLOCK = 512

    def __init__(self, seed: int) -> None:
        self.g = torch.Generator().manual_seed(int(seed))
        self._uni = np.empty(0)
        self._nor = np.empty(0)

    def u(self, lo: float = 0.0, hi: float = 1.0) -> float:
        if self._uni.size == 0:
            self._uni = torch.rand(self._BLOCK, generator=self.g, dtype=torch.float64).numpy()
        x, self._uni = self._uni[0], self._uni[1:]
        return lo + (hi - lo) * float(x)

    def logu(self, lo: float, hi: float) -> float:
        return math.exp(self.u(math.log(lo), math.log(hi)))

    def n(self) -> float:
        return float(self.normals(1)[0])

    def normals(self, count: int) -> np.ndarray:
        if self._nor.size < count:
            more = torch.randn(max(self._BLOCK, count), generator=self.g, dtype=torch.float64)
            self._nor = np.concatenate([self._nor, more.numpy()])
        x, self._nor = self._nor[:count], self._nor[count:]
        return x


def _r(x: float) -> float:
    return round(float(x), 4)


# ----------------------------------------------------------------------------- smooth fields


def _smooth_field(seeds: Tensor, stream: int, size: int, cells: int) -> Tensor:
    """``(B, 2, size, size)`` smooth unit-rms (at the nodes) noise, bicubic between nodes."""
    nodes = rng.finite_normal(seeds, (2, cells + 1, cells + 1), stream)
    return F.interpolate(nodes, size=(size, size), mode="bicubic", align_corners=True)


# ----------------------------------------------------------------------------- stamping


def _patches(size: int, row: Tensor, cy: Tensor, cx: Tensor, half: Tensor, ratio_fn: Any) -> Any:
    """Yield ``(flat index, ratio, member)`` per chunk of shapes, over each shape's patch.

    Shape ``m`` covers the patch of side ``2 half[m] + 1`` around its centre
    ``(cy[m], cx[m])`` (continuous coordinates, pixel ``i`` spans ``[i, i + 1)``) in row
    ``row[m]``; ``ratio_fn(members, dy, dx)`` gives the normalised radius (<= 1 inside) of
    shapes ``members`` (an index tensor) at the offsets ``dy, dx`` ``(M, P, P)`` of the pixel
    centres. Shapes are processed by increasing size, each chunk with the patch of its
    largest (small nuclei do not pay for large ones). Only pixels inside a shape and inside
    the image are yielded; ``member`` is the shape index of each.
    """
    order = torch.argsort(half, stable=True)
    values, counts = torch.unique_consecutive(half[order], return_counts=True)
    chunks = []
    start = 0
    for h, n in zip(values.tolist(), counts.tolist(), strict=True):
        # Chunks of one patch size whose patches hold ~2M pixels (~50 MB transient).
        step = max(1, (1 << 21) // (2 * h + 1) ** 2)
        chunks += [(h, order[i : min(i + step, start + n)]) for i in range(start, start + n, step)]
        start += n
    for h, members in chunks:
        off = torch.arange(-h, h + 1, device=row.device)
        iy = torch.floor(cy[members]).long()[:, None, None] + off[None, :, None]
        ix = torch.floor(cx[members]).long()[:, None, None] + off[None, None, :]
        dy = iy.float() + 0.5 - cy[members, None, None]
        dx = ix.float() + 0.5 - cx[members, None, None]
        ratio = ratio_fn(members, dy, dx)
        inside = (ratio <= 1) & (iy >= 0) & (iy < size) & (ix >= 0) & (ix < size)
        sel = torch.nonzero(inside.reshape(-1)).flatten()
        flat = ((row[members, None, None] * size + iy) * size + ix).reshape(-1)[sel]
        yield flat, ratio.reshape(-1)[sel], members[sel // (2 * h + 1) ** 2]


def _stamp_union(batch: int, size: int, *args: Any) -> Tensor:
    """``(B, size, size)`` bool union of the shapes (arguments as :func:`_patches`)."""
    out = torch.zeros(batch * size * size, dtype=torch.bool, device=args[0].device)
    for flat, _, _ in _patches(size, *args):
        out[flat] = True
    return out.reshape(batch, size, size)


def _stamp_labels(batch: int, size: int, label: Tensor, *args: Any) -> Tensor:
    """``(B, size, size)`` int64 labels (0 = none) of the shapes (arguments as :func:`_patches`).

    Where shapes overlap, the least normalised radius wins: overlapping shapes are split
    along their curve of equal normalised radius.
    """
    sentinel = torch.iinfo(torch.int64).max
    keys = torch.full((batch * size * size,), sentinel, dtype=torch.int64, device=label.device)
    for flat, ratio, member in _patches(size, *args):
        # One int64 key per pixel and shape: quantised ratio in the high bits, label low.
        key = ((ratio.clamp(0, 1) * (1 << 20)).long() << 32) | label[member]
        keys.scatter_reduce_(0, flat, key, reduce="amin")
    hit = keys != sentinel
    out = torch.where(hit, keys & 0xFFFFFFFF, torch.zeros_like(keys))
    return out.reshape(batch, size, size)

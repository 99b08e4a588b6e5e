"""Rows grouped by a key: run a function once per group, reassemble in row order.

The blurs batch the images that share a sigma, and the renderer's textures the rows that
share a scale; :func:`by_key` is that one loop.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import torch
from torch import Tensor

__all__ = ["by_key"]


def by_key(
    keys: Sequence[Hashable], fn: Callable[[Tensor, Hashable], Tensor], device: torch.device
) -> Tensor:
    """``fn(rows, key)`` on the rows sharing each key (in sorted key order), reassembled in
    row order: ``out[rows] = fn(rows, key)``. With one key, ``fn`` gets every row and its
    result is returned as it is.

    Args:
        keys: one key per row (sortable, hashable).
        fn: maps the ``(n,)`` int64 row indices of a group and its key to ``(n, ...)`` rows.
        device: where the row indices are made.

    Example:
        >>> by_key([2, 1, 2], lambda rows, k: rows.float() * 10 + k, torch.device("cpu")).tolist()
        [2.0, 11.0, 22.0]
    """
    distinct = sorted(set(keys))
    if len(distinct) == 1:
        return fn(torch.arange(len(keys), device=device), distinct[0])
    out: Tensor | None = None
    for key in distinct:
        rows = torch.tensor([i for i, k in enumerate(keys) if k == key], device=device)
        part = fn(rows, key)
        if out is None:
            out = part.new_empty((len(keys), *part.shape[1:]))
        out[rows] = part
    assert out is not None
    return out

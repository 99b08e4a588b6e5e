"""Exact Poisson samples from the counter-based streams (:mod:`synthesis.rng.counter`).

:func:`poisson` is exact: sequential-search inversion below a mean of 10 and Hormann's PTRS
from 10 up (numpy's algorithms), in float64 from 32-bit uniforms. Draws: inversion uses
``sub`` 0 of the stream, PTRS round r uses subs 2r (u) and 2r + 1 (v). Every value is a pure
function of ``(row seed, stream, element index)``, like every other draw of :mod:`synthesis.rng`.

On CPU tensors :func:`poisson` runs a compiled kernel (:mod:`synthesis.rng.kernels`, Numba)
that computes every value with the same operations; the torch code below is the path of other
devices (``backend="torch"`` forces it on CPU, and tests compare the two bit for bit).

Scheduling of the torch code (CPU: blocks of ``_BLOCK`` = 2**17 elements, which stay in cache;
one block on other devices). Per-value loops would be Python loops; instead each block runs the
samplers as whole-array, in-place torch ops:

* the sampler of the block's majority runs on every element (placeholder rates where the
  other one works, overwritten after), the minority's on its gathered elements only, hashed
  where they are (finding and gathering a value costs ~20 in-place ops, so gathering the
  majority would cost more than computing extra values);
* inversion steps run on all values while more than ``_DENSE_MIN_FRACTION`` = 1/128 of them
  are undecided; PTRS runs its squeeze on all proposals and the exact log-density test on the
  ~35% the squeeze leaves (on all, masked, near rate 10 where it leaves more than half);
  rounds 2-3 of PTRS run inside the block on its rejected values;
* what is still undecided then (under 1/128 of the inversions, ~0.1-1% of PTRS values) is
  finished for all blocks of the call at once, so the per-op overhead of these small
  remainders is paid once per call.

None of this changes a value: a test compares :func:`poisson` bit for bit with the two
algorithms written per value in plain Python. Arithmetic avoids fused multiply-adds, whose
use by a vectorised loop could depend on an element's position.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from synthesis.checks import check_seeds
from synthesis.rng.constants import (
    HALF_LOG_2PI as _HALF_LOG_2PI,
)
from synthesis.rng.constants import (
    INVERSION_MAX_STEPS as _INVERSION_MAX_STEPS,
)
from synthesis.rng.constants import (
    LOG_FACTORIAL_TABLE as _LOG_FACTORIAL_TABLE,
)
from synthesis.rng.constants import (
    PTRS_MIN_RATE as _PTRS_MIN_RATE,
)
from synthesis.rng.counter import _bits, _dense_bits, _row_keys, _u32

__all__ = ["POISSON_BACKENDS", "poisson"]

_BLOCK = 1 << 17


#: Backends of :func:`poisson`: ``"auto"`` (the compiled kernel on CPU, torch elsewhere),
#: ``"torch"`` (whole-array torch ops, any device) and ``"compiled"`` (CPU only).
POISSON_BACKENDS: tuple[str, ...] = ("auto", "torch", "compiled")


def poisson(rate: Tensor, seeds: Tensor | int, stream: int, *, backend: str = "auto") -> Tensor:
    """Exact Poisson samples with per-element mean ``rate`` (shape ``(B, ...)``), as float32.

    Inversion by sequential search below a mean of 10, Hormann's transformed rejection with
    squeeze (PTRS, the algorithm of numpy's ``Generator.poisson``) from 10 up. Both are exact:
    no Gaussian approximation, which is wrong at the few-electron means of low-SNR images.
    Computed in float64 from 32-bit uniforms, so a sample's distribution differs from Poisson
    only by float64 rounding and the 2**-32 grid of the uniforms.

    Args:
        rate: means, float tensor of shape ``(B, ...)``, finite and >= 0.
        seeds: one int64 seed per row ``(B,)`` (or one int for all rows).
        stream: the purpose of the draw (an id of :mod:`synthesis.rng.streams`).
        backend: one of :data:`POISSON_BACKENDS`. Both backends compute every value with the
            same float64 operations (:mod:`synthesis.rng.kernels`); the compiled one runs
            one loop per value on the CPU, ~1.5-2x faster than the whole-array torch passes.

    Returns:
        float32 tensor of the shape of ``rate`` holding non-negative integers.

    Raises:
        TypeError: ``rate`` not a floating-point tensor, or float seeds.
        ValueError: negative or non-finite rates, seeds of the wrong length, an unknown
            backend, or ``"compiled"`` for a tensor that is not on the CPU.

    Example:
        >>> k = poisson(torch.full((2, 1000), 3.0), torch.tensor([5, 6]), stream=7)
        >>> k.shape, bool((k == k.round()).all()), abs(float(k.mean()) - 3.0) < 0.2
        (torch.Size([2, 1000]), True, True)
    """
    if not isinstance(rate, Tensor) or not rate.is_floating_point():
        raise TypeError(f"rate must be a floating-point tensor. Got {type(rate).__name__}")
    if rate.dim() == 0:
        raise ValueError("rate must have a batch dimension (B, ...). Got a scalar")
    if rate.numel():
        # One pass for both checks (isfinite and < 0 were ~10% of a call); NaN propagates.
        lo, hi = (float(v) for v in torch.aminmax(rate))
        if not (math.isfinite(lo) and math.isfinite(hi) and lo >= 0):
            raise ValueError("rate must be finite and >= 0. Got negative or non-finite values")
    if backend not in POISSON_BACKENDS:
        raise ValueError(f"backend must be one of {POISSON_BACKENDS}. Got {backend!r}")
    if backend == "compiled" and rate.device.type != "cpu":
        raise ValueError(f"the compiled backend runs on the CPU. Got a tensor on {rate.device}")
    batch = rate.shape[0]
    seeds = check_seeds(seeds, batch, rate.device)
    flat = rate.reshape(batch, -1)
    if backend != "torch" and rate.device.type == "cpu":
        return _poisson_compiled(flat, seeds, stream).reshape(rate.shape)
    n = flat.shape[1]
    keys = _KeyCache(seeds, stream)
    out = torch.empty((batch, n), dtype=torch.float32, device=rate.device)
    inv_tail: list[tuple[Tensor, ...]] = []
    ptrs_tail: list[Tensor] = []
    for r0, r1, c0, c1 in _blocks(batch, n, rate.device):
        k, inv_left, ptrs_left = _poisson_block(flat[r0:r1, c0:c1], keys, r0, r1, c0, c1)
        out[r0:r1, c0:c1] = k.reshape(r1 - r0, c1 - c0)
        # Undecided values, by flat position in ``out``: finished below for all blocks at
        # once, so the per-op overhead of these small remainders is paid once per call.
        if inv_left is not None:
            inv_tail.append((_global_pos(inv_left[0], r0, c0, c1 - c0, n), *inv_left[1:]))
        if ptrs_left is not None:
            ptrs_tail.append(_global_pos(ptrs_left, r0, c0, c1 - c0, n))
    out_flat = out.reshape(-1)
    if inv_tail:
        pos, *state = (torch.cat(parts) for parts in zip(*inv_tail, strict=True))
        out_flat[pos] = _inversion_steps(*state).to(torch.float32)
    if ptrs_tail:
        pos = torch.cat(ptrs_tail)
        lam = flat.reshape(-1)[pos].to(torch.float64)
        out_flat[pos] = _ptrs_rounds(lam, pos, n, keys).to(torch.float32)
    return out.reshape(rate.shape)


def _poisson_compiled(flat: Tensor, seeds: Tensor, stream: int) -> Tensor:
    """:func:`poisson` of ``(B, n)`` CPU rates by the Numba kernel, on torch's thread count."""
    from synthesis.rng import kernels as _kernels

    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.to(torch.float32)  # half precision: exact in float32
    out = _kernels.poisson_rows(flat.contiguous().numpy(), seeds.numpy(), stream)
    return torch.from_numpy(out)


def _blocks(batch: int, n: int, device: torch.device) -> list[tuple[int, int, int, int]]:
    """``(row0, row1, col0, col1)`` blocks of about ``_BLOCK`` elements on CPU, one elsewhere."""
    if device.type != "cpu":
        return [(0, batch, 0, n)]
    if n >= _BLOCK:
        return [
            (r, r + 1, c, min(n, c + _BLOCK)) for r in range(batch) for c in range(0, n, _BLOCK)
        ]
    rows = _BLOCK // max(n, 1)
    return [(r, min(batch, r + rows), 0, n) for r in range(0, batch, rows)]


class _KeyCache:
    """Row keys of each ``sub`` draw, computed once per call for all rows."""

    def __init__(self, seeds: Tensor, stream: int) -> None:
        self.seeds, self.stream = seeds, stream
        self._keys: dict[int, tuple[Tensor, Tensor]] = {}

    def __getitem__(self, sub: int) -> tuple[Tensor, Tensor]:
        if sub not in self._keys:
            self._keys[sub] = _row_keys(self.seeds, self.stream, sub)
        return self._keys[sub]

    def dense_u32(self, sub: int, r0: int, r1: int, c0: int, c1: int) -> Tensor:
        """Uniforms of block rows ``r0:r1``, columns ``c0:c1``, flattened (float64)."""
        k1, k2 = self[sub]
        return _u32(_dense_bits(k1[r0:r1], k2[r0:r1], c0, c1).reshape(-1))

    def some_u32(
        self, subs: tuple[int, ...], r0: int, r1: int, c0: int, c1: int, local: Tensor
    ) -> list[Tensor]:
        """Uniforms of the block's flat positions ``local`` only, one tensor per sub.

        For a minority of a block: hashing just those values beats hashing the whole block
        and gathering.
        """
        width = c1 - c0
        row_map, col_map = self._maps(r1 - r0, width, c0, local.device)
        row = _take(row_map, local)
        col = _take(col_map, local)
        out = []
        for sub in subs:
            k1, k2 = (_take(k[r0:r1], row) for k in self[sub])
            out.append(_u32(_bits(col, k1, k2)))
        return out

    def _maps(self, rows: int, width: int, c0: int, device: torch.device) -> tuple[Tensor, Tensor]:
        key = (rows, width, c0)
        if getattr(self, "_map_key", None) != key:
            self._map_key = key
            self._map = (
                torch.arange(rows, device=device).repeat_interleave(width),
                torch.arange(c0, c0 + width, dtype=torch.int32, device=device).repeat(rows),
            )
        return self._map


def _take(t: Tensor, idx: Tensor) -> Tensor:
    """``t[idx]`` for 1-D ``t``; ``index_select`` ran ~3x faster than indexing on CPU."""
    return torch.index_select(t, 0, idx)


def _global_pos(local: Tensor, r0: int, c0: int, width: int, n: int) -> Tensor:
    row = torch.div(local, width, rounding_mode="floor")
    return (row + r0) * n + (local - row * width) + c0


# Draws: inversion uses sub 0; PTRS round r (1, 2, ...) uses subs 2r (u) and 2r + 1 (v).
_SUB_INVERSION = 0
# Dense inversion steps continue while more than this fraction of the values is undecided;
# past it, the few values left are gathered (finding them costs ~25 in-place ops per value).
_DENSE_MIN_FRACTION = 1 / 128
# _INVERSION_MAX_STEPS = 200 caps the search: P(k > 200 | lam < 10) < 1e-200, so the cap only
# guards against a cdf stuck below u by rounding.


def _poisson_block(
    lam32: Tensor, keys: _KeyCache, r0: int, r1: int, c0: int, c1: int
) -> tuple[Tensor, tuple[Tensor, ...] | None, Tensor | None]:
    """First rounds of both samplers on one block ``(rows, cols)`` of rates.

    Returns the samples (float64, flat), the inversion state of undecided values (block flat
    positions first) and the block flat positions of rejected PTRS proposals.

    Each sampler runs on all its values at once with in-place ops; a block holding both kinds
    of rates is split once by gathers (cheaper than running both samplers on every value).
    Only what is still undecided after the dense rounds is gathered again. Values depend only
    on their counters, so this scheduling cannot change results (a test compares them with a
    per-value reference).
    """
    lam = lam32.reshape(-1).to(torch.float64)
    small = lam < _PTRS_MIN_RATE
    n_small = int(small.sum())
    total = lam.numel()
    if n_small == total:
        u = keys.dense_u32(_SUB_INVERSION, r0, r1, c0, c1)
        k, inv_left = _inversion_dense(lam, u)
        return k, inv_left, None
    if n_small == 0:
        u = keys.dense_u32(2, r0, r1, c0, c1)
        v = keys.dense_u32(3, r0, r1, c0, c1)
        k, rejected = _ptrs_dense(lam, u, v)
        return k, None, _ptrs_block_rounds(k, lam, rejected, keys, r0, r1, c0, c1)
    # Both kinds: the majority's sampler runs on the whole block (placeholder rates where the
    # other sampler works, results overwritten), the minority's on its gathered values only.
    if 2 * n_small >= total:
        u = keys.dense_u32(_SUB_INVERSION, r0, r1, c0, c1)
        k, inv_left = _inversion_dense(torch.where(small, lam, 0.0), u)
        i_l = torch.nonzero(~small).flatten()
        u, v = keys.some_u32((2, 3), r0, r1, c0, c1, i_l)
        k_l, rejected = _ptrs_dense(_take(lam, i_l), u, v)
        k.scatter_(0, i_l, k_l)
        if rejected is not None:
            rejected = _take(i_l, rejected)
        return k, inv_left, _ptrs_block_rounds(k, lam, rejected, keys, r0, r1, c0, c1)
    u = keys.dense_u32(2, r0, r1, c0, c1)
    v = keys.dense_u32(3, r0, r1, c0, c1)
    k, rejected = _ptrs_dense(torch.where(small, _PTRS_MIN_RATE, lam), u, v)
    if rejected is not None:  # placeholders are not sampled by PTRS: drop their rejections
        rejected = rejected[~_take(small, rejected)]
        rejected = rejected if rejected.numel() else None
    i_s = torch.nonzero(small).flatten()
    (u,) = keys.some_u32((_SUB_INVERSION,), r0, r1, c0, c1, i_s)
    k_s, inv_left = _inversion_dense(_take(lam, i_s), u)
    k.scatter_(0, i_s, k_s)
    if inv_left is not None:
        inv_left = (_take(i_s, inv_left[0]), *inv_left[1:])
    return k, inv_left, _ptrs_block_rounds(k, lam, rejected, keys, r0, r1, c0, c1)


# PTRS rounds run inside a block (while its values are in cache); the rejections left after
# them (~1% near rate 10, ~0.1% at 100) are finished for all blocks at once.
_PTRS_BLOCK_ROUNDS = 3


def _ptrs_block_rounds(
    k: Tensor,
    lam: Tensor,
    rejected: Tensor | None,
    keys: _KeyCache,
    r0: int,
    r1: int,
    c0: int,
    c1: int,
) -> Tensor | None:
    """PTRS rounds 2.._PTRS_BLOCK_ROUNDS for the block's rejected positions (writes ``k``)."""
    for round_ in range(2, _PTRS_BLOCK_ROUNDS + 1):
        if rejected is None:
            return None
        u, v = keys.some_u32((2 * round_, 2 * round_ + 1), r0, r1, c0, c1, rejected)
        k_r, again = _ptrs_dense(_take(lam, rejected), u, v)
        k.scatter_(0, rejected, k_r)  # rejected ones are overwritten in a later round
        rejected = _take(rejected, again) if again is not None else None
    return rejected


def _inversion_dense(lam: Tensor, u: Tensor) -> tuple[Tensor, tuple[Tensor, ...] | None]:
    """Sequential search on 1-D values, all at once while many are undecided.

    ``k`` counts the cdf values below ``u``: the cdf only grows, so once ``u <= cdf`` a value
    is settled and further steps leave it unchanged. Returns ``k`` and, for the values still
    undecided, ``(positions, lam, p, cdf, u, k, step)`` to continue with.
    """
    p = torch.exp(-lam)
    cdf = p.clone()
    go = torch.gt(u, cdf).to(torch.float64)
    k = go.clone()
    step = 0
    while step < _INVERSION_MAX_STEPS:
        left = int(go.sum())  # ~1/8 of a step: a pass and a sync
        if left == 0:
            return k, None
        if left < lam.numel() * _DENSE_MIN_FRACTION:
            where = torch.nonzero(go).flatten()
            steps = torch.full(where.shape, float(step), dtype=torch.float64, device=lam.device)
            return k, (where, *(_take(t, where) for t in (lam, p, cdf, u, k)), steps)
        step += 1
        p.mul_(lam).mul_(1.0 / step)
        cdf.add_(p)
        torch.gt(u, cdf, out=go)
        k.add_(go)
    return k, None


def _inversion_steps(
    lam: Tensor, p: Tensor, cdf: Tensor, u: Tensor, k: Tensor, step: Tensor
) -> Tensor:
    """Continue the sequential search of undecided values (1-D) from ``step``; returns k."""
    k = k.clone()
    where = torch.arange(lam.shape[0], device=lam.device)
    while where.numel():
        step = step + 1
        p = p * lam * (1.0 / step)
        cdf = cdf + p
        k[where] = step
        go_on = (u > cdf) & (step < _INVERSION_MAX_STEPS)
        where, lam, p, cdf, u, step = (t[go_on] for t in (where, lam, p, cdf, u, step))
    return k


def _ptrs_constants(lam: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Hormann's a, b and v_r of PTRS for rates ``lam`` >= 10 (float64)."""
    b = torch.sqrt(lam).mul_(2.53).add_(0.931)
    a = (b * 0.02483).add_(-0.059)
    vr = (3.6224 / (b - 2)).neg_().add_(0.9277)
    return a, b, vr


# Below this fraction of proposals left by the squeeze, the exact test runs on gathered
# values; above (rates near 10, where the squeeze settles only ~40%), on all of them,
# masked: there finding and gathering the rest cost about as much as testing everything.
_PTRS_GATHER_MAX_FRACTION = 0.5


def _ptrs_dense(lam: Tensor, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor | None]:
    """One PTRS round on 1-D rates >= 10 with uniforms ``u`` and ``v`` (float64, in (0, 1)).

    Returns the proposals ``k`` and the positions of the rejected ones (None if none). The
    squeeze settles most proposals (~65% at rate 80, ~40% near 10) with a few in-place ops;
    the exact log-density test decides the others.
    """
    a, b, vr = _ptrs_constants(lam)
    u = u - 0.5
    us = u.abs().neg_().add_(0.5)
    k = (a * 2).div_(us).add_(b).mul_(u).add_(lam).add_(0.43).floor_()
    squeezed = (us >= 0.07) & (v <= vr)
    n_rest = lam.numel() - int(squeezed.sum())
    if n_rest == 0:
        return k, None
    if n_rest > _PTRS_GATHER_MAX_FRACTION * lam.numel():
        testable = (k >= 0) & ((us >= 0.013) | (v <= us))
        exact = _ptrs_exact_test(lam, a, b, us, v, k.clamp(min=0))
        accept = squeezed | (testable & exact)
        rejected = torch.nonzero(~accept).flatten()
        return k, (rejected if rejected.numel() else None)
    rest = torch.nonzero(~squeezed).flatten()
    lam_r, a_r, b_r, us_r, v_r, k_r = (_take(t, rest) for t in (lam, a, b, us, v, k))
    accept = (k_r >= 0) & ((us_r >= 0.013) | (v_r <= us_r))
    slow = torch.nonzero(accept).flatten()
    if slow.numel():
        exact = _ptrs_exact_test(*(_take(t, slow) for t in (lam_r, a_r, b_r, us_r, v_r, k_r)))
        accept.scatter_(0, slow, exact)
    rejected = _take(rest, torch.nonzero(~accept).flatten())
    return k, (rejected if rejected.numel() else None)


def _ptrs_exact_test(lam: Tensor, a: Tensor, b: Tensor, us: Tensor, v: Tensor, k: Tensor) -> Tensor:
    """Hormann's acceptance test ``log(v invalpha / (a/us^2 + b)) <= log P(k)``."""
    invalpha = (1.1328 / (b - 3.4)).add_(1.1239)
    # log(v) + log(invalpha) - log(a / us^2 + b) as one log: three logs cost ~10% of PTRS.
    lhs = torch.log(v.mul(invalpha).div_(a.div(us.square()).add_(b)))
    rhs = torch.log(lam).mul_(k).sub_(lam).sub_(_log_factorial(k))
    return lhs <= rhs


@functools.lru_cache(maxsize=8)
def _log_factorial_table(device: torch.device) -> Tensor:
    return torch.tensor(_LOG_FACTORIAL_TABLE, dtype=torch.float64, device=device)


def _log_factorial(k: Tensor) -> Tensor:
    """log(k!) of non-negative integers (float64): a table below 256, Stirling's series above.

    torch.lgamma ran ~12 ns per value on CPU, a quarter of the exact PTRS test. Four terms of
    the series leave an error below 1e-20 from x = 257 on, far under float64 rounding.
    """
    table = _log_factorial_table(k.device)
    out = _take(table, k.clamp(max=255).to(torch.int64))
    big = torch.nonzero(k >= 256).flatten()
    if big.numel():
        out.scatter_(0, big, _stirling_log_factorial(_take(k, big)))
    return out


def _stirling_log_factorial(k: Tensor) -> Tensor:
    x = k + 1
    r2 = x.reciprocal().square_()
    series = (r2.mul(-1 / 1680).add_(1 / 1260).mul_(r2).add_(-1 / 360).mul_(r2).add_(1 / 12)).div_(
        x
    )
    return (x - 0.5).mul_(torch.log(x)).sub_(x).add_(_HALF_LOG_2PI).add_(series)


def _draw(pos: Tensor, n: int, keys: tuple[Tensor, Tensor]) -> Tensor:
    """32-bit uniforms (float64) for flat positions ``pos`` of ``(B, n)`` rows."""
    row = torch.div(pos, n, rounding_mode="floor")
    idx = (pos - row * n).to(torch.int32)
    return _u32(_bits(idx, _take(keys[0], row), _take(keys[1], row)))


def _ptrs_rounds(lam: Tensor, pos: Tensor, n: int, keys: _KeyCache) -> Tensor:
    """Later PTRS rounds for values (1-D, flat positions ``pos``) rejected in every block round."""
    out = torch.empty_like(lam)
    todo = torch.arange(lam.shape[0], device=lam.device)
    round_ = _PTRS_BLOCK_ROUNDS
    while todo.numel():
        round_ += 1
        p = _take(pos, todo)
        u = _draw(p, n, keys[2 * round_])
        v = _draw(p, n, keys[2 * round_ + 1])
        k, rejected = _ptrs_dense(_take(lam, todo), u, v)
        accept = torch.ones(todo.shape, dtype=torch.bool, device=todo.device)
        if rejected is not None:
            accept[rejected] = False
        done = torch.nonzero(accept).flatten()
        out.scatter_(0, _take(todo, done), _take(k, done))
        todo = _take(todo, rejected) if rejected is not None else todo[:0]
    return out

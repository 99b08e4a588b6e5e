"""Counter-based random numbers for reproducible, batch-invariant synthesis.

Every random value is a pure function of ``(row seed, stream, element index)``: a row gets
the same noise whatever batch it is computed in, whatever the batch size, and whatever other
rows are built, which ``torch.Generator`` cannot give for a batch (one generator's stream is
consumed in batch order). The hash is Chris Wellons' ``lowbias32`` (an avalanche-tested 32-bit
integer mixer) applied twice per value, computed in int32 with wrapping multiplication; a test
checks it against exact Python arithmetic so a platform that did not wrap would be caught.

Streams name the purpose of a draw (noise, texture, attack start...), so that two uses of one
row seed never share numbers. Seeds for rows are derived from text keys by :func:`derive_seed`.

On CPU, work is done in blocks of about 2**18 elements: elementwise torch ops on blocks that
stay in cache ran ~7x faster per element than on 4M-element tensors (2-core machine). Blocking
cannot change results, because values depend only on their counters.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import Tensor

from synthesis._checks import check_seeds

__all__ = ["derive_seed", "normal", "poisson", "random_bits", "uniform"]

_M32 = 0xFFFFFFFF
_C1 = 0x7FEB352D
_C2 = 0x846CA68B
_C2_I32 = _C2 - (1 << 32)  # the same bits as a signed int32
_BLOCK = 1 << 18
_PTRS_MIN_RATE = 10.0  # below: inversion; from here: Hormann's PTRS, as numpy does


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from text parts, e.g. ``derive_seed(0, "mito", "mito-test-00003", "noise")``.

    Stable across platforms and Python versions (sha256 of the parts joined by ``/``).
    """
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _h32_py(x: int) -> int:
    """Reference lowbias32 on Python ints (exact unsigned arithmetic)."""
    x &= _M32
    x ^= x >> 16
    x = (x * _C1) & _M32
    x ^= x >> 15
    x = (x * _C2) & _M32
    x ^= x >> 16
    return x


def _as_i32(x: int) -> int:
    x &= _M32
    return x - (1 << 32) if x >= (1 << 31) else x


def _h32(x: Tensor) -> Tensor:
    """lowbias32 on int32 tensors; ``>>`` is arithmetic there, so each shift is masked."""
    x = x ^ ((x >> 16) & 0xFFFF)
    x = x * _C1
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = x * _C2_I32
    return x ^ ((x >> 16) & 0xFFFF)


def _stream_const(stream: int, sub: int = 0) -> int:
    return _as_i32(_h32_py(_h32_py(stream * 0x9E3779B9) ^ (sub * 0x85EBCA6B)))


def _row_keys(seeds: Tensor, stream: int, sub: int = 0) -> tuple[Tensor, Tensor]:
    """Two int32 keys per row from int64 seeds and a stream."""
    lo = seeds & _M32
    hi = (seeds >> 32) & _M32
    lo = torch.where(lo >= (1 << 31), lo - (1 << 32), lo).to(torch.int32)
    hi = torch.where(hi >= (1 << 31), hi - (1 << 32), hi).to(torch.int32)
    k1 = _h32(lo ^ _h32(hi ^ _stream_const(stream, sub)))
    k2 = _h32(k1 ^ 0x5BD1E995)
    return k1, k2


def _bits(idx: Tensor, k1: Tensor, k2: Tensor) -> Tensor:
    return _h32(_h32(idx ^ k1) ^ k2)


def _u24(bits: Tensor) -> Tensor:
    """float32 in (0, 1): 24 random bits plus half a step, never 0 or 1."""
    return ((bits >> 8) & 0xFFFFFF).to(torch.float32).mul_(2.0**-24).add_(2.0**-25)


def _u32(bits: Tensor) -> Tensor:
    """float64 in (0, 1) with 32 random bits."""
    b = bits.to(torch.float64)
    return torch.where(b < 0, b + 2.0**32, b).add_(0.5).mul_(2.0**-32)


def _blocks(batch: int, per_row: int, device: torch.device) -> list[tuple[int, int]]:
    if device.type != "cpu":
        return [(0, batch)]
    rows = max(1, _BLOCK // max(per_row, 1))
    return [(r, min(batch, r + rows)) for r in range(0, batch, rows)]


def random_bits(
    seeds: Tensor | int, shape: tuple[int, ...], stream: int, *, sub: int = 0
) -> Tensor:
    """Raw 32-bit hash values (as int32) of shape ``(B, *shape)``."""
    device = seeds.device if isinstance(seeds, Tensor) else torch.device("cpu")
    seeds = check_seeds(seeds, torch.as_tensor(seeds).reshape(-1).shape[0], device)
    n = math.prod(shape)
    k1, k2 = _row_keys(seeds, stream, sub)
    idx = torch.arange(n, dtype=torch.int32, device=device)
    return _bits(idx[None, :], k1[:, None], k2[:, None]).reshape(seeds.shape[0], *shape)


def uniform(seeds: Tensor | int, shape: tuple[int, ...], stream: int, *, sub: int = 0) -> Tensor:
    """Uniform float32 values in (0, 1), shape ``(B, *shape)``, one row per seed.

    Example:
        >>> u = uniform(torch.tensor([1, 2]), (3,), stream=7)
        >>> u.shape, bool(((u > 0) & (u < 1)).all())
        (torch.Size([2, 3]), True)
        >>> torch.equal(uniform(torch.tensor([2]), (3,), stream=7), u[1:])
        True
    """
    return _u24(random_bits(seeds, shape, stream, sub=sub))


def normal(seeds: Tensor | int, shape: tuple[int, ...], stream: int, *, sub: int = 0) -> Tensor:
    """Standard normal float32 values, shape ``(B, *shape)`` (inverse-CDF of :func:`uniform`).

    The 24-bit uniforms bound the tails at about 5.4 sigma (probability ~6e-8 per value).
    """
    u = uniform(seeds, shape, stream, sub=sub)
    return torch.erfinv(u.mul_(2.0).sub_(1.0)).mul_(math.sqrt(2.0))


def poisson(rate: Tensor, seeds: Tensor | int, stream: int) -> Tensor:
    """Exact Poisson samples with per-element mean ``rate`` (shape ``(B, ...)``), as float32.

    Inversion by sequential search below a mean of 10, Hormann's transformed rejection with
    squeeze (PTRS, the algorithm of numpy's ``Generator.poisson``) from 10 up. Both are exact:
    no Gaussian approximation, which is wrong at the few-electron means of low-SNR images.

    Raises:
        ValueError: negative or non-finite rates, or seeds of the wrong length.
    """
    if not isinstance(rate, Tensor) or not rate.is_floating_point():
        raise TypeError(f"rate must be a floating-point tensor. Got {type(rate).__name__}")
    if rate.dim() == 0:
        raise ValueError("rate must have a batch dimension (B, ...). Got a scalar")
    if not bool(torch.isfinite(rate).all()) or bool((rate < 0).any()):
        raise ValueError("rate must be finite and >= 0. Got negative or non-finite values")
    batch = rate.shape[0]
    seeds = check_seeds(seeds, batch, rate.device)
    flat = rate.reshape(batch, -1)
    out = torch.empty(flat.shape, dtype=torch.float32, device=rate.device)
    for r0, r1 in _blocks(batch, flat.shape[1], rate.device):
        out[r0:r1] = _poisson_rows(flat[r0:r1], seeds[r0:r1], stream)
    return out.reshape(rate.shape)


def _poisson_rows(lam32: Tensor, seeds: Tensor, stream: int) -> Tensor:
    b, n = lam32.shape
    lam = lam32.reshape(-1).to(torch.float64)
    out = torch.zeros_like(lam)
    # Row keys of every draw, computed once per block: (rounds x rows) values, not per element.
    keys = [_row_keys(seeds, stream, sub) for sub in range(2)]
    small = lam < _PTRS_MIN_RATE
    pos = torch.nonzero(small & (lam > 0)).flatten()
    if pos.numel():
        out[pos] = _poisson_inversion(lam[pos], pos, n, keys[0])
    pos = torch.nonzero(~small).flatten()
    if pos.numel():
        out[pos] = _poisson_ptrs(lam[pos], pos, n, seeds, stream)
    return out.to(torch.float32).reshape(b, n)


def _draw(pos: Tensor, n: int, keys: tuple[Tensor, Tensor]) -> Tensor:
    """32-bit uniforms (float64) for flat positions ``pos`` of a block of rows of length ``n``."""
    row = torch.div(pos, n, rounding_mode="floor")
    idx = (pos - row * n).to(torch.int32)
    return _u32(_bits(idx, keys[0][row], keys[1][row]))


def _poisson_inversion(lam: Tensor, pos: Tensor, n: int, keys: tuple[Tensor, Tensor]) -> Tensor:
    u = _draw(pos, n, keys)
    k = torch.zeros_like(lam)
    p = torch.exp(-lam)
    cdf = p.clone()
    # Carry only the undecided values from step to step: most stop after a few steps.
    where = torch.nonzero(u > cdf).flatten()
    lam_a, p_a, cdf_a, u_a = lam[where], p[where], cdf[where], u[where]
    step = 0
    # P(k > 200 | lam < 10) < 1e-200: the cap only guards against a cdf stuck below u by rounding.
    while where.numel() and step < 200:
        step += 1
        p_a = p_a * lam_a / step
        cdf_a = cdf_a + p_a
        k[where] = step
        go_on = u_a > cdf_a
        where, lam_a, p_a, cdf_a, u_a = (
            where[go_on],
            lam_a[go_on],
            p_a[go_on],
            cdf_a[go_on],
            u_a[go_on],
        )
    return k


def _poisson_ptrs(lam: Tensor, pos: Tensor, n: int, seeds: Tensor, stream: int) -> Tensor:
    slam = torch.sqrt(lam)
    loglam = torch.log(lam)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    invalpha = 1.1239 + 1.1328 / (b - 3.4)
    vr = 0.9277 - 3.6224 / (b - 2)
    out = torch.empty_like(lam)
    todo = torch.arange(lam.shape[0], device=lam.device)
    round_ = 0
    while todo.numel():
        round_ += 1
        p = pos[todo]
        u = _draw(p, n, _row_keys(seeds, stream, 2 * round_)) - 0.5
        v = _draw(p, n, _row_keys(seeds, stream, 2 * round_ + 1))
        la, aa, ba = lam[todo], a[todo], b[todo]
        us = 0.5 - u.abs()
        k = torch.floor((2 * aa / us + ba) * u + la + 0.43)
        accept = (us >= 0.07) & (v <= vr[todo])
        # The slow test runs only on what the squeeze did not settle (~15%).
        slow = torch.nonzero(~accept & (k >= 0) & ((us >= 0.013) | (v <= us))).flatten()
        if slow.numel():
            t, ks, ua = todo[slow], k[slow], us[slow]
            lhs = (
                torch.log(v[slow])
                + torch.log(invalpha[t])
                - torch.log(aa[slow] / (ua * ua) + ba[slow])
            )
            rhs = -la[slow] + ks * loglam[t] - torch.lgamma(ks + 1)
            accept[slow] = lhs <= rhs
        out[todo[accept]] = k[accept]
        todo = todo[~accept]
    return out

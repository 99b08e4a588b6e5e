"""Counter-based random numbers for reproducible, batch-invariant synthesis.

Every random value is a pure function of ``(row seed, stream, element index)``: a row gets
the same noise whatever batch it is computed in, whatever the batch size, and whatever other
rows are built, which ``torch.Generator`` cannot give for a batch (one generator's stream is
consumed in batch order). The hash is Chris Wellons' ``lowbias32`` (an avalanche-tested 32-bit
integer mixer) applied twice per value, computed in int32 with wrapping multiplication; a test
checks it against exact Python arithmetic so a platform that did not wrap would be caught.

Streams name the purpose of a draw (noise, texture, attack start...), so that two uses of one
row seed never share numbers. Seeds for rows are derived from text keys by :func:`derive_seed`.

This module holds the hash and the generators built directly on it: :func:`random_bits`,
:func:`uniform` (24-bit float32), :func:`normal` and :func:`finite_normal`. On CPU tensors
:func:`uniform` runs a compiled kernel (:mod:`synthesis.rng.kernels`, Numba) that computes
every value with the same operations; other devices run the torch code here (a test compares
the two bit for bit). The exact Poisson sampler is :mod:`synthesis.rng.poisson_sampler`, the
gamma sampler :mod:`synthesis.rng.gamma_sampler`; both draw through the helpers here.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import Tensor

from synthesis.checks import check_seeds
from synthesis.rng.constants import (
    C1 as _C1,
)
from synthesis.rng.constants import C2 as _C2
from synthesis.rng.constants import (
    C2_I32 as _C2_I32,
)
from synthesis.rng.constants import (
    M32 as _M32,
)

__all__ = ["derive_seed", "finite_normal", "normal", "random_bits", "uniform"]


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
    return _h32_(x.clone(), torch.empty_like(x))


def _h32_(x: Tensor, tmp: Tensor) -> Tensor:
    """lowbias32 of ``x`` in place, with ``tmp`` (same shape) as scratch.

    In-place ops into preallocated buffers: ~3x faster than the expression form on CPU, where
    each temporary of a block-sized tensor costs an allocation and a pass over memory.
    """
    torch.bitwise_right_shift(x, 16, out=tmp)
    x.bitwise_xor_(tmp.bitwise_and_(0xFFFF))
    x.mul_(_C1)
    torch.bitwise_right_shift(x, 15, out=tmp)
    x.bitwise_xor_(tmp.bitwise_and_(0x1FFFF))
    x.mul_(_C2_I32)
    torch.bitwise_right_shift(x, 16, out=tmp)
    return x.bitwise_xor_(tmp.bitwise_and_(0xFFFF))


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
    """Hash values of int32 element indices ``idx`` under keys ``k1``, ``k2`` (same shape)."""
    x = torch.bitwise_xor(idx, k1)
    tmp = torch.empty_like(x)
    return _h32_(_h32_(x, tmp).bitwise_xor_(k2), tmp)


def _u24(bits: Tensor) -> Tensor:
    """float32 in (0, 1): 24 random bits plus half a step, never 0 or 1.

    The top value, 1 - 2**-25, rounds to 1.0 in float32 (then ``normal`` gave +inf once per
    2**24 values): it is clamped to the largest float32 below 1.
    """
    return (
        bits.bitwise_right_shift(8)
        .bitwise_and_(0xFFFFFF)
        .to(torch.float32)
        .mul_(2.0**-24)
        .add_(2.0**-25)
        .clamp_(max=1.0 - 2.0**-24)
    )


def _u32(bits: Tensor) -> Tensor:
    """float64 in (0, 1) with 32 random bits: ``(bits + 2**31 + 0.5) / 2**32`` (exact)."""
    return bits.to(torch.float64).add_(2.0**31 + 0.5).mul_(2.0**-32)


def _dense_bits(k1: Tensor, k2: Tensor, c0: int, c1: int) -> Tensor:
    """Hash values of columns ``c0:c1`` of the rows with keys ``k1``, ``k2`` (``(rows,)``)."""
    idx = torch.arange(c0, c1, dtype=torch.int32, device=k1.device)
    x = idx[None, :] ^ k1[:, None]
    tmp = torch.empty_like(x)
    _h32_(x, tmp).bitwise_xor_(k2[:, None])
    return _h32_(x, tmp)


def random_bits(
    seeds: Tensor | int, shape: tuple[int, ...], stream: int, *, sub: int = 0
) -> Tensor:
    """Raw 32-bit hash values (as int32) of shape ``(B, *shape)``."""
    device = seeds.device if isinstance(seeds, Tensor) else torch.device("cpu")
    seeds = check_seeds(seeds, torch.as_tensor(seeds).reshape(-1).shape[0], device)
    n = math.prod(shape)
    k1, k2 = _row_keys(seeds, stream, sub)
    return _dense_bits(k1, k2, 0, n).reshape(seeds.shape[0], *shape)


def uniform(seeds: Tensor | int, shape: tuple[int, ...], stream: int, *, sub: int = 0) -> Tensor:
    """Uniform float32 values in (0, 1), shape ``(B, *shape)``, one row per seed.

    Example:
        >>> u = uniform(torch.tensor([1, 2]), (3,), stream=7)
        >>> u.shape, bool(((u > 0) & (u < 1)).all())
        (torch.Size([2, 3]), True)
        >>> torch.equal(uniform(torch.tensor([2]), (3,), stream=7), u[1:])
        True
    """
    device = seeds.device if isinstance(seeds, Tensor) else torch.device("cpu")
    if device.type != "cpu":
        return _u24(random_bits(seeds, shape, stream, sub=sub))
    from synthesis.rng import kernels as _kernels

    seeds = check_seeds(seeds, torch.as_tensor(seeds).reshape(-1).shape[0], device)
    out = _kernels.uniform_rows(seeds.numpy(), math.prod(shape), _stream_const(stream, sub))
    return torch.from_numpy(out).reshape(seeds.shape[0], *shape)


def normal(seeds: Tensor | int, shape: tuple[int, ...], stream: int, *, sub: int = 0) -> Tensor:
    """Standard normal float32 values, shape ``(B, *shape)`` (inverse-CDF of :func:`uniform`).

    The 24-bit uniforms bound the tails at about 5.4 sigma (probability ~6e-8 per value).
    """
    u = uniform(seeds, shape, stream, sub=sub)
    return torch.erfinv(u.mul_(2.0).sub_(1.0)).mul_(math.sqrt(2.0))


def finite_normal(seeds: Tensor | int, shape: tuple[int, ...], stream: int) -> Tensor:
    """:func:`normal` with its values clamped to +-5.5 sd: always finite and bounded.

    Today the clamp changes no value: :func:`uniform` never returns 0 or 1 (:func:`_u24` caps
    the top 24-bit value at ``1 - 2**-24``), so every value :func:`normal` can give lies in
    [-5.42, 5.30] (``tests/test_rng.py`` checks all 2**24 of them). The clamp keeps that bound
    a property of this function rather than of the uniforms' rounding; callers exponentiate
    these values (per-nucleus gains) or filter them into fields.
    """
    return normal(seeds, shape, stream).clamp_(-5.5, 5.5)

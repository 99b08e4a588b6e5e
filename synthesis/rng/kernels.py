"""Compiled CPU kernels (Numba) of the random streams: exact Poisson and uniforms.

On CPU tensors, :func:`synthesis.rng.poisson` and :func:`synthesis.rng.uniform` call these
instead of whole-array torch passes (which stay the path on other devices):

* :func:`poisson_rows`, value for value the maths of :func:`synthesis.rng.poisson`: for the
  value at column ``c`` of row ``r`` with rate ``lam``, sequential-search inversion with the
  uniform of ``(r, c)`` at ``sub`` 0 when ``lam < 10``, else Hormann's PTRS, round
  ``t`` = 1, 2, ... drawing ``u`` and ``v`` at subs ``2t`` and ``2t + 1``. The same float64
  operations in the same order (Numba compiles without fast-math, so LLVM neither contracts
  multiply-adds nor reorders); only libm's ``exp``/``log``/``sqrt`` may differ from torch's
  vectorised ones in the last bit, which changes a sample only when a uniform falls within
  that bit of a cdf step or acceptance bound (probability ~1e-16 per value). A test compares
  the two backends on millions of values. Inversions run 16 at a time in independent lanes
  (one value at a time waits on each step's multiply-add latency and mispredicts the loop
  exit: ~2.5x slower at rate 6).

Two entry points serve the camera noise (:mod:`synthesis.corruptions.noise`):
:func:`poisson_scaled_rows`, :func:`poisson_rows` of float32 products ``x * k`` formed and
checked tile by tile (the rates never go to memory), and :func:`erfinv_arg_rows`, the
``2u - 1`` that ``rng.normal`` hands to ``torch.erfinv``.

Rows (tiles of rows for Poisson) run in parallel with ``prange`` on torch's thread count; no
result depends on how work is split among threads. Numba's threading layer is set to
``workqueue`` (unless ``NUMBA_THREADING_LAYER`` says otherwise): its OpenMP layer resets the
OpenMP thread count that torch shares, undoing ``torch.set_num_threads``. ``workqueue`` does
not take concurrent launches, so calls are serialised by a lock.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Iterator

import numba
import numpy as np

from synthesis.rng import constants

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"
_LOCK = threading.Lock()

# The hash and sampler constants are the torch code's own (one source for both paths).
_M32 = constants.M32
_C1 = constants.C1
_C2 = constants.C2
_PTRS_MIN_RATE = constants.PTRS_MIN_RATE
_INVERSION_MAX_STEPS = constants.INVERSION_MAX_STEPS
#: Key subs precomputed per row: inversion (0) and PTRS rounds 1..7 (subs 2..15); later
#: rounds (probability < 1e-7 per value) derive their keys on the fly.
_KEY_SUBS = 16

#: ``1.0 / k`` as the torch code computes it (Python float division), a load instead of a
#: division in the search loop.
_INVERSE = np.array([0.0] + [1.0 / k for k in range(1, _INVERSION_MAX_STEPS + 1)])
_LOG_FACTORIAL = np.array(constants.LOG_FACTORIAL_TABLE, dtype=np.float64)
_HALF_LOG_2PI = constants.HALF_LOG_2PI
_S1 = -1 / 1680
_S2 = 1 / 1260
_S3 = -1 / 360
_S4 = 1 / 12
_TWO32 = 2.0**-32
_HALF_OFFSET = 2.0**31 + 0.5

_jit = numba.njit(cache=True, nogil=True, error_model="numpy")


def _use_torch_threads() -> None:
    """Run the parallel kernels on torch's intra-op thread count (``torch.set_num_threads``)."""
    import torch

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


@contextlib.contextmanager
def launch() -> Iterator[None]:
    """One kernel launch: serialised (``workqueue`` takes no concurrent launches), on torch's
    thread count. Every parallel kernel of the package runs inside one."""
    with _LOCK:
        _use_torch_threads()
        yield


@_jit
def _h32(x: int) -> int:
    x = np.uint64(x) & np.uint64(_M32)
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(_C1)) & np.uint64(_M32)
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(_C2)) & np.uint64(_M32)
    x ^= x >> np.uint64(16)
    return x


@_jit
def _row_key(seed: int, stream_const: int) -> tuple[int, int]:
    """``(k1, k2)`` of a row as unsigned 32-bit values (``rng._row_keys``)."""
    lo = np.uint64(seed) & np.uint64(_M32)
    hi = (np.uint64(seed) >> np.uint64(32)) & np.uint64(_M32)
    k1 = _h32(lo ^ _h32(hi ^ np.uint64(stream_const)))
    k2 = _h32(k1 ^ np.uint64(0x5BD1E995))
    return k1, k2


@_jit
def _stream_const(stream: int, sub: int) -> int:
    """``rng._stream_const`` as an unsigned 32-bit value."""
    s = _h32((np.uint64(stream) * np.uint64(0x9E3779B9)) & np.uint64(_M32))
    return _h32(s ^ ((np.uint64(sub) * np.uint64(0x85EBCA6B)) & np.uint64(_M32)))


@_jit
def _uniform(col: int, k1: int, k2: int) -> float:
    """``rng._u32(rng._bits(col, k1, k2))``: float64 in (0, 1) from 32 hash bits."""
    bits = _h32(_h32(np.uint64(col) ^ k1) ^ k2)
    signed = np.int64(bits) - np.int64(1 << 32) if bits >= np.uint64(1 << 31) else np.int64(bits)
    return (np.float64(signed) + _HALF_OFFSET) * _TWO32


@_jit
def _log_factorial(k: float) -> float:
    if k < 256.0:
        return _LOG_FACTORIAL[int(k)]
    x = k + 1.0
    r = 1.0 / x
    r2 = r * r
    series = (((r2 * _S1 + _S2) * r2 + _S3) * r2 + _S4) / x
    return (x - 0.5) * math.log(x) - x + _HALF_LOG_2PI + series


@_jit
def _ptrs(lam: float, col: int, keys: np.ndarray, seed: int, stream: int) -> float:
    b = math.sqrt(lam) * 2.53 + 0.931
    a = b * 0.02483 + -0.059
    vr = -(3.6224 / (b - 2.0)) + 0.9277
    round_ = 1
    while True:
        su, sv = 2 * round_, 2 * round_ + 1
        if sv < _KEY_SUBS:
            ku1, ku2, kv1, kv2 = keys[su, 0], keys[su, 1], keys[sv, 0], keys[sv, 1]
        else:
            ku1, ku2 = _row_key(seed, _stream_const(stream, su))
            kv1, kv2 = _row_key(seed, _stream_const(stream, sv))
        u = _uniform(col, ku1, ku2) - 0.5
        v = _uniform(col, kv1, kv2)
        us = -abs(u) + 0.5
        k = math.floor(((a * 2.0) / us + b) * u + lam + 0.43)
        if us >= 0.07 and v <= vr:
            return k
        if k >= 0.0 and (us >= 0.013 or v <= us):
            invalpha = 1.1328 / (b - 3.4) + 1.1239
            lhs = math.log((v * invalpha) / (a / (us * us) + b))
            rhs = math.log(lam) * k - lam - _log_factorial(k)
            if lhs <= rhs:
                return k
        round_ += 1


#: Values per parallel task (a row is cut into tiles, so one large image also runs in parallel).
_TILE = 1 << 14
#: Inversions searched together: independent lanes keep the multiply-add chains of several
#: values in flight (one value at a time waits on each step's latency and mispredicts the
#: loop exit: ~2.5x slower at rate 6).
_LANES = 16


@_jit
def _inversion_lanes(
    rate: np.ndarray,
    rr: int,
    coff: int,
    r: int,
    cols: np.ndarray,
    count: int,
    k1: int,
    k2: int,
    out: np.ndarray,
) -> None:
    """Sequential search for the rates ``rate[rr, cols[:count] - coff]`` (all < 10) of row
    ``r``, columns ``cols[:count]``, ``_LANES`` at a time.

    Every lane takes the steps of the slowest lane of its group; a settled lane's count stops
    growing because the cdf only grows, so the result is the per-value search's.
    """
    lam = np.empty(_LANES)
    u = np.empty(_LANES)
    p = np.empty(_LANES)
    cdf = np.empty(_LANES)
    k = np.empty(_LANES)
    for base in range(0, count, _LANES):
        m = min(_LANES, count - base)
        for lane in range(_LANES):
            c = cols[base + lane] if lane < m else cols[base]
            lam[lane] = np.float64(rate[rr, c - coff])
            u[lane] = _uniform(c, k1, k2)
        for lane in range(_LANES):
            p[lane] = math.exp(-lam[lane])
            cdf[lane] = p[lane]
            k[lane] = 0.0
        step = 0
        while True:
            undecided = 0
            for lane in range(_LANES):
                go = u[lane] > cdf[lane]
                k[lane] += go
                undecided += go
            if undecided == 0 or step == _INVERSION_MAX_STEPS - 1:
                break
            step += 1
            f = _INVERSE[step]
            for lane in range(_LANES):
                p[lane] = p[lane] * lam[lane] * f
                cdf[lane] = cdf[lane] + p[lane]
        for lane in range(m):
            out[r, cols[base + lane]] = k[lane]


@_jit
def _row_keys(seeds: np.ndarray, stream: int) -> np.ndarray:
    """Keys ``(B, _KEY_SUBS, 2)`` of every row for the precomputed subs."""
    batch = seeds.shape[0]
    consts = np.empty(_KEY_SUBS, dtype=np.uint64)
    for sub in range(_KEY_SUBS):
        consts[sub] = _stream_const(stream, sub)
    keys = np.empty((batch, _KEY_SUBS, 2), dtype=np.uint64)
    for r in range(batch):
        for sub in range(_KEY_SUBS):
            k1, k2 = _row_key(seeds[r], consts[sub])
            keys[r, sub, 0] = k1
            keys[r, sub, 1] = k2
    return keys


@_jit
def _poisson_tile(
    rate: np.ndarray,
    rr: int,
    coff: int,
    r: int,
    c0: int,
    c1: int,
    keys: np.ndarray,
    seed: int,
    stream: int,
    out: np.ndarray,
) -> None:
    """Samples of row ``r``, columns ``c0:c1``, whose rates are ``rate[rr, c - coff]``."""
    small = np.empty(c1 - c0, dtype=np.int64)
    n_small = 0
    for c in range(c0, c1):
        lam = np.float64(rate[rr, c - coff])
        if lam < _PTRS_MIN_RATE:
            small[n_small] = c
            n_small += 1
        else:
            out[r, c] = _ptrs(lam, c, keys, seed, stream)
    _inversion_lanes(rate, rr, coff, r, small, n_small, keys[0, 0], keys[0, 1], out)


@numba.njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _poisson_rows(rate: np.ndarray, seeds: np.ndarray, stream: int, out: np.ndarray) -> None:
    batch, n = rate.shape
    keys = _row_keys(seeds, stream)
    tiles = (n + _TILE - 1) // _TILE
    for t in numba.prange(batch * tiles):
        r = t // tiles
        c0 = (t - r * tiles) * _TILE
        c1 = min(n, c0 + _TILE)
        _poisson_tile(rate, r, 0, r, c0, c1, keys[r], seeds[r], stream, out)


def poisson_rows(rate: np.ndarray, seeds: np.ndarray, stream: int) -> np.ndarray:
    """Exact Poisson samples (float32) of a ``(B, n)`` float32 or float64 rate array.

    Rates must already be checked (finite, >= 0); one int64 seed per row in ``[0, 2**63)``.
    Rates are read as float64, like the torch code reads them.
    """
    out = np.empty(rate.shape, dtype=np.float32)
    with launch():
        _poisson_rows(
            np.ascontiguousarray(rate),
            np.ascontiguousarray(seeds, dtype=np.int64),
            int(stream),
            out,
        )
    return out


_F32_MAX = np.float32(np.finfo(np.float32).max)


@numba.njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _poisson_scaled_rows(
    x: np.ndarray, scale: np.ndarray, seeds: np.ndarray, stream: int, out: np.ndarray
) -> bool:
    batch, n = x.shape
    keys = _row_keys(seeds, stream)
    tiles = (n + _TILE - 1) // _TILE
    bad = np.zeros(batch * tiles, dtype=np.bool_)
    for t in numba.prange(batch * tiles):
        r = t // tiles
        c0 = (t - r * tiles) * _TILE
        c1 = min(n, c0 + _TILE)
        s = scale[r]
        rate = np.empty((1, c1 - c0), dtype=np.float32)
        for c in range(c0, c1):
            lam = x[r, c] * s  # float32 product, rounded as torch's ``x * scale``
            if not (lam >= 0.0 and lam <= _F32_MAX):
                bad[t] = True
            rate[0, c - c0] = lam
        if not bad[t]:
            _poisson_tile(rate, 0, c0, r, c0, c1, keys[r], seeds[r], stream, out)
    return bad.any()


def poisson_scaled_rows(
    x: np.ndarray, scale: np.ndarray, seeds: np.ndarray, stream: int
) -> np.ndarray | None:
    """:func:`poisson_rows` of the rates ``x * scale[:, None]`` (float32 products of float32
    ``(B, n)`` values and ``(B,)`` row scales, as ``x * scale`` in torch), formed tile by tile
    in cache and never stored whole. Returns None, sampling nothing, if a rate is negative or
    not finite (float32 overflow).
    """
    out = np.empty(x.shape, dtype=np.float32)
    with launch():
        bad = _poisson_scaled_rows(
            np.ascontiguousarray(x, dtype=np.float32),
            np.ascontiguousarray(scale, dtype=np.float32),
            np.ascontiguousarray(seeds, dtype=np.int64),
            int(stream),
            out,
        )
    return None if bad else out


_U24_STEP = np.float32(2.0**-24)
_U24_HALF = np.float32(2.0**-25)
_U24_MAX = np.float32(1.0 - 2.0**-24)


@_jit
def _u24(c: int, k1: int, k2: int) -> float:
    """The ``rng.uniform`` value of column ``c`` of the row with keys ``(k1, k2)``: ``(top 24
    hash bits) * 2**-24 + 2**-25`` in float32, capped below 1."""
    bits = _h32(_h32(np.uint64(c) ^ k1) ^ k2)
    top = np.float32((bits >> np.uint64(8)) & np.uint64(0xFFFFFF))
    return min(top * _U24_STEP + _U24_HALF, _U24_MAX)


@numba.njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _uniform_rows(seeds: np.ndarray, stream_const: int, out: np.ndarray) -> None:
    batch, n = out.shape
    for r in numba.prange(batch):
        k1, k2 = _row_key(seeds[r], stream_const)
        for c in range(n):
            out[r, c] = _u24(c, k1, k2)


def uniform_rows(seeds: np.ndarray, n: int, stream_const: int) -> np.ndarray:
    """``rng.uniform`` values, float32 ``(B, n)``, from int64 row seeds and a stream constant.

    ``(top 24 hash bits) * 2**-24 + 2**-25`` in float32 arithmetic, capped below 1, as
    ``rng._u24`` computes it.
    """
    out = np.empty((seeds.shape[0], n), dtype=np.float32)
    with launch():
        _uniform_rows(np.ascontiguousarray(seeds, dtype=np.int64), int(stream_const) & _M32, out)
    return out


_F32_TWO = np.float32(2.0)
_F32_ONE = np.float32(1.0)


@numba.njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _erfinv_arg_rows(seeds: np.ndarray, stream_const: int, out: np.ndarray) -> None:
    batch, n = out.shape
    for r in numba.prange(batch):
        k1, k2 = _row_key(seeds[r], stream_const)
        for c in range(n):
            out[r, c] = _u24(c, k1, k2) * _F32_TWO - _F32_ONE


def erfinv_arg_rows(seeds: np.ndarray, n: int, stream_const: int) -> np.ndarray:
    """``2 u - 1`` in float32 of the :func:`uniform_rows` values ``u``: the argument of
    ``erfinv`` in ``rng.normal`` (``u.mul_(2.0).sub_(1.0)``; both steps exact here, as
    there), float32 ``(B, n)``."""
    out = np.empty((seeds.shape[0], n), dtype=np.float32)
    with launch():
        _erfinv_arg_rows(np.ascontiguousarray(seeds, dtype=np.int64), int(stream_const) & _M32, out)
    return out

"""Separable blurs compiled for CPU: the exact operations of the torch blur code, faster.

One Numba kernel blurs float32 and float64 images outside autograd, for the space-invariant
Gaussian blur (:func:`synthesis.filters.gaussian.gaussian_blur`, one crop: the whole image)
and for the space-variant blur (:func:`synthesis.corruptions.psf.space_variant_blur`, one
crop per ring and quadrant, each with its weights), from tables built once per shape and
blur (:func:`crop_tables`). Hand-written because no library blur gives torch's bits (fused
multiply-adds in torch's order) at this speed; the notes below say how it stays exact.

No randomness is used here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numba
import numpy as np
import torch
from llvmlite import ir
from numba.core import types as nb_types
from numba.extending import intrinsic
from torch import Tensor

from synthesis.rng.kernels import launch

__all__ = ["Tables", "applies", "crop_tables", "np_dtype", "run_compiled", "sib_tables"]


# --- compiled CPU path ----------------------------------------------------------------------
#
# On CPU, float32 and float64 images outside autograd are blurred by one compiled kernel
# (Numba) that computes every value with the operations of the torch code (``synthesis.filters.gaussian``
# and ``synthesis.corruptions.psf``), in its order: along W then along H, each output ``p[c] * t_0`` then ``fma(p[c + j], t_j, .)`` for
# j = 1..2r (torch's ``add_(p, alpha=t)`` is a fused multiply-add, in its vectorised loops and
# their scalar tails alike, at the AVX2 and AVX-512 ATen capabilities), and for SVB
# ``out += h_k * (w_k x)`` crop after crop from zero. The fused multiply-add is LLVM's
# ``llvm.fma``: one rounding on every CPU whatever the vector width, so the bytes depend on
# neither the thread count, the batch nor the instruction set (tests compare the two paths
# bit for bit).
#
# Why (benchmarks/RESULTS.md, issue 21): the torch ops run each tap as one whole-array
# pass, ``2 (2 r + 1)`` passes per ring and crop, over blocks of images; SVB's blocks (2**19
# values then) outgrew the 2 MB L2 of an Intel Xeon core, whose L3 is slower than an AMD
# EPYC's, so SVB waited on memory there (4x SIB on one thread). The kernel instead:
#
# * blurs ``_LANES`` images together, their values interleaved (``(H, W lanes)``), so that
#   every loop runs over ``lanes`` values per column: long vectorised loops even over the
#   narrow runs of an SVB ring;
# * applies four taps per pass over a row (``_fma4``: one load and one fma per tap);
# * goes down the image in bands of ``_BAND`` output rows, all crops in turn within a band
#   (each pixel still receives the crops in order), keeping for each crop only the last
#   ``2 r + 1`` W-pass rows (a ring buffer): the band and those rows stay in cache;
# * rounds loop lengths up to ``_STEP`` values (buffers are padded) so no loop ends in a
#   scalar remainder.
#
# SVB also skips the zeros of the ring weights: a term whose input is an exact zero leaves
# a non-zero sum unchanged (``fma(0, t, s) = s``) and can change only the sign of a zero sum,
# and the output starts at +0 and is only added to, so it never holds -0 and those signs are
# lost. Along W a row is computed only over the runs of its non-zero weighted input (each
# pass of taps over the outputs it reaches); along H only from rows and columns holding
# non-zero W-pass values; rows without input are not computed (they read as a row of zeros).
# Runs closer than ``_GAP`` columns are merged, so a rounded-up loop never reaches the next
# run (whose terms it would add out of order). SIB computes every term, as the torch code.

_jit = numba.njit(cache=True, nogil=True, error_model="numpy")
_inline = numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
_Array = np.ndarray  # (annotations only: Numba compiles from the values)
_Plan = tuple[np.ndarray, ...]

#: Values per trip of the vectorised loops: loop lengths are rounded up to a multiple.
_STEP = 32
#: Runs of non-zero columns closer than this are merged (see the notes above).
_GAP = _STEP + 8
#: Images blurred together, their values interleaved, at most.
_LANES = 8
#: Values of the interleaved copies of the images (per copy and thread), at most: fewer
#: images go together when they are large (one image always).
_GROUP_VALUES = 1 << 21
#: Output rows per band.
_BAND = 16


@intrinsic
def _fma(typingctx, a, b, c):  # noqa: ANN001 (Numba's intrinsic signature)
    """``a * b + c`` with one rounding (LLVM's ``llvm.fma``), the arithmetic of ``add_``."""
    if not (isinstance(a, nb_types.Float) and a == b and b == c):
        return None

    def codegen(context, builder, sig, args):  # noqa: ANN001
        ty = context.get_value_type(sig.return_type)
        fn = builder.module.declare_intrinsic("llvm.fma", [ty], ir.FunctionType(ty, [ty] * 3))
        return builder.call(fn, args)

    return a(a, b, c), codegen


@_inline
def _mul1(out: np.ndarray, p0: np.ndarray, t0: float) -> None:
    for c in range(out.shape[0]):
        out[c] = p0[c] * t0


@_inline
def _fma1(out: np.ndarray, p0: np.ndarray, t0: float) -> None:
    for c in range(out.shape[0]):
        out[c] = _fma(p0[c], t0, out[c])


@_inline
def _fma4(
    out: _Array,
    p0: _Array,
    p1: _Array,
    p2: _Array,
    p3: _Array,
    t0: float,
    t1: float,
    t2: float,
    t3: float,
) -> None:
    for c in range(out.shape[0]):
        out[c] = _fma(p3[c], t3, _fma(p2[c], t2, _fma(p1[c], t1, _fma(p0[c], t0, out[c]))))


@_inline
def _taps_w(out: _Array, p: _Array, b: int, d: int, taps: _Array, t: int, nt: int) -> None:
    """Taps ``t..t+nt-1`` of ``out[c] += taps[t + q] p[b + q d + c]`` (fma, in order of q)."""
    n = out.shape[0]
    q = 0
    while q + 4 <= nt:
        e = b + q * d
        _fma4(
            out, p[e : e + n], p[e + d : e + d + n], p[e + 2 * d : e + 2 * d + n],
            p[e + 3 * d : e + 3 * d + n], taps[t + q], taps[t + q + 1], taps[t + q + 2],
            taps[t + q + 3],
        )  # fmt: skip
        q += 4
    while q < nt:
        e = b + q * d
        _fma1(out, p[e : e + n], taps[t + q])
        q += 1


@_inline
def _taps_h(out: _Array, y: _Array, offs: _Array, a: int, taps: _Array, t: int, nt: int) -> None:
    """Taps ``t..t+nt-1`` of ``out[c] += taps[t + q] y[offs[q] + a + c]`` (fma, in order)."""
    n = out.shape[0]
    q = 0
    while q + 4 <= nt:
        b0 = offs[q] + a
        b1 = offs[q + 1] + a
        b2 = offs[q + 2] + a
        b3 = offs[q + 3] + a
        _fma4(
            out, y[b0 : b0 + n], y[b1 : b1 + n], y[b2 : b2 + n], y[b3 : b3 + n],
            taps[t + q], taps[t + q + 1], taps[t + q + 2], taps[t + q + 3],
        )  # fmt: skip
        q += 4
    while q < nt:
        b0 = offs[q] + a
        _fma1(out, y[b0 : b0 + n], taps[t + q])
        q += 1


@_jit
def _step_columns(lanes: int) -> int:
    """Columns per rounding unit: the fewest whose ``lanes`` values are a multiple of _STEP."""
    a, b = _STEP, lanes
    while b:
        a, b = b, a % b
    return _STEP // a


@_jit
def _round_up(n: int, step: int) -> int:
    return n + (-n) % step


@_jit
def _weigh(out: _Array, x: _Array, w: _Array, g: int) -> None:
    """``out[c g + q] = x[c g + q] * w[c]``: the weight of column c times its ``g`` values."""
    if g == _LANES:  # unrolled, unsigned indices: one vector multiply per column
        for c in range(w.shape[0]):
            v = w[c]
            b = np.uint64(c) * np.uint64(_LANES)
            for q in range(_LANES):
                out[b + np.uint64(q)] = x[b + np.uint64(q)] * v
    else:
        for c in range(w.shape[0]):
            v = w[c]
            for q in range(g):
                out[c * g + q] = x[c * g + q] * v


@_jit
def _mirror_pads(prow: _Array, pads: _Array, r: int, wc: int, g: int) -> None:
    """Padded columns ``0..r-1`` and ``r+wc..wc+2r-1`` of ``prow`` from columns ``r + pads``."""
    for q in range(2 * r):
        dst = (q if q < r else q + wc) * g
        src = (r + pads[q]) * g
        if g == _LANES:
            d = np.uint64(dst)
            e = np.uint64(src)
            for m in range(_LANES):
                prow[d + np.uint64(m)] = prow[e + np.uint64(m)]
        else:
            for m in range(g):
                prow[dst + m] = prow[src + m]


@_jit
def _interleave(x: _Array, i: int, g: int, xg: _Array, y0: int, y1: int) -> None:
    """Rows ``y0..y1-1`` of ``xg[y, c g + q] = x[i + q, y, c]``: images ``i..i+g-1`` side by
    side per pixel."""
    for y in range(y0, y1):
        xr = xg[y]
        for c in range(x.shape[2]):
            for q in range(g):
                xr[c * g + q] = x[i + q, y, c]


@_jit
def _deinterleave(og: _Array, i: int, g: int, out: _Array, y0: int, y1: int) -> None:
    """Rows ``y0..y1-1`` of ``out[i + q, y, c] = og[y, c g + q]`` (see :func:`_interleave`)."""
    for y in range(y0, y1):
        orow = og[y]
        for c in range(out.shape[2]):
            for q in range(g):
                out[i + q, y, c] = orow[c * g + q]


@_inline
def _w_pass(
    xr: _Array,
    yr: _Array,
    prow: _Array,
    d: int,
    k: int,
    g: int,
    sc: int,
    plan: _Plan,
    taps: _Array,
    weights: _Array,
    sparse: bool,
) -> None:
    """W-pass row ``d`` of crop ``k`` (input row ``xr``) into ``yr``; ``prow`` is all zeros
    before and after (SVB; SIB overwrites it) and so is ``yr`` (SVB)."""
    crops, h_ptr, h_seg, pads = plan[:4]
    wc = crops[k, 3] - crops[k, 2]
    r = crops[k, 4]
    toff = crops[k, 5]
    woff = crops[k, 6] + d * wc
    s0 = h_ptr[crops[k, 7] + d]
    s1 = h_ptr[crops[k, 7] + d + 1]
    nt = 2 * r + 1
    if sparse:
        for s in range(s0, s1):  # the weighted input of each run
            lo = max(0, h_seg[s, 0] - r)
            hi = min(wc, h_seg[s, 1] - r)
            _weigh(
                prow[(r + lo) * g : (r + hi) * g],
                xr[lo * g : hi * g],
                weights[woff + lo : woff + hi],
                g,
            )
    else:
        pm = prow[r * g : (r + wc) * g]
        for c in range(wc * g):
            pm[c] = xr[c]
    if h_seg[s0, 0] < r or h_seg[s1 - 1, 1] > r + wc:  # the mirrored input is non-zero
        _mirror_pads(prow, pads[crops[k, 10] : crops[k, 10] + 2 * r], r, wc, g)
    if not sparse:
        n = _round_up(wc, sc) * g
        _mul1(yr[:n], prow[:n], taps[toff])
        _taps_w(yr[:n], prow, g, g, taps, toff + 1, nt - 1)
        return
    for s in range(s0, s1):  # each pass of taps over the outputs it reaches
        a = h_seg[s, 0]
        e = h_seg[s, 1]
        j = 0
        while j < nt:
            m = 4 if nt - j >= 4 else 1
            lo = max(0, a - j - m + 1)
            n = _round_up(min(wc, e - j) - lo, sc) * g
            if n > 0:
                _taps_w(yr[lo * g : lo * g + n], prow, (lo + j) * g, g, taps, toff + j, m)
            j += m
    for s in range(s0, s1):  # back to zeros
        prow[max(r, h_seg[s, 0]) * g : min(r + wc, h_seg[s, 1]) * g] = 0.0
    prow[: r * g] = 0.0
    prow[(r + wc) * g : (2 * r + wc) * g] = 0.0


@_inline
def _h_pass(
    orow: _Array,
    zrow: _Array,
    ring: _Array,
    offs: _Array,
    row: int,
    k: int,
    g: int,
    sc: int,
    plan: _Plan,
    taps: _Array,
    sparse: bool,
) -> None:
    """Output row ``row`` of crop ``k`` along H into ``orow`` (stored for SIB, added to for
    SVB), from the W-pass rows at ``offs`` in ``ring``."""
    crops = plan[0]
    g_ptr, g_seg, v_ptr, v_seg = plan[5:9]
    wc = crops[k, 3] - crops[k, 2]
    nt = 2 * crops[k, 4] + 1
    toff = crops[k, 5]
    roff = crops[k, 7]
    if not sparse:
        n = _round_up(wc, sc) * g
        zv = zrow[:n]
        _mul1(zv, ring[offs[0] : offs[0] + n], taps[toff])
        _taps_h(zv, ring, offs[1:], 0, taps, toff + 1, nt - 1)
        for c in range(wc * g):
            orow[c] = zv[c]
        return
    v0 = v_ptr[roff + row]
    v1 = v_ptr[roff + row + 1]
    for s in range(v0, v1):
        a = v_seg[s, 0] * g
        zrow[a : a + _round_up(v_seg[s, 1] - v_seg[s, 0], sc) * g] = 0.0
    q = crops[k, 8] + row * (nt // 4 + nt % 4)  # passes of 4 taps, then of 1
    j = 0
    while j < nt:
        m = 4 if nt - j >= 4 else 1
        for s in range(g_ptr[q], g_ptr[q + 1]):  # columns where rows j..j+m-1 are non-zero
            a = g_seg[s, 0] * g
            n = _round_up(g_seg[s, 1] - g_seg[s, 0], sc) * g
            _taps_h(zrow[a : a + n], ring, offs[j : j + m], a, taps, toff + j, m)
        j += m
        q += 1
    for s in range(v0, v1):
        a = v_seg[s, 0] * g
        e = v_seg[s, 1] * g
        ov = orow[a:e]
        zv = zrow[a:e]
        for c in range(e - a):
            ov[c] += zv[c]


@_jit
def _blur_lanes(
    x: _Array,
    out: _Array,
    i: int,
    g: int,
    xg: _Array,
    og: _Array,
    plan: _Plan,
    taps: _Array,
    weights: _Array,
    sparse: bool,
    prow: _Array,
    ring: _Array,
    zero: int,
    zrow: _Array,
    offs: _Array,
    done: _Array,
) -> None:
    """Blur images ``i..i+g-1`` of ``x`` into ``out`` through their interleaved copies ``xg``
    and ``og`` (``(H, W g)``), crop by crop per band of output rows.

    ``ring`` holds, per crop, its last ``2 r + 1`` W-pass rows (slots of ``(wc + _STEP) g``
    values) and, from ``zero`` on, a slot of zeros for the rows without input. The input is
    interleaved as bands need it and the output leaves band by band, while in cache.
    """
    crops, h_ptr, _, _, rows = plan[:5]
    y_ptr, y_seg = plan[9:11]
    h = x.shape[1]
    sc = _step_columns(g)
    done[:] = 0  # W-pass rows computed so far, per crop
    ready = 0  # input rows interleaved so far
    max_r = 0
    for k in range(crops.shape[0]):
        max_r = max(max_r, crops[k, 4])
    for band in range(0, h, _BAND):
        end = min(h, band + _BAND)
        _interleave(x, i, g, xg, ready, min(h, end + max_r))
        ready = max(ready, min(h, end + max_r))
        if sparse:
            og[band:end] = 0.0
        for k in range(crops.shape[0]):
            y0 = crops[k, 0]
            x0 = crops[k, 2]
            hc = crops[k, 1] - y0
            wc = crops[k, 3] - x0
            r = crops[k, 4]
            roff = crops[k, 7]
            base = crops[k, 11] * g
            nt = 2 * r + 1
            ws = (wc + _STEP) * g
            for row in range(max(band, y0) - y0, min(band + _BAND, y0 + hc) - y0):
                while done[k] < hc and done[k] <= row + r:  # the W-pass rows this row needs
                    d = done[k]
                    done[k] = d + 1
                    if h_ptr[roff + d] < h_ptr[roff + d + 1]:
                        yr = ring[base + (d % nt) * ws : base + (d % nt + 1) * ws]
                        xr = xg[y0 + d, x0 * g : (x0 + wc) * g]
                        _w_pass(xr, yr, prow, d, k, g, sc, plan, taps, weights, sparse)
                for j in range(nt):
                    q = rows[crops[k, 9] + row + j]
                    offs[j] = zero if q < 0 else base + (q % nt) * ws
                orow = og[y0 + row, x0 * g : (x0 + wc) * g]
                _h_pass(orow, zrow, ring, offs, row, k, g, sc, plan, taps, sparse)
                if not sparse:
                    continue
                # W-pass rows no later output row reads go back to zeros (where written):
                # row - r, and after the crop's last row all the rows still kept.
                for d in range(max(0, row - r), row - r + 1 if row < hc - 1 else hc):
                    slot = base + (d % nt) * ws
                    for s in range(y_ptr[roff + d], y_ptr[roff + d + 1]):
                        a = slot + y_seg[s, 0] * g
                        ring[a : slot + min(wc + _STEP, y_seg[s, 1] + sc) * g] = 0.0
        _deinterleave(og, i, g, out, band, end)


@numba.njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _blur_images(
    x: _Array,
    out: _Array,
    plan: _Plan,
    taps: _Array,
    weights: _Array,
    sparse: bool,
    max_wc: int,
    max_r: int,
    ring_columns: int,
    threads: int,
) -> None:
    """Blur every image of ``x`` (``(B, H, W)``) into ``out``, up to ``_LANES`` at a time, on
    ``threads`` threads (no value depends on how the images are grouped or split)."""
    b, h, w = x.shape
    chunks = min(b, threads)
    for chunk in numba.prange(chunks):  # one per thread, each with its own buffers
        lanes = max(1, min(_LANES, b, _GROUP_VALUES // (h * w)))
        xg = np.empty((h, w * lanes), dtype=x.dtype)
        og = np.empty((h, w * lanes), dtype=x.dtype)
        prow = np.zeros((max_wc + 2 * max_r + 2 * _STEP) * lanes, dtype=x.dtype)
        zrow = np.zeros((max_wc + 2 * _STEP) * lanes, dtype=x.dtype)
        zero = ring_columns * lanes
        ring = np.zeros(zero + zrow.shape[0], dtype=x.dtype)
        offs = np.empty(2 * max_r + 1, dtype=np.int64)
        done = np.zeros(plan[0].shape[0], dtype=np.int64)
        i = chunk * b // chunks
        i1 = (chunk + 1) * b // chunks
        while i < i1:
            g = min(lanes, i1 - i)
            _blur_lanes(
                x, out, i, g, xg, og, plan, taps, weights, sparse, prow, ring, zero, zrow,
                offs, done,
            )  # fmt: skip
            i += g


# --- tables of the compiled path (built once per shape and blur, cached) ----------------------


def applies(x: Tensor, r: int, *, sib: bool = True) -> bool:
    """Whether the compiled kernel blurs ``x`` with kernels of radius up to ``r`` (callers
    also keep it below the radius where they switch to an FFT)."""
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and not (x.requires_grad and torch.is_grad_enabled())
        and (r > 0 or not sib)  # SIB with r = 0 is x * 1.0, as the torch code does
    )


def _mirror(k: np.ndarray, n: int) -> np.ndarray:
    """Source index of positions ``k`` under repeated mirroring of ``0..n-1``."""
    m = np.remainder(k, 2 * n)
    return np.where(m >= n, 2 * n - 1 - m, m)


def _runs(nonzero: np.ndarray) -> list[tuple[int, int]]:
    """``[start, end)`` of each run of True."""
    d = np.diff(np.concatenate([[0], nonzero.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist(), strict=True))


def _merge(runs: list[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    """``runs`` clipped to ``[lo, hi)``, sorted, and merged when less than ``_GAP`` apart."""
    out: list[list[int]] = []
    for a, e in sorted((max(lo, a), min(hi, e)) for a, e in runs):
        if e <= a:
            continue
        if out and a <= out[-1][1] + _GAP:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([a, e])
    return [(a, e) for a, e in out]


@dataclass(frozen=True)
class Tables:
    """A compiled blur: its crops and their runs of non-zeros (see :func:`crop_tables`)."""

    plan: tuple[np.ndarray, ...]
    taps: np.ndarray
    weights: np.ndarray
    max_wc: int
    max_r: int
    ring_columns: int


def crop_tables(
    crops: list[tuple[int, int, int, int, tuple[float, ...], np.ndarray | None]], dtype: type
) -> Tables:
    """The kernel's tables for ``crops`` = ``(y0, y1, x0, x1, taps, weight)`` (weight None: SIB).

    ``plan`` holds: per crop its box, radius and offsets into the other tables (``crops``);
    per crop row the runs of non-zero input in padded columns (``h_ptr``, ``h_seg``) and of
    non-zero W-pass output (``y_ptr``, ``y_seg``); per output row and pass of taps along H
    (4 taps, then 1) the columns where those rows are non-zero (``g_ptr``, ``g_seg``) and
    their union (``v_ptr``, ``v_seg``); per padded row its crop row, -1 if without input
    (``rows``); per crop the source columns of its mirrored pads (``pads``).
    """
    table: list[list[int]] = []
    taps: list[float] = []
    weights: list[np.ndarray] = []
    h_ptr, h_seg, pads, rows = [], [], [], []
    g_ptr, g_seg, v_ptr, v_seg, y_ptr, y_seg = [], [], [], [], [], []
    ring = 0  # columns of the ring buffer before this crop's part
    for y0, y1, x0, x1, t, weight in crops:
        hc, wc, r = y1 - y0, x1 - x0, (len(t) - 1) // 2
        nt = 2 * r + 1
        table.append(
            [y0, y1, x0, x1, r, len(taps), sum(w.size for w in weights), len(h_ptr), len(g_ptr),
             len(rows), len(pads), ring]
        )  # fmt: skip
        cols = _mirror(np.arange(wc + 2 * r) - r, wc)  # padded column -> crop column
        nz = np.ones((hc, wc), dtype=bool) if weight is None else weight != 0
        y_runs = []
        for row in range(hc):
            runs = _merge(_runs(nz[row][cols]), 0, wc + 2 * r)
            h_ptr.append(len(h_seg))
            h_seg.extend(runs)
            # Output c reads padded columns c..c+2r: a run [a, e) reaches outputs a-2r..e-1.
            y_runs.append(_merge([(a - 2 * r, e) for a, e in runs], 0, wc))
            y_ptr.append(len(y_seg))
            y_seg.extend(y_runs[-1])
        h_ptr.append(len(h_seg))
        y_ptr.append(len(y_seg))
        pads.extend(cols[:r].tolist() + cols[r + wc :].tolist())
        src = _mirror(np.arange(hc + 2 * r) - r, hc)  # padded row -> crop row
        rows.extend(int(s) if y_runs[s] else -1 for s in src)
        for row in range(hc):
            v_ptr.append(len(v_seg))
            if weight is None:
                continue
            union: list[tuple[int, int]] = []
            j = 0
            while j < nt:
                m = 4 if nt - j >= 4 else 1
                runs = _merge([s for q in range(j, j + m) for s in y_runs[src[row + q]]], 0, wc)
                g_ptr.append(len(g_seg))
                g_seg.extend(runs)
                union.extend(runs)
                j += m
            v_seg.extend(_merge(union, 0, wc))
        v_ptr.append(len(v_seg))
        if weight is not None:
            weights.append(np.ascontiguousarray(weight, dtype=dtype).reshape(-1))
        taps.extend(t)
        ring += nt * (wc + _STEP)
    g_ptr.append(len(g_seg))

    def ints(v: list, pairs: bool = False) -> np.ndarray:
        a = np.array(v, dtype=np.int64)
        return a.reshape(-1, 2) if pairs else a

    plan = (
        ints(table).reshape(-1, 12), ints(h_ptr), ints(h_seg, True), ints(pads), ints(rows),
        ints(g_ptr), ints(g_seg, True), ints(v_ptr), ints(v_seg, True), ints(y_ptr),
        ints(y_seg, True),
    )  # fmt: skip
    return Tables(
        plan=plan,
        taps=np.array(taps, dtype=dtype),
        weights=np.concatenate(weights) if weights else np.zeros(0, dtype=dtype),
        max_wc=max(x1 - x0 for _, _, x0, x1, *_ in crops),
        max_r=max((len(t) - 1) // 2 for *_, t, _ in crops),
        ring_columns=ring,
    )


def np_dtype(x: Tensor) -> type:
    return np.float64 if x.dtype == torch.float64 else np.float32


@functools.lru_cache(maxsize=64)
def sib_tables(h: int, w: int, taps: tuple[float, ...], dtype: type) -> Tables:
    return crop_tables([(0, h, 0, w, taps, None)], dtype)


def run_compiled(x: Tensor, tables: Tables, *, sparse: bool) -> Tensor:
    """The compiled blur of CPU images ``x`` (``(B, 1, H, W)``, float32 or float64)."""
    xn = x.detach().contiguous().numpy()[:, 0]
    out = np.empty_like(xn)
    with launch():
        _blur_images(
            xn, out, tables.plan, tables.taps, tables.weights, sparse, tables.max_wc,
            tables.max_r, tables.ring_columns, numba.get_num_threads(),
        )  # fmt: skip
    return torch.from_numpy(out)[:, None]

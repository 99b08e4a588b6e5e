"""Compiled CPU sums (Numba) of the camera model: per-row foreground/background sums.

:func:`mask_sums` and :func:`snr_sums` give the sums of the exposure solve and of the realised
SNR (:mod:`synthesis.corruptions.noise`) in one pass each, accumulated in float64 in a fixed
sequential order, so they are the same bits whatever the batch, the thread count or the CPU's
vector width (torch's float64 reductions cast a copy first and cost 3x more).
:func:`adu_rows` is the ADU step; :func:`noisy_rows` fuses the normal's scaling, the ADU step
and :func:`snr_sums` in one pass (the CPU path of :mod:`synthesis.corruptions.noise`), each
value with the same float32 operations and each row summed in the same order. Rows run in
parallel; launches go through :func:`synthesis.rng.kernels.launch` (one threading setup for
every kernel of the package).
"""

from __future__ import annotations

import numba
import numpy as np

from synthesis.rng.kernels import launch

#: Rows summed together by one thread: each row's sums are sequential chains of float64
#: additions (4 cycles each); four rows side by side keep four times as many in flight.
_ROWS = 4


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _mask_sums_row(
    x: np.ndarray, fg: np.ndarray, r: int, out_n: np.ndarray, out_s: np.ndarray
) -> None:
    count = 0
    sum_fg = 0.0
    sum_all = 0.0
    for c in range(x.shape[1]):
        v = np.float64(x[r, c])
        sum_all += v
        if fg[r, c]:
            count += 1
            sum_fg += v
    out_n[r] = count
    out_s[r, 0] = sum_fg
    out_s[r, 1] = sum_all


@numba.njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _mask_sums(x: np.ndarray, fg: np.ndarray, out_n: np.ndarray, out_s: np.ndarray) -> None:
    batch, n = x.shape
    for q in numba.prange((batch + _ROWS - 1) // _ROWS):
        r = q * _ROWS
        if r + _ROWS > batch:
            for t in range(r, batch):
                _mask_sums_row(x, fg, t, out_n, out_s)
            continue
        # The four rows' sums in the same order as one row at a time (adding +0.0 where the
        # mask is off leaves a sum that starts at +0.0 unchanged, bit for bit).
        n0 = n1 = n2 = n3 = 0
        f0 = f1 = f2 = f3 = 0.0
        a0 = a1 = a2 = a3 = 0.0
        for c in range(n):
            v0 = np.float64(x[r, c])
            v1 = np.float64(x[r + 1, c])
            v2 = np.float64(x[r + 2, c])
            v3 = np.float64(x[r + 3, c])
            m0 = fg[r, c]
            m1 = fg[r + 1, c]
            m2 = fg[r + 2, c]
            m3 = fg[r + 3, c]
            a0 += v0
            a1 += v1
            a2 += v2
            a3 += v3
            n0 += m0
            n1 += m1
            n2 += m2
            n3 += m3
            f0 += v0 if m0 else 0.0
            f1 += v1 if m1 else 0.0
            f2 += v2 if m2 else 0.0
            f3 += v3 if m3 else 0.0
        out_n[r] = n0
        out_n[r + 1] = n1
        out_n[r + 2] = n2
        out_n[r + 3] = n3
        out_s[r, 0] = f0
        out_s[r + 1, 0] = f1
        out_s[r + 2, 0] = f2
        out_s[r + 3, 0] = f3
        out_s[r, 1] = a0
        out_s[r + 1, 1] = a1
        out_s[r + 2, 1] = a2
        out_s[r + 3, 1] = a3


def mask_sums(x: np.ndarray, fg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``(B, n)`` values and a bool mask: ``(n_fg, sum_fg, sum_all)``.

    ``n_fg`` is int64, the sums float64 (accumulated in order along the row).
    """
    batch = x.shape[0]
    out_n = np.empty(batch, dtype=np.int64)
    out_s = np.empty((batch, 2), dtype=np.float64)
    with launch():
        _mask_sums(np.ascontiguousarray(x), np.ascontiguousarray(fg), out_n, out_s)
    return out_n, out_s[:, 0], out_s[:, 1]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _snr_sums_row(
    adu: np.ndarray,
    mean_e: np.ndarray,
    fg: np.ndarray,
    gain: np.ndarray,
    offset_e: np.ndarray,
    r: int,
    out: np.ndarray,
) -> None:
    g = gain[r]
    o = offset_e[r]
    count = 0
    sum_fg = 0.0
    sum_all = 0.0
    resid = 0.0
    for c in range(adu.shape[1]):
        e = np.float32(adu[r, c]) * g - o  # float32, as the torch code computes it
        sum_all += np.float64(e)
        if fg[r, c]:
            count += 1
            sum_fg += np.float64(e)
            d = e - mean_e[r, c]
            resid += np.float64(d * d)
    out[r, 0] = count
    out[r, 1] = sum_fg
    out[r, 2] = sum_all
    out[r, 3] = resid


@numba.njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _snr_sums(
    adu: np.ndarray,
    mean_e: np.ndarray,
    fg: np.ndarray,
    gain: np.ndarray,
    offset_e: np.ndarray,
    out: np.ndarray,
) -> None:
    batch, n = adu.shape
    for q in numba.prange((batch + _ROWS - 1) // _ROWS):
        r = q * _ROWS
        if r + _ROWS > batch:
            for t in range(r, batch):
                _snr_sums_row(adu, mean_e, fg, gain, offset_e, t, out)
            continue
        # Four rows side by side, each summed in its own order (see _mask_sums).
        g0, g1, g2, g3 = gain[r], gain[r + 1], gain[r + 2], gain[r + 3]
        o0, o1, o2, o3 = offset_e[r], offset_e[r + 1], offset_e[r + 2], offset_e[r + 3]
        n0 = n1 = n2 = n3 = 0
        a0 = a1 = a2 = a3 = 0.0
        f0 = f1 = f2 = f3 = 0.0
        s0 = s1 = s2 = s3 = 0.0
        for c in range(n):
            e0 = np.float32(adu[r, c]) * g0 - o0  # float32, as the torch code computes it
            e1 = np.float32(adu[r + 1, c]) * g1 - o1
            e2 = np.float32(adu[r + 2, c]) * g2 - o2
            e3 = np.float32(adu[r + 3, c]) * g3 - o3
            d0 = e0 - mean_e[r, c]
            d1 = e1 - mean_e[r + 1, c]
            d2 = e2 - mean_e[r + 2, c]
            d3 = e3 - mean_e[r + 3, c]
            m0 = fg[r, c]
            m1 = fg[r + 1, c]
            m2 = fg[r + 2, c]
            m3 = fg[r + 3, c]
            a0 += np.float64(e0)
            a1 += np.float64(e1)
            a2 += np.float64(e2)
            a3 += np.float64(e3)
            f0 += np.float64(e0) if m0 else 0.0
            f1 += np.float64(e1) if m1 else 0.0
            f2 += np.float64(e2) if m2 else 0.0
            f3 += np.float64(e3) if m3 else 0.0
            s0 += np.float64(d0 * d0) if m0 else 0.0
            s1 += np.float64(d1 * d1) if m1 else 0.0
            s2 += np.float64(d2 * d2) if m2 else 0.0
            s3 += np.float64(d3 * d3) if m3 else 0.0
            n0 += m0
            n1 += m1
            n2 += m2
            n3 += m3
        out[r, 0] = n0
        out[r + 1, 0] = n1
        out[r + 2, 0] = n2
        out[r + 3, 0] = n3
        out[r, 1] = f0
        out[r + 1, 1] = f1
        out[r + 2, 1] = f2
        out[r + 3, 1] = f3
        out[r, 2] = a0
        out[r + 1, 2] = a1
        out[r + 2, 2] = a2
        out[r + 3, 2] = a3
        out[r, 3] = s0
        out[r + 1, 3] = s1
        out[r + 2, 3] = s2
        out[r + 3, 3] = s3


def snr_sums(
    adu: np.ndarray, mean_e: np.ndarray, fg: np.ndarray, gain: np.ndarray, offset_e: np.ndarray
) -> np.ndarray:
    """Per row: ``[n_fg, sum_fg(e), sum_all(e), sum_fg((e - mean_e)^2)]``, float64 ``(B, 4)``.

    ``e = float32(adu) * gain - offset_e`` in float32 (electrons), ``mean_e`` float32, ``fg``
    bool, all ``(B, n)``; ``gain`` and ``offset_e`` (= offset_adu * gain) float32 ``(B,)``.
    """
    out = np.empty((adu.shape[0], 4), dtype=np.float64)
    with launch():
        _snr_sums(
            np.ascontiguousarray(adu),
            np.ascontiguousarray(mean_e, dtype=np.float32),
            np.ascontiguousarray(fg),
            np.ascontiguousarray(gain, dtype=np.float32),
            np.ascontiguousarray(offset_e, dtype=np.float32),
            out,
        )
    return out


@numba.njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _adu_rows(
    normal: np.ndarray,
    scale: np.ndarray,
    add: np.ndarray,
    gain: np.ndarray,
    offset: np.ndarray,
    adc_max: np.ndarray,
    out: np.ndarray,
) -> None:
    batch, n = normal.shape
    for r in numba.prange(batch):
        s = scale[r]
        g = gain[r]
        o = offset[r]
        m = adc_max[r]
        for c in range(n):
            e = normal[r, c] * s  # float32, rounded, then added (no fused multiply-add)
            e = e + add[r, c]
            v = np.rint(e / g + o)  # round half to even, as torch.round
            v = max(v, np.float32(0.0))
            v = min(v, m)
            out[r, c] = np.int32(v)


def adu_rows(
    normal: np.ndarray,
    scale: np.ndarray,
    add: np.ndarray,
    gain: np.ndarray,
    offset: np.ndarray,
    adc_max: np.ndarray,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Camera images in ADU, int32 ``(B, n)`` (into ``out`` if given, a C-contiguous int32
    array), in one pass: per row ``r`` and value ``c``,
    ``e = normal * scale[r] + add`` (multiply, round, then add), then
    ``round(e / gain[r] + offset[r])`` (half to even) clipped to ``[0, adc_max[r]]``.

    Every operation is the float32 one of the torch code in :mod:`synthesis.corruptions.noise`
    (``mul_``, ``add_``, ``div_``, ``add_``, ``round_``, ``clamp_``, ``minimum``), in its order,
    so the bytes are the same. All arrays float32; ``normal`` and ``add`` ``(B, n)``, the rest
    ``(B,)``.
    """
    if out is None:
        out = np.empty(normal.shape, dtype=np.int32)
    f32 = np.float32
    with launch():
        _adu_rows(
            np.ascontiguousarray(normal, dtype=f32),
            np.ascontiguousarray(scale, dtype=f32),
            np.ascontiguousarray(add, dtype=f32),
            np.ascontiguousarray(gain, dtype=f32),
            np.ascontiguousarray(offset, dtype=f32),
            np.ascontiguousarray(adc_max, dtype=f32),
            out,
        )
    return out


_SQRT2 = np.float32(np.sqrt(2.0))
#: Columns per step of a group of rows: the ADU values of the group's rows for these columns
#: are written, then summed while they are in cache.
_CHUNK = 2048


@numba.njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _noisy_rows(
    y: np.ndarray,
    scale: np.ndarray,
    shot: np.ndarray,
    x: np.ndarray,
    k: np.ndarray,
    gain: np.ndarray,
    offset: np.ndarray,
    adc_max: np.ndarray,
    fg: np.ndarray,
    offset_e: np.ndarray,
    with_shot: bool,
    with_sums: bool,
    out: np.ndarray,
    sums: np.ndarray,
) -> None:
    batch, n = y.shape
    for q in numba.prange((batch + _ROWS - 1) // _ROWS):
        r0 = q * _ROWS
        r1 = min(batch, r0 + _ROWS)
        for r in range(r0, r1):
            for j in range(4):
                sums[r, j] = 0.0
        for c0 in range(0, n, _CHUNK):
            c1 = min(n, c0 + _CHUNK)
            for r in range(r0, r1):
                s = scale[r]
                g = gain[r]
                o = offset[r]
                m = adc_max[r]
                kr = k[r]
                for c in range(c0, c1):
                    e = y[r, c] * _SQRT2  # rng.normal: erfinv(2u - 1) * sqrt(2), float32
                    e = e * s  # then multiply, round, add (no fused multiply-add)
                    if with_shot:
                        e = e + shot[r, c]
                    else:
                        e = e + x[r, c] * kr  # the expected electrons, float32(x * k)
                    v = np.rint(e / g + o)  # round half to even, as torch.round
                    v = max(v, np.float32(0.0))
                    v = min(v, m)
                    out[r, c] = np.int32(v)
            if not with_sums:
                continue
            if r1 - r0 < _ROWS:
                for r in range(r0, r1):
                    _chunk_sums_row(out, x, k, fg, gain, offset_e, r, c0, c1, sums)
                continue
            _chunk_sums_4(out, x, k, fg, gain, offset_e, r0, c0, c1, sums)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _chunk_sums_row(
    adu: np.ndarray,
    x: np.ndarray,
    k: np.ndarray,
    fg: np.ndarray,
    gain: np.ndarray,
    offset_e: np.ndarray,
    r: int,
    c0: int,
    c1: int,
    out: np.ndarray,
) -> None:
    """:func:`_snr_sums_row` on columns ``c0:c1``, continuing the sums in ``out[r]``."""
    g = gain[r]
    o = offset_e[r]
    kr = k[r]
    count = out[r, 0]
    sum_fg = out[r, 1]
    sum_all = out[r, 2]
    resid = out[r, 3]
    for c in range(c0, c1):
        e = np.float32(adu[r, c]) * g - o  # float32, as the torch code computes it
        sum_all += np.float64(e)
        if fg[r, c]:
            count += 1.0
            sum_fg += np.float64(e)
            d = e - x[r, c] * kr
            resid += np.float64(d * d)
    out[r, 0] = count
    out[r, 1] = sum_fg
    out[r, 2] = sum_all
    out[r, 3] = resid


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _chunk_sums_4(
    adu: np.ndarray,
    x: np.ndarray,
    k: np.ndarray,
    fg: np.ndarray,
    gain: np.ndarray,
    offset_e: np.ndarray,
    r: int,
    c0: int,
    c1: int,
    out: np.ndarray,
) -> None:
    """:func:`_snr_sums`' four rows side by side on columns ``c0:c1``, continuing ``out``."""
    g0, g1, g2, g3 = gain[r], gain[r + 1], gain[r + 2], gain[r + 3]
    o0, o1, o2, o3 = offset_e[r], offset_e[r + 1], offset_e[r + 2], offset_e[r + 3]
    k0, k1, k2, k3 = k[r], k[r + 1], k[r + 2], k[r + 3]
    n0, n1, n2, n3 = 0, 0, 0, 0
    f0, f1, f2, f3 = out[r, 1], out[r + 1, 1], out[r + 2, 1], out[r + 3, 1]
    a0, a1, a2, a3 = out[r, 2], out[r + 1, 2], out[r + 2, 2], out[r + 3, 2]
    s0, s1, s2, s3 = out[r, 3], out[r + 1, 3], out[r + 2, 3], out[r + 3, 3]
    for c in range(c0, c1):
        e0 = np.float32(adu[r, c]) * g0 - o0  # float32, as the torch code computes it
        e1 = np.float32(adu[r + 1, c]) * g1 - o1
        e2 = np.float32(adu[r + 2, c]) * g2 - o2
        e3 = np.float32(adu[r + 3, c]) * g3 - o3
        d0 = e0 - x[r, c] * k0
        d1 = e1 - x[r + 1, c] * k1
        d2 = e2 - x[r + 2, c] * k2
        d3 = e3 - x[r + 3, c] * k3
        m0 = fg[r, c]
        m1 = fg[r + 1, c]
        m2 = fg[r + 2, c]
        m3 = fg[r + 3, c]
        a0 += np.float64(e0)
        a1 += np.float64(e1)
        a2 += np.float64(e2)
        a3 += np.float64(e3)
        f0 += np.float64(e0) if m0 else 0.0
        f1 += np.float64(e1) if m1 else 0.0
        f2 += np.float64(e2) if m2 else 0.0
        f3 += np.float64(e3) if m3 else 0.0
        s0 += np.float64(d0 * d0) if m0 else 0.0
        s1 += np.float64(d1 * d1) if m1 else 0.0
        s2 += np.float64(d2 * d2) if m2 else 0.0
        s3 += np.float64(d3 * d3) if m3 else 0.0
        n0 += m0
        n1 += m1
        n2 += m2
        n3 += m3
    out[r, 0] += n0
    out[r + 1, 0] += n1
    out[r + 2, 0] += n2
    out[r + 3, 0] += n3
    out[r, 1] = f0
    out[r + 1, 1] = f1
    out[r + 2, 1] = f2
    out[r + 3, 1] = f3
    out[r, 2] = a0
    out[r + 1, 2] = a1
    out[r + 2, 2] = a2
    out[r + 3, 2] = a3
    out[r, 3] = s0
    out[r + 1, 3] = s1
    out[r + 2, 3] = s2
    out[r + 3, 3] = s3


def noisy_rows(
    y: np.ndarray,
    scale: np.ndarray,
    add: np.ndarray | None,
    x: np.ndarray,
    k: np.ndarray,
    gain: np.ndarray,
    offset: np.ndarray,
    adc_max: np.ndarray,
    out: np.ndarray,
    fg: np.ndarray | None = None,
) -> np.ndarray | None:
    """The read noise or Gaussian noise, ADU and (with ``fg``) SNR sums of rows, in one pass.

    ``y`` holds ``erfinv(2u - 1)`` (float32 ``(B, n)``): per row ``r`` and value ``c``,
    ``normal = y * float32(sqrt 2)`` (``rng.normal``), then :func:`adu_rows` with
    ``add`` (the shot noise, float32 ``(B, n)``) or, if ``add`` is None, the expected
    electrons ``x * k[r]`` (float32 products, as ``clean.float() * k``), into the int32
    ``out``. With ``fg`` (bool ``(B, n)``), also :func:`snr_sums` of those ADU values with
    ``mean_e = x * k[r]``, ``gain`` and ``offset_e = offset * gain`` (float32), returned as
    float64 ``(B, 4)``; each row summed in its order, so the bits are :func:`snr_sums`'.
    """
    f32 = np.float32
    batch = y.shape[0]
    sums = np.zeros((batch, 4), dtype=np.float64)
    gain = np.ascontiguousarray(gain, dtype=f32)
    offset = np.ascontiguousarray(offset, dtype=f32)
    offset_e = offset * gain  # float32, as ``offset_adu.float() * gain`` in torch
    with_sums = fg is not None
    with launch():
        _noisy_rows(
            np.ascontiguousarray(y, dtype=f32),
            np.ascontiguousarray(scale, dtype=f32),
            np.ascontiguousarray(add if add is not None else y, dtype=f32),
            np.ascontiguousarray(x, dtype=f32),
            np.ascontiguousarray(k, dtype=f32),
            gain,
            offset,
            np.ascontiguousarray(adc_max, dtype=f32),
            np.ascontiguousarray(fg) if with_sums else np.zeros((batch, 1), dtype=np.bool_),
            offset_e,
            add is not None,
            with_sums,
            out,
            sums,
        )
    return sums if with_sums else None

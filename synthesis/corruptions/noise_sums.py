"""Compiled CPU sums (Numba) of the camera model: per-row foreground/background sums.

:func:`mask_sums` and :func:`snr_sums` give the sums of the exposure solve and of the realised
SNR (:mod:`synthesis.corruptions.noise`) in one pass each, accumulated in float64 in a fixed
sequential order, so they are the same bits whatever the batch, the thread count or the CPU's
vector width (torch's float64 reductions cast a copy first and cost 3x more). Rows run in
parallel; launches go through :func:`synthesis.rng.kernels.launch` (one threading setup for
every kernel of the package).
"""

from __future__ import annotations

import numba
import numpy as np

from synthesis.rng.kernels import launch


@numba.njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _mask_sums(x: np.ndarray, fg: np.ndarray, out_n: np.ndarray, out_s: np.ndarray) -> None:
    batch, n = x.shape
    for r in numba.prange(batch):
        count = 0
        sum_fg = 0.0
        sum_all = 0.0
        for c in range(n):
            v = np.float64(x[r, c])
            sum_all += v
            if fg[r, c]:
                count += 1
                sum_fg += v
        out_n[r] = count
        out_s[r, 0] = sum_fg
        out_s[r, 1] = sum_all


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
    for r in numba.prange(batch):
        g = gain[r]
        o = offset_e[r]
        count = 0
        sum_fg = 0.0
        sum_all = 0.0
        resid = 0.0
        for c in range(n):
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

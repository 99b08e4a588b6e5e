"""Mask-free realism measures of filamentous structures (mitochondria, ER), on arrays.

"Mask-free": nothing here needs a *true* mask. Each image comes with a mask of its own (a
pseudo-mask of a real image, :mod:`synthesis.groundtruth.pseudo_masks`, or the mask a
synthetic image was rendered from), and the two images need not show the same structures
or have the same size: what is compared is the statistics of each. Definitions:

- **widths** (:func:`skeleton_widths`): at every pixel of the mask's skeleton
  (``skimage.morphology.skeletonize``), twice the Euclidean distance transform of the mask
  (``scipy.ndimage.distance_transform_edt``: the distance from the skeleton pixel's centre
  to the nearest background pixel's centre). For digitised tubes of width w at random
  angles its median is within about +0.5 px of w; an axis-aligned tube of odd width w
  gives w + 1 (the nearest background centre lies half a pixel beyond each edge);
- **topology** (:func:`skeleton_topology`): on the skeleton (8-connected), an **end point**
  is a pixel with exactly one skeleton neighbour and a **branch point** an 8-connected
  cluster of pixels with three or more (``skimage.measure.label``; the convention of
  ImageJ's AnalyzeSkeleton, so one junction drawn over adjacent pixels counts once), both
  as counts and per 100 skeleton pixels; **segments** are the paths of skan's graph
  (``skan.Skeleton``; lengths from ``Skeleton.path_lengths``, as ``branch_distance`` of
  ``skan.summarize``: px along the path, diagonal steps sqrt 2) between end points and
  junctions, less the short paths that lie wholly inside one junction cluster (skan makes
  each junction pixel a node). Isolated
  skeleton pixels (round objects whose skeleton is one pixel) have no segment: they are
  counted as ``puncta``, not as end points;
- **foreground fraction** (:func:`foreground_fraction`) and **empty-window share**
  (:func:`empty_window_share`): the share of the non-overlapping ``window x window`` windows
  (those that fit whole, from the top-left corner) with no foreground pixel: how clustered
  the structure is;
- **intensity histograms** (:func:`intensity_histograms`): each image normalised by the rule
  of :func:`synthesis.realism.normalise_levels` (minus the 0.5th percentile of its
  background, divided by the foreground mean of the result), then histograms of the
  foreground and background pixels on fixed bins, with quantiles and summaries;
- **power spectrum** (:func:`power_spectrum`): :func:`synthesis.realism.raps` of the
  normalised image's central square, divided by N^2 (a power spectral density per pixel,
  comparable between sizes), at frequencies ``k / N`` cycles per pixel.

:func:`structure_report` gathers them into one JSON-able dict (optionally with the native
noise fit and SNR of :mod:`synthesis.corruptions.real`); :func:`compare_reports` gives the
distances between two reports (lower is more alike). Distributions are stored as
:data:`QUANTILE_LEVELS` quantiles, so a Wasserstein-1 distance is the mean absolute
difference of two quantile vectors (the W1 integral at 100 midpoint levels).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage import measure
from skimage.morphology import skeletonize
from torch import Tensor

from synthesis.realism import normalise_levels, raps

__all__ = [
    "HIST_BINS",
    "HIST_RANGE",
    "QUANTILE_LEVELS",
    "compare_reports",
    "empty_window_share",
    "foreground_fraction",
    "intensity_histograms",
    "power_spectrum",
    "skeleton_topology",
    "skeleton_widths",
    "structure_report",
]

#: Levels of the stored quantile functions: 100 midpoints of [0, 1].
QUANTILE_LEVELS: np.ndarray = (np.arange(100) + 0.5) / 100
#: Normalised-intensity histogram bins (values outside go to the end bins).
HIST_BINS = 80
HIST_RANGE: tuple[float, float] = (-0.5, 3.5)
#: Percentiles reported for the foreground and background intensities.
_SUMMARY_PERCENTILES = (5, 25, 50, 75, 95)


# ----------------------------------------------------------------------------- inputs


def _to_numpy(x: object, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array or torch tensor. Got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (H, W). Got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name} must not be empty. Got shape {x.shape}")
    return x


def _mask(mask: object, name: str = "mask") -> np.ndarray:
    m = _to_numpy(mask, name)
    if m.dtype != bool:
        bad = (m != 0) & (m != 1)
        if bad.any():
            raise ValueError(f"{name} must be binary (0/1). Got values such as {m[bad][0]!r}")
        m = m != 0
    return m


def _image_and_mask(image: object, mask: object) -> tuple[np.ndarray, np.ndarray]:
    x = _to_numpy(image, "image").astype(np.float64)
    if not np.isfinite(x).all():
        raise ValueError("image must be finite. Got NaN or inf values")
    m = _mask(mask)
    if m.shape != x.shape:
        raise ValueError(f"mask must have the image's shape {x.shape}. Got {m.shape}")
    if not m.any() or m.all():
        raise ValueError("mask must have both foreground and background pixels. Got one of them")
    return x, m


def _quantiles(values: np.ndarray) -> list[float] | None:
    """The :data:`QUANTILE_LEVELS` quantiles (linear interpolation); None if no values."""
    if values.size == 0:
        return None
    return [float(v) for v in np.quantile(values, QUANTILE_LEVELS)]


def _summary(values: np.ndarray) -> dict[str, Any]:
    """n, mean, median, p25, p75, IQR and the quantile function of ``values`` (None if empty)."""
    if values.size == 0:
        return {"n": 0, "mean": None, "median": None, "p25": None, "p75": None, "iqr": None,
                "quantiles": None}  # fmt: skip
    p25, med, p75 = (float(v) for v in np.percentile(values, [25, 50, 75]))
    return {
        "n": int(values.size),
        "mean": float(values.mean()),
        "median": med,
        "p25": p25,
        "p75": p75,
        "iqr": p75 - p25,
        "quantiles": _quantiles(values),
    }


# ----------------------------------------------------------------------------- shape


def skeleton_widths(mask: np.ndarray | Tensor) -> np.ndarray:
    """Widths (px) along the skeleton: ``2 * EDT`` of the mask at each skeleton pixel.

    Skeleton: ``skimage.morphology.skeletonize``; EDT: ``scipy.ndimage.distance_transform_edt``
    (distance to the nearest background pixel centre; the image border is not background).

    Args:
        mask: ``(H, W)`` bool or 0/1 array (numpy or torch).

    Returns:
        float64 array, one width per skeleton pixel (row-major order); empty for an empty mask.

    Example:
        >>> m = np.zeros((20, 40), bool); m[8:13, 5:35] = True  # a bar 5 px wide
        >>> float(np.median(skeleton_widths(m)))
        6.0
    """
    m = _mask(mask)
    skel = skeletonize(m)
    return 2.0 * ndi.distance_transform_edt(m)[skel]


def skeleton_topology(mask: np.ndarray | Tensor) -> dict[str, Any]:
    """Branch points, end points and segment lengths of the mask's skeleton.

    Skeleton: ``skimage.morphology.skeletonize``; branch points: 8-connected clusters of
    skeleton pixels with >= 3 skeleton neighbours (``skimage.measure.label``); end points:
    skeleton pixels with one neighbour; segments: ``skan`` (module docstring).

    Args:
        mask: ``(H, W)`` bool or 0/1 array (numpy or torch).

    Returns:
        ``skeleton_px`` (skeleton pixels), ``branch_points``, ``end_points``, ``puncta``
        (isolated skeleton pixels), the rates ``branch_points_per_100px`` and
        ``end_points_per_100px`` (NaN without skeleton), and ``segment_lengths`` (float64
        array, px, one per segment).

    Example:
        >>> m = np.zeros((40, 40), bool); m[18:23, 3:37] = True; m[3:37, 18:23] = True
        >>> t = skeleton_topology(m)
        >>> t["branch_points"], t["end_points"], len(t["segment_lengths"])
        (1, 4, 4)
    """
    import skan

    skel = skeletonize(_mask(mask))
    n_px = int(skel.sum())
    neighbours = ndi.convolve(skel.astype(np.uint8), np.ones((3, 3), np.uint8), mode="constant")
    neighbours = np.where(skel, neighbours - 1, 0)
    junction = neighbours >= 3
    isolated = skel & (neighbours == 0)
    lengths = np.zeros(0, dtype=np.float64)
    graph = skel & ~isolated
    if graph.any():
        skeleton = skan.Skeleton(graph)
        inside = np.zeros(skeleton.n_paths, dtype=bool)
        for i in range(skeleton.n_paths):
            rc = skeleton.path_coordinates(i).astype(np.intp)
            inside[i] = bool(junction[rc[:, 0], rc[:, 1]].all())
        lengths = np.asarray(skeleton.path_lengths(), dtype=np.float64)[~inside]
    branch = int(measure.label(junction, connectivity=2).max())
    end = int((neighbours[skel] == 1).sum())
    rate = 100.0 / n_px if n_px else math.nan
    return {
        "skeleton_px": n_px,
        "branch_points": branch,
        "end_points": end,
        "puncta": int(isolated.sum()),
        "branch_points_per_100px": branch * rate,
        "end_points_per_100px": end * rate,
        "segment_lengths": lengths,
    }


def foreground_fraction(mask: np.ndarray | Tensor) -> float:
    """Share of the mask's pixels that are foreground.

    Example:
        >>> foreground_fraction(np.array([[True, False], [False, False]]))
        0.25
    """
    return float(_mask(mask).mean())


def empty_window_share(mask: np.ndarray | Tensor, window: int = 64) -> float:
    """Share of the non-overlapping ``window x window`` windows (tiled from the top-left
    corner; a partial window at the right or bottom edge is left out) that hold no
    foreground pixel: 0 for a structure spread everywhere, near 1 for one tight cluster.

    Raises:
        ValueError: ``window`` < 1 or larger than the mask.

    Example:
        >>> m = np.zeros((128, 128), bool); m[5, 5] = True
        >>> empty_window_share(m, 64)
        0.75
    """
    m = _mask(mask)
    if int(window) != window or window < 1:
        raise ValueError(f"window must be a positive integer. Got {window}")
    h, w = m.shape[0] // window, m.shape[1] // window
    if h == 0 or w == 0:
        raise ValueError(f"window {window} is larger than the mask {m.shape}")
    blocks = m[: h * window, : w * window].reshape(h, window, w, window)
    return float((~blocks.any(axis=(1, 3))).mean())


# ----------------------------------------------------------------------------- intensity


def _normalised(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """:func:`synthesis.realism.normalise_levels` of an ``(H, W)`` numpy image."""
    return normalise_levels(torch.from_numpy(image), torch.from_numpy(mask)).numpy()


def intensity_histograms(
    image: np.ndarray | Tensor,
    mask: np.ndarray | Tensor,
    *,
    bins: int = HIST_BINS,
    value_range: tuple[float, float] = HIST_RANGE,
) -> dict[str, Any]:
    """Histograms of the normalised intensities inside (``fg``) and outside (``bg``) the mask.

    The image is normalised by :func:`synthesis.realism.normalise_levels` (minus its
    background's 0.5th percentile, divided by the foreground mean of the result), so the
    result is free of gain and offset: the foreground mean is 1.

    Args:
        image: ``(H, W)`` real image (numpy or torch).
        mask: ``(H, W)`` bool or 0/1, with foreground and background.
        bins, value_range: the histogram bins (values outside go to the end bins).

    Returns:
        ``edges`` (bins + 1), ``fg_hist``, ``bg_hist`` (each summing to 1),
        ``fg_quantiles``, ``bg_quantiles`` (:data:`QUANTILE_LEVELS`), ``fg_percentiles``,
        ``bg_percentiles`` (5, 25, 50, 75, 95), ``bg_fg_ratio`` (background mean),
        ``fg_cv`` (foreground sd, population) and ``bg_sd``.

    Raises:
        ValueError: shapes differ, non-finite image, or a mask without foreground or
        background.
    """
    x, m = _image_and_mask(image, mask)
    y = _normalised(x, m)
    edges = np.linspace(value_range[0], value_range[1], bins + 1)
    out: dict[str, Any] = {"edges": edges.tolist()}
    for name, values in (("fg", y[m]), ("bg", y[~m])):
        clipped = np.clip(values, edges[0], edges[-1])
        hist = np.histogram(clipped, bins=edges)[0].astype(np.float64)
        out[f"{name}_hist"] = (hist / hist.sum()).tolist()
        out[f"{name}_quantiles"] = _quantiles(values)
        out[f"{name}_percentiles"] = [float(v) for v in np.percentile(values, _SUMMARY_PERCENTILES)]
    out["bg_fg_ratio"] = float(y[~m].mean())
    out["fg_cv"] = float(y[m].std())
    out["bg_sd"] = float(y[~m].std())
    return out


def power_spectrum(image: np.ndarray | Tensor, mask: np.ndarray | Tensor) -> dict[str, list[float]]:
    """Radially averaged power spectral density of the normalised image's central square.

    The image is normalised as in :func:`intensity_histograms`; its central ``N x N``
    square (``N = min(H, W)``) goes to :func:`synthesis.realism.raps` (mean removed, radii
    1..N/2 - 1), divided by ``N**2`` (white noise of variance s^2 then has density s^2
    whatever N).

    Returns:
        ``frequency`` (cycles per pixel, ``k / N``) and ``psd`` (same length).

    Raises:
        ValueError: as :func:`intensity_histograms`, or ``min(H, W) < 8``.
    """
    x, m = _image_and_mask(image, mask)
    y = _normalised(x, m)
    n = min(y.shape)
    top, left = (y.shape[0] - n) // 2, (y.shape[1] - n) // 2
    p = raps(torch.from_numpy(np.ascontiguousarray(y[top : top + n, left : left + n]))).numpy()
    return {
        "frequency": (np.arange(1, n // 2) / n).tolist(),
        "psd": (p / n**2).tolist(),
    }


# ----------------------------------------------------------------------------- reports


def _json_float(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def structure_report(
    image: np.ndarray | Tensor,
    mask: np.ndarray | Tensor,
    *,
    window: int = 64,
    noise: bool = False,
    quant_step: float = 1.0,
) -> dict[str, Any]:
    """Summary numbers of one image and its mask, as a JSON-able dict (NaN as None).

    Args:
        image: ``(H, W)`` real image in grey levels (numpy or torch).
        mask: ``(H, W)`` bool or 0/1, with foreground and background.
        window: the :func:`empty_window_share` window (px).
        noise: also fit the native noise ``var = a x + b``
            (:func:`synthesis.corruptions.real.estimate_noise`, leaving out windows on the
            mask's boundary) and the SNR on the mask
            (:func:`synthesis.corruptions.real.native_snr`); slow on large images (~10 s
            for 1080 x 1080 on one core).
        quant_step: the image's grey-level step for the noise fit (1 for integer images).

    Returns:
        ``shape``; ``foreground_fraction``; ``empty_window_share`` and ``window``;
        ``width`` (:func:`skeleton_widths` summary: ``n``, ``mean``, ``median``, ``p25``,
        ``p75``, ``iqr``, ``quantiles``); ``topology`` (:func:`skeleton_topology`'s counts
        and rates, and ``segment_length``: the summary of the segment lengths);
        ``intensity`` (:func:`intensity_histograms`); ``spectrum``
        (:func:`power_spectrum`); with ``noise``, ``noise`` (``a``, ``b``, ``samples``,
        ``native_snr``; None where the fit found no usable windows).

    Raises:
        ValueError: as :func:`intensity_histograms`; ``window`` larger than the image.
    """
    x, m = _image_and_mask(image, mask)
    topo = skeleton_topology(m)
    lengths = topo.pop("segment_lengths")
    report: dict[str, Any] = {
        "shape": [int(s) for s in x.shape],
        "foreground_fraction": foreground_fraction(m),
        "empty_window_share": empty_window_share(m, window),
        "window": int(window),
        "width": _summary(skeleton_widths(m)),
        "topology": {
            **{k: _json_float(v) if isinstance(v, float) else v for k, v in topo.items()},
            "segment_length": _summary(lengths),
        },
        "intensity": intensity_histograms(x, m),
        "spectrum": power_spectrum(x, m),
    }
    if noise:
        from synthesis.corruptions.real import estimate_noise, native_snr

        xt = torch.from_numpy(x)[None, None]
        mt = torch.from_numpy(m)[None, None]
        fit = estimate_noise(xt, mt, quant_step=quant_step)
        snr = float(native_snr(xt, mt, fit)[0]) if int(fit.samples[0]) > 0 else math.nan
        report["noise"] = {
            "a": _json_float(float(fit.a[0])),
            "b": _json_float(float(fit.b[0])),
            "samples": int(fit.samples[0]),
            "native_snr": _json_float(snr),
        }
    return report


def _w1(a: list[float] | None, b: list[float] | None) -> float | None:
    """Wasserstein-1 between two distributions given as quantile vectors (None if either is)."""
    if a is None or b is None:
        return None
    return float(np.abs(np.asarray(a) - np.asarray(b)).mean())


def _absdiff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else abs(float(a) - float(b))


def _spectrum_distance(real: dict[str, list[float]], syn: dict[str, list[float]]) -> float | None:
    """Mean |log10 ratio| of two spectra over the real spectrum's frequencies from its second
    one up that the synthetic range covers (the synthetic one linearly interpolated in
    log10 power); None without overlap."""
    fr, pr = np.asarray(real["frequency"])[1:], np.asarray(real["psd"])[1:]
    fs, ps = np.asarray(syn["frequency"]), np.asarray(syn["psd"])
    if fr.size == 0 or fs.size < 2:
        return None
    keep = (fr >= fs[0]) & (fr <= fs[-1]) & (pr > 0)
    if not keep.any() or (ps <= 0).any():
        return None
    log_s = np.interp(fr[keep], fs, np.log10(ps))
    return float(np.abs(log_s - np.log10(pr[keep])).mean())


def compare_reports(real: dict[str, Any], synthetic: dict[str, Any]) -> dict[str, float | None]:
    """Distances between two :func:`structure_report` dicts (0: alike; None: undefined,
    e.g. no skeleton or no noise fit in one of them).

    - ``width_w1``, ``segment_length_w1``, ``fg_intensity_w1``, ``bg_intensity_w1``:
      Wasserstein-1 between the distributions (px, px, normalised intensity);
    - ``width_median``, ``segment_length_median``, ``branch_points_per_100px``,
      ``end_points_per_100px``, ``foreground_fraction``, ``empty_window_share``,
      ``bg_fg_ratio``, ``fg_cv``: absolute differences;
    - ``spectrum_log10``: mean |log10 ratio| of the power spectral densities over the
      frequencies both cover (cycles per pixel), the lowest one left out;
    - ``native_snr_log10``: |log10 ratio| of the native SNRs, when both reports have noise.

    Example:
        >>> m = np.zeros((64, 64), bool); m[20:25, 5:60] = True
        >>> img = np.where(m, 100.0, 10.0) + np.arange(64)[None, :] % 3
        >>> r = structure_report(img, m)
        >>> d = compare_reports(r, r)
        >>> max(v for v in d.values() if v is not None)
        0.0
    """
    wr, ws = real["width"], synthetic["width"]
    tr, ts = real["topology"], synthetic["topology"]
    lr, ls = tr["segment_length"], ts["segment_length"]
    ir, is_ = real["intensity"], synthetic["intensity"]
    out: dict[str, float | None] = {
        "width_w1": _w1(wr["quantiles"], ws["quantiles"]),
        "width_median": _absdiff(wr["median"], ws["median"]),
        "segment_length_w1": _w1(lr["quantiles"], ls["quantiles"]),
        "segment_length_median": _absdiff(lr["median"], ls["median"]),
        "branch_points_per_100px": _absdiff(
            tr["branch_points_per_100px"], ts["branch_points_per_100px"]
        ),
        "end_points_per_100px": _absdiff(tr["end_points_per_100px"], ts["end_points_per_100px"]),
        "foreground_fraction": _absdiff(
            real["foreground_fraction"], synthetic["foreground_fraction"]
        ),
        "empty_window_share": _absdiff(real["empty_window_share"], synthetic["empty_window_share"]),
        "fg_intensity_w1": _w1(ir["fg_quantiles"], is_["fg_quantiles"]),
        "bg_intensity_w1": _w1(ir["bg_quantiles"], is_["bg_quantiles"]),
        "bg_fg_ratio": _absdiff(ir["bg_fg_ratio"], is_["bg_fg_ratio"]),
        "fg_cv": _absdiff(ir["fg_cv"], is_["fg_cv"]),
        "spectrum_log10": _spectrum_distance(real["spectrum"], synthetic["spectrum"]),
    }
    if "noise" in real and "noise" in synthetic:
        a, b = real["noise"]["native_snr"], synthetic["noise"]["native_snr"]
        ok = a is not None and b is not None and a > 0 and b > 0
        out["native_snr_log10"] = abs(math.log10(b / a)) if ok else None
    return out

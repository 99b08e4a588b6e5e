"""The realism report of a filamentous structure (``python benchmarks/realism.py --config mito``
or ``--config er``): real tiles against rendered sets, mask-free.

Tile sets of 256 x 256, each measured by :func:`synthesis.structure_realism.structure_report`
on the image and its **pseudo-mask** (:func:`synthesis.groundtruth.pseudo_masks.pseudo_mask`,
one method for real and rendered images at the config's pixel size):

- **real**: the tiles of an images-only source (``--source``, a folder of ``images/`` without
  ``masks/``; default the workspace's ``shared/data/mito-fluorescence`` for mito, none for
  ER), one set per image, read as :class:`~synthesis.groundtruth.sources.images_only.
  ImagesOnlySource` reads them: an image whose pixel size is known (``--source-pixel-size
  STEM=UM``, default ``hcs_wt_mito=0.136`` with the default data; else its TIFF metadata:
  NAO states 0.0425 µm/px) is resampled to the config's stated pixel size
  (:data:`synthesis.levels.PIXEL_SIZE_UM`, mito 0.085 µm/px: HCS x1.6, NAO x0.5) and
  pseudo-masked whole (before tiling) by the default method scaled to that pixel size
  (:func:`~synthesis.groundtruth.sources.images_only.method_at_target`, mito
  ``mito-default-x1.6``); an image of unknown pixel size is used as it is, with the
  unscaled default. Each image's pixel size, resampling and method are recorded
  (``pixel_size`` in the result). ER states no pixel size: nothing is resampled.
- **rendered**: the build's own test images of the procedural masks
  (:class:`builder.assembly.images.ConfigImages`, ``reference_images("test")``: the ``test``
  split of ``fluorobench-c build --config <structure>`` at seed 0, the reference SNR 8
  through the build camera), for each renderer and, for mito, each mask generator
  (``--mito-masks``): ``physics:worms`` (today's Mito-C, **old**), ``physics:cells`` (the
  cells generator, **new**), ``naive:worms`` and ``naive:cells``; for ER ``physics`` and
  ``naive``. Each tile is pseudo-masked on its own (a tile is a Mito-C field) by the method
  the source uses at the config's pixel size (the renders are at it). Their **true** masks
  are measured beside, and the IoU of pseudo-mask against true mask per tile says how far
  the pseudo-mask method is from the truth on synthetic images.

A set's report pools its tiles' reports (:func:`pool_reports`: skeleton measures over all
tiles' skeletons, fractions and spectra averaged, native noise and SNR as the median
tile's), so :func:`synthesis.structure_realism.compare_reports` gives each set's distances
to each real image, and :func:`verdicts` says per measure whether the new set is closer than
the old one and than the naive ones (mito). Widths are reported in px and in µm (px times
the set's pixel size, where known). Sensitivity (``--sweep PARAM=V1,V2,...``, values of the
method at the config's pixel size): the real and physics sets again with one parameter of
the pseudo-mask method changed (every real image then gets that method). The figure shows
each real image's field and a crop, and one tile of each rendered set, with their
pseudo-mask contours (and the true one).
"""

from __future__ import annotations

import argparse
import copy
import math
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import _common
import numpy as np
from _common import ROOT, emit, shown
from PIL import Image, ImageDraw

from synthesis.groundtruth.pseudo_masks import PseudoMaskMethod, pseudo_mask
from synthesis.structure_realism import QUANTILE_LEVELS, compare_reports, structure_report

#: The real mitochondria the mito report reads by default (read in place, never copied).
MITO_DATA = _common.MITO_DATA
#: ``--source-pixel-size`` of the default data, per config: the HCS field states no pixel
#: size; 0.136 µm/px is the project's estimate (its tubule widths matched to NAO's in µm).
PIXEL_SIZES: dict[str, list[str]] = {"mito": ["hcs_wt_mito=0.136"], "er": []}
#: Default sensitivity sweeps: multiples of the parameter's value in the method at the
#: config's pixel size (``block_size`` rounded to an odd integer).
DEFAULT_SWEEPS: dict[str, tuple[float, ...]] = {
    "block_size": (0.65, 1.0, 1.5),
    "floor_factor": (0.4, 1.0, 2.0),
}
#: The rendered sets per config: (name, renderer, mito mask generator).
RENDERED: dict[str, tuple[tuple[str, str, str], ...]] = {
    "mito": (
        ("physics:worms", "physics", "worms"),
        ("physics:cells", "physics", "cells"),
        ("naive:worms", "naive", "worms"),
        ("naive:cells", "naive", "cells"),
    ),
    "er": (("physics", "physics", "worms"), ("naive", "naive", "worms")),
}
#: Per config: the rendered set judged (``new``) and those it is judged against (issue 23:
#: new closer than old on every measure, closer than naive on most).
ROLES: dict[str, dict[str, str]] = {
    "mito": {
        "new": "physics:cells",
        "old": "physics:worms",
        "naive": "naive:worms",
        "naive (cells)": "naive:cells",
    },
}
#: The table's columns: (key, header, format).
COLUMNS = (
    ("width_median", "median width (px)", "{:.2f}"),
    ("width_median_um", "median width (µm)", "{:.3f}"),
    ("width_iqr", "width IQR (px)", "{:.2f}"),
    ("width_iqr_in_tile", "width IQR in a tile (px)", "{:.2f}"),
    ("branch_points_per_100px", "branch pts / 100 px", "{:.2f}"),
    ("end_points_per_100px", "end pts / 100 px", "{:.2f}"),
    ("segment_length_median", "median segment (px)", "{:.1f}"),
    ("foreground_fraction", "fg fraction", "{:.3f}"),
    ("empty_window_share", "empty 64x64 share", "{:.3f}"),
    ("bg_fg_ratio", "bg / fg", "{:.3f}"),
    ("fg_cv", "fg CV", "{:.2f}"),
    ("noise_a", "noise a", "{:.3g}"),
    ("noise_b", "noise b", "{:.3g}"),
    ("native_snr", "native SNR", "{:.1f}"),
)
#: The distance columns (keys of :func:`compare_reports`), the measures :func:`verdicts`
#: judges.
DISTANCES = (
    "width_w1",
    "segment_length_w1",
    "branch_points_per_100px",
    "end_points_per_100px",
    "foreground_fraction",
    "empty_window_share",
    "fg_intensity_w1",
    "bg_intensity_w1",
    "spectrum_log10",
    "native_snr_log10",
)


# ----------------------------------------------------------------------------- pooling


def _mix_quantiles(qs: list[list[float] | None], weights: list[float]) -> list[float] | None:
    """The :data:`QUANTILE_LEVELS` quantiles of a mixture of distributions, each given by its
    quantile vector and weighted by ``weights`` (e.g. sample sizes): every stored quantile is
    taken as an atom of weight ``w / len(q)``, and the mixture's quantile function is read
    off their cumulative weights at the atoms' midpoints (None when no distribution)."""
    pts, wts = [], []
    for q, w in zip(qs, weights, strict=True):
        if q is None or not w > 0:
            continue
        pts.append(np.asarray(q, dtype=np.float64))
        wts.append(np.full(len(q), w / len(q)))
    if not pts:
        return None
    x, w = np.concatenate(pts), np.concatenate(wts)
    order = np.argsort(x, kind="stable")
    x, w = x[order], w[order]
    mid = (np.cumsum(w) - w / 2) / w.sum()
    return [float(v) for v in np.interp(QUANTILE_LEVELS, mid, x)]


def _at(q: list[float] | None, level: float) -> float | None:
    return None if q is None else float(np.interp(level, QUANTILE_LEVELS, q))


def _pooled_summary(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary (``n``, ``mean``, ``median``, ``p25``, ``p75``, ``iqr``, ``quantiles``) of
    the pooled samples of several (exact ``n`` and ``mean``; the rest from the mixture)."""
    n = sum(s["n"] for s in summaries)
    if n == 0:
        return {"n": 0, "mean": None, "median": None, "p25": None, "p75": None, "iqr": None,
                "quantiles": None}  # fmt: skip
    q = _mix_quantiles([s["quantiles"] for s in summaries], [s["n"] for s in summaries])
    p25, med, p75 = _at(q, 0.25), _at(q, 0.5), _at(q, 0.75)
    return {
        "n": n,
        "mean": sum(s["n"] * s["mean"] for s in summaries if s["n"]) / n,
        "median": med,
        "p25": p25,
        "p75": p75,
        "iqr": p75 - p25,
        "quantiles": q,
    }


def _median(values: list[float | None]) -> float | None:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.median(v)) if v else None


def pool_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One :func:`structure_report`-shaped dict for a set of tiles of one size.

    Skeleton widths and segment lengths: the pooled distributions (:func:`_mix_quantiles`);
    branch and end points per 100 px: the summed counts over the summed skeleton; foreground
    fraction and empty-window share: means over tiles (equal sizes); intensities: each tile
    normalised on its own, then pooled (histograms and quantiles weighted by pixel counts;
    ``fg_cv`` and ``bg_sd`` the pooled standard deviations); power spectrum: the mean over
    tiles; noise ``a``, ``b`` and ``native_snr``: medians over the tiles that have them;
    ``width["iqr_in_tile"]``: the median over tiles of each tile's width IQR (the spread
    within a field, without the spread between fields).
    ``tiles`` is added. One report comes back as it is (with ``tiles``).

    Raises:
        ValueError: no reports, or tiles of different sizes.
    """
    if not reports:
        raise ValueError("no reports to pool")
    shapes = {tuple(r["shape"]) for r in reports}
    if len(shapes) != 1:
        raise ValueError(f"tiles must share one size to be pooled. Got {sorted(shapes)}")
    in_tile = _median([r["width"]["iqr"] for r in reports])
    if len(reports) == 1:
        out = copy.deepcopy(reports[0])
        out["width"]["iqr_in_tile"] = in_tile
        return {**out, "tiles": 1}
    (h, w) = shapes.pop()
    px = h * w
    topo = [r["topology"] for r in reports]
    counts = {
        k: sum(t[k] for t in topo) for k in ("skeleton_px", "branch_points", "end_points", "puncta")
    }
    rate = 100.0 / counts["skeleton_px"] if counts["skeleton_px"] else None
    fg_n = [r["foreground_fraction"] * px for r in reports]
    bg_n = [px - n for n in fg_n]
    ints = [r["intensity"] for r in reports]

    def hist(key: str, weights: list[float]) -> list[float]:
        h_ = sum(np.asarray(i[key]) * wt for i, wt in zip(ints, weights, strict=True))
        return (h_ / h_.sum()).tolist()

    def quants(key: str, weights: list[float]) -> tuple[list[float] | None, list[float]]:
        q = _mix_quantiles([i[key] for i in ints], weights)
        return q, [_at(q, p / 100) for p in (5, 25, 50, 75, 95)]

    fg_q, fg_p = quants("fg_quantiles", fg_n)
    bg_q, bg_p = quants("bg_quantiles", bg_n)
    bg_mean = sum(i["bg_fg_ratio"] * n for i, n in zip(ints, bg_n, strict=True)) / sum(bg_n)
    bg_var = sum(
        (i["bg_sd"] ** 2 + (i["bg_fg_ratio"] - bg_mean) ** 2) * n
        for i, n in zip(ints, bg_n, strict=True)
    ) / sum(bg_n)
    fg_var = sum(i["fg_cv"] ** 2 * n for i, n in zip(ints, fg_n, strict=True)) / sum(fg_n)
    spec = reports[0]["spectrum"]
    out: dict[str, Any] = {
        "shape": [h, w],
        "tiles": len(reports),
        "foreground_fraction": float(np.mean([r["foreground_fraction"] for r in reports])),
        "empty_window_share": float(np.mean([r["empty_window_share"] for r in reports])),
        "window": reports[0]["window"],
        "width": {**_pooled_summary([r["width"] for r in reports]), "iqr_in_tile": in_tile},
        "topology": {
            **counts,
            "branch_points_per_100px": None if rate is None else counts["branch_points"] * rate,
            "end_points_per_100px": None if rate is None else counts["end_points"] * rate,
            "segment_length": _pooled_summary([t["segment_length"] for t in topo]),
        },
        "intensity": {
            "edges": ints[0]["edges"],
            "fg_hist": hist("fg_hist", fg_n),
            "bg_hist": hist("bg_hist", bg_n),
            "fg_quantiles": fg_q,
            "bg_quantiles": bg_q,
            "fg_percentiles": fg_p,
            "bg_percentiles": bg_p,
            "bg_fg_ratio": float(bg_mean),
            "fg_cv": float(math.sqrt(fg_var)),  # every tile's foreground mean is 1
            "bg_sd": float(math.sqrt(bg_var)),
        },
        "spectrum": {
            "frequency": spec["frequency"],
            "psd": np.mean([r["spectrum"]["psd"] for r in reports], axis=0).tolist(),
        },
    }
    if all("noise" in r for r in reports):
        noise = [r["noise"] for r in reports]
        out["noise"] = {
            "a": _median([n["a"] for n in noise]),
            "b": _median([n["b"] for n in noise]),
            "samples": sum(n["samples"] for n in noise),
            "native_snr": _median([n["native_snr"] for n in noise]),
        }
    return out


def row(report: dict[str, Any], pixel_um: float | None = None) -> dict[str, float | None]:
    """The table's numbers (:data:`COLUMNS`) of a (pooled) report; the median width in µm
    where the tiles' pixel size ``pixel_um`` is known (else None)."""
    t = report["topology"]
    noise = report.get("noise", {})
    width = report["width"]["median"]
    return {
        "width_median": width,
        "width_median_um": None if width is None or pixel_um is None else width * pixel_um,
        "width_iqr": report["width"]["iqr"],
        "width_iqr_in_tile": report["width"].get("iqr_in_tile"),
        "branch_points_per_100px": t["branch_points_per_100px"],
        "end_points_per_100px": t["end_points_per_100px"],
        "segment_length_median": t["segment_length"]["median"],
        "foreground_fraction": report["foreground_fraction"],
        "empty_window_share": report["empty_window_share"],
        "bg_fg_ratio": report["intensity"]["bg_fg_ratio"],
        "fg_cv": report["intensity"]["fg_cv"],
        "noise_a": noise.get("a"),
        "noise_b": noise.get("b"),
        "native_snr": noise.get("native_snr"),
    }


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _spread(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "median": float(np.median(v)), "min": float(v.min())}


# ----------------------------------------------------------------------------- the sets


def real_sets(
    source: Path,
    structure: str,
    pixel_sizes: dict[str, float],
    cap: int,
    method: PseudoMaskMethod | None = None,
) -> dict[str, dict[str, Any]]:
    """Per image stem: its tiles from the images-only source with ``pixel_sizes`` (each
    image resampled to the config's pixel size where its own is known, then pseudo-masked
    whole by the source's method at that size, or by ``method`` when given), at most
    ``cap`` (0: all), as ``items``, the ``method`` and its ``pixel_size`` record (from the
    source's ``scales``: native µm, where it came from, the resampling factor, the pixel
    size of the tiles, the method's name)."""
    from synthesis.groundtruth.sources.base import _clean_id
    from synthesis.groundtruth.sources.images_only import ImagesOnlySource

    src = ImagesOnlySource(source, structure, counts={}, method=method, pixel_sizes=pixel_sizes)
    src.scan()
    ids = sorted(i for split in ("train", "validation", "test") for i in src.ids(split))
    loaded = src.load(ids)
    stems = sorted({Path(it.meta["image_file"]).stem for it in loaded})
    out: dict[str, dict[str, Any]] = {}
    for stem in stems:
        items = [it for it in loaded if Path(it.meta["image_file"]).stem == stem]
        if cap:
            items = items[:cap]
        s = src.scales[_clean_id(stem)]
        out[stem] = {
            "items": items,
            "method": s["method"],
            "pixel_size": {
                "native_um": s["native_um"],
                "from": s["from"],
                "scale": s["scale"],
                "pixel_size_um": s["pixel_size_um"],
                "pseudo_mask": s["method"].name,
            },
        }
    return out


def rendered_tiles(
    structure: str, renderer: str, n: int, seed: int, masks: str = "worms"
) -> tuple[np.ndarray, ...]:
    """(ADU images, true masks), each ``(n, 256, 256)``: the ``test`` split of a build of
    ``structure`` with ``renderer`` (and, for mito, the mask generator ``masks``,
    ``--mito-masks``) at the reference SNR, made as the build makes it."""
    import torch

    from builder.assembly.images import ConfigImages
    from builder.assembly.options import BuildOptions

    opts = BuildOptions(
        out=Path(tempfile.gettempdir()) / "fluorobench-c-realism-unused",  # nothing is written
        configs=[structure],
        counts={"train": 1, "validation": 1, "test": n},
        seed=seed,
        renderer=renderer,
        splits=["reference"],
        device="cpu",
        mito_masks=masks,
    )
    adu, mask = ConfigImages(opts, structure, torch.device("cpu")).reference_images("test")
    return adu[:, 0].numpy(), mask[:, 0].numpy()


def measure_real(sets: dict[str, dict[str, Any]], noise: bool = True) -> dict[str, Any]:
    """Per image: the pooled report of its tiles on their pseudo-masks, and how far each
    tile's field pseudo-mask is from the same method run on the tile alone (IoU)."""
    out = {}
    for stem, s in sets.items():
        reports, tile_iou = [], []
        for it in s["items"]:
            fg = it.mask > 0
            reports.append(structure_report(it.image, fg, noise=noise))
            tile_iou.append(_iou(fg, pseudo_mask(it.image, s["method"])))
        out[stem] = {
            "method": s["method"].name,
            "pixel_um": s["pixel_size"]["pixel_size_um"],
            "report": pool_reports(reports),
            "tile_vs_field_iou": _spread(tile_iou),
        }
    return out


def measure_rendered(
    images: np.ndarray, truth: np.ndarray, method: PseudoMaskMethod, noise: bool = True
) -> tuple[dict[str, Any], list[np.ndarray]]:
    """The pooled reports on the pseudo-masks and on the true masks, the IoU of pseudo-mask
    against truth per tile; and the pseudo-masks."""
    pseudo, on_pseudo, on_truth, iou = [], [], [], []
    for x, m in zip(images, truth, strict=True):
        pm = pseudo_mask(x, method)
        pseudo.append(pm)
        on_pseudo.append(structure_report(x, pm, noise=noise))
        on_truth.append(structure_report(x, m, noise=noise))
        iou.append(_iou(pm, m))
    result = {
        "method": method.name,
        "report": pool_reports(on_pseudo),
        "truth": pool_reports(on_truth),
        "pseudo_vs_true_iou": _spread(iou),
    }
    return result, pseudo


def _slim(report: dict[str, Any]) -> dict[str, Any]:
    """A report without its long vectors (histograms, quantiles, spectrum), for the JSON."""
    out = {k: v for k, v in report.items() if k not in ("intensity", "spectrum")}
    out["width"] = {k: v for k, v in report["width"].items() if k != "quantiles"}
    seg = report["topology"]["segment_length"]
    out["topology"] = {**report["topology"], "segment_length": {
        k: v for k, v in seg.items() if k != "quantiles"}}  # fmt: skip
    i = report["intensity"]
    out["intensity"] = {k: i[k] for k in ("fg_percentiles", "bg_percentiles", "bg_fg_ratio",
                                          "fg_cv", "bg_sd")}  # fmt: skip
    return out


def _distances(real: dict[str, Any], syn: dict[str, Any]) -> dict[str, float | None]:
    d = compare_reports(real, syn)
    return {k: d.get(k) for k in DISTANCES}


def verdicts(
    distances: dict[str, dict[str, dict[str, float | None]]], roles: dict[str, str]
) -> dict[str, dict[str, dict[str, str]]]:
    """Per measure of :data:`DISTANCES`, per rival role of ``roles`` (all but ``new``), per
    real image: ``"closer"`` where the new set's distance to that image is lower than the
    rival's, ``"tie"`` where equal, ``"farther"`` where higher, ``"n/a"`` where either is
    undefined; and under ``"all"`` the one word when every image says it, else ``"mixed"``.

    Example:
        >>> d = {"real:a": {"new": {k: 1.0 for k in DISTANCES},
        ...                 "old": {k: 2.0 for k in DISTANCES}}}
        >>> verdicts(d, {"new": "new", "old": "old"})["width_w1"]["old"]
        {'real:a': 'closer', 'all': 'closer'}
    """
    new = roles["new"]
    out: dict[str, dict[str, dict[str, str]]] = {}
    for key in DISTANCES:
        out[key] = {}
        for role, name in roles.items():
            if role == "new":
                continue
            per: dict[str, str] = {}
            for real, d in distances.items():
                a, b = d[new].get(key), d[name].get(key)
                if a is None or b is None:
                    per[real] = "n/a"
                else:
                    per[real] = "closer" if a < b else "tie" if a == b else "farther"
            words = set(per.values())
            per["all"] = words.pop() if len(words) == 1 else "mixed"
            out[key][role] = per
    return out


def verdict_counts(v: dict[str, dict[str, dict[str, str]]]) -> dict[str, dict[str, int]]:
    """Per rival role: how many measures say each word under ``"all"``."""
    out: dict[str, dict[str, int]] = {}
    for per_role in v.values():
        for role, per in per_role.items():
            c = out.setdefault(role, {})
            c[per["all"]] = c.get(per["all"], 0) + 1
    return out


# ----------------------------------------------------------------------------- sweep


def sweep(
    param: str,
    values: list[float],
    structure: str,
    base: PseudoMaskMethod,
    source: Path | None,
    pixel_sizes: dict[str, float],
    rendered: dict[str, tuple[np.ndarray, np.ndarray]],
    cap: int,
) -> list[dict[str, Any]]:
    """The real sets and the ``rendered`` sets again, with ``param`` of ``base`` (the method
    at the config's pixel size) set to each value, the same method for every image."""
    rows = []
    for v in values:
        value = int(v) if param in ("block_size", "min_size", "max_hole") else float(v)
        method = replace(base, name=f"{base.name}-{param}={value:g}", **{param: value})
        entry: dict[str, Any] = {"value": value, "sets": {}, "distances": {}}
        real = {}
        if source is not None:
            real = measure_real(real_sets(source, structure, pixel_sizes, cap, method))
        syn = {name: measure_rendered(x, m, method)[0] for name, (x, m) in rendered.items()}
        for stem, r in real.items():
            entry["sets"][stem] = {"method": r["method"], **row(r["report"])}
            entry["distances"][stem] = {n: _distances(r["report"], s["report"])
                                        for n, s in syn.items()}  # fmt: skip
        for name, s in syn.items():
            entry["sets"][name] = {
                "method": method.name,
                **row(s["report"]),
                "pseudo_vs_true_iou": s["pseudo_vs_true_iou"]["mean"],
            }
        rows.append(entry)
    return rows


# ----------------------------------------------------------------------------- figure


def _grey(x: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(x, [0.5, 99.5])
    v = np.clip((x.astype(np.float64) - lo) / max(hi - lo, 1e-9), 0, 1)
    return np.repeat((v * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def _contour(rgb: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    from scipy import ndimage

    m = mask.astype(bool)
    edge = m & ~ndimage.binary_erosion(m, border_value=1)
    out = rgb.copy()
    out[edge] = colour
    return out


def _thumb(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """The whole field shrunk to ``size`` px (area average), the pseudo-mask tinted red."""
    f = size / max(image.shape)
    shape = (round(image.shape[1] * f), round(image.shape[0] * f))
    x = np.asarray(Image.fromarray(image.astype(np.float32)).resize(shape, Image.BOX))
    m = np.asarray(Image.fromarray(mask.astype(np.float32)).resize(shape, Image.BOX)) >= 0.5
    rgb = _grey(x).astype(np.float64)
    rgb[m] = 0.55 * rgb[m] + 0.45 * np.array([255.0, 0.0, 0.0])
    canvas = np.zeros((size, size, 3), np.uint8)
    canvas[: rgb.shape[0], : rgb.shape[1]] = rgb.round().astype(np.uint8)
    return canvas, f


RED, GREEN, YELLOW = (255, 40, 40), (40, 230, 40), (255, 220, 0)


def _zoom(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """The half-size window (on a 1/8 grid) of an image that holds the most of its mask,
    enlarged x2 (nearest), with the mask's contour drawn at the enlarged size (a 1 px line
    over the mask's outermost half-pixel); the stretch is the whole image's."""
    n, h = image.shape[0], image.shape[0] // 2
    grid = range(0, n - h + 1, max(1, n // 8))
    y, x = max(
        ((y, x) for y in grid for x in grid),
        key=lambda o: mask[o[0] : o[0] + h, o[1] : o[1] + h].sum(),
    )
    sl = (slice(y, y + h), slice(x, x + h))
    big = np.kron(_grey(image)[sl], np.ones((2, 2, 1), np.uint8))
    return _contour(big, np.kron(mask[sl].astype(bool), np.ones((2, 2), bool)), colour)


def write_figure(
    real: dict[str, dict[str, Any]],
    fields: dict[str, tuple[np.ndarray, np.ndarray]],
    rendered: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    path: Path,
) -> int:
    """Rows: per real image, the field (resampled as the source reads it, pseudo-mask
    tinted, the crop framed), a crop, the crop with its pseudo-mask contour, and the crop's
    densest 128 px enlarged x2 with the contour; per rendered set, a tile, with its
    pseudo-mask contour (red), with its true mask's (green), and its densest 128 px enlarged
    x2 with the pseudo-mask contour. Returns the file's size."""
    tile = _common.PANEL
    rows: list[tuple[str, list[np.ndarray], list[str]]] = []
    for stem, s in real.items():
        items = s["items"]
        fracs = [float((it.mask > 0).mean()) for it in items]
        it = items[int(np.argsort(fracs)[int(0.75 * (len(fracs) - 1))])]
        image, mask = fields[stem]
        thumb, f = _thumb(image, mask, tile)
        y, x = it.meta["tile_yx"]
        im = Image.fromarray(thumb)
        ImageDraw.Draw(im).rectangle(
            [x * f, y * f, (x + tile) * f, (y + tile) * f], outline=YELLOW, width=2
        )
        crop = _grey(it.image)
        p = s["pixel_size"]
        # "um": the figure's font has no micro sign.
        at = "own pixels" if p["pixel_size_um"] is None else f"{p['pixel_size_um']:g} um/px"
        rows.append(
            (
                f"real: {stem}\nx{p['scale']:.3g} -> {at}\n{s['method'].name}\ntile y{y} x{x}",
                [
                    np.asarray(im),
                    crop,
                    _contour(crop, it.mask > 0, RED),
                    _zoom(it.image, it.mask > 0, RED),
                ],
                [
                    "whole field, pseudo-mask",
                    "crop (256 px)",
                    "crop + pseudo-mask",
                    "densest half x2 + pseudo-mask",
                ],  # fmt: skip
            )
        )
    for name, (x, pm, tm) in rendered.items():
        g = _grey(x)
        rows.append(
            (
                f"{name}\n(test tile, SNR 8)",
                [g, _contour(g, pm, RED), _contour(g, tm, GREEN), _zoom(x, pm, RED)],
                [
                    "tile (256 px)",
                    "+ pseudo-mask (red)",
                    "+ true mask (green)",
                    "densest half x2 + pseudo-mask",
                ],  # fmt: skip
            )
        )
    return _common.panel_grid(rows, path, palette=True)


def _field(source: Path, stem: str, s: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(the whole image, its pseudo-mask) as the images-only source makes them: decoded,
    resampled by the image's recorded factor, pseudo-masked by its method."""
    from synthesis.groundtruth.sources.pixel_size import resample
    from synthesis.groundtruth.sources.readers import _decode
    from synthesis.groundtruth.sources.readers import _grey as grey_of

    folder = source / "images"
    path = next(p for p in sorted(folder.iterdir()) if p.stem == stem)
    image = grey_of(_decode(path, str(path)), str(path), what="image")
    if s["pixel_size"]["scale"] != 1.0:
        image = resample(image, s["pixel_size"]["scale"])
    return image, pseudo_mask(image, s["method"])


# ----------------------------------------------------------------------------- main


def _sweeps(values: list[str] | None, base: PseudoMaskMethod) -> dict[str, list[float]]:
    """``--sweep PARAM=V1,V2`` values, or :data:`DEFAULT_SWEEPS` as multiples of ``base``."""
    if values is None:
        out: dict[str, list[float]] = {}
        for param, factors in DEFAULT_SWEEPS.items():
            v0 = getattr(base, param)
            if param == "block_size":
                out[param] = [float(max(3, 2 * round((v0 * f - 1) / 2) + 1)) for f in factors]
            else:
                out[param] = [round(v0 * f, 6) for f in factors]
        return out
    out = {}
    fields = set(PseudoMaskMethod.__dataclass_fields__)
    for v in values:
        param, sep, vals = v.partition("=")
        if not sep or param not in fields:
            raise SystemExit(f"--sweep must be PARAM=V1,V2,... with a method field. Got {v!r}")
        out[param] = [float(x) for x in vals.split(",") if x]
    return out


def parser(doc: str | None) -> argparse.ArgumentParser:
    p = _common.parser(doc)
    p.add_argument("--config", choices=("er", "mito"), required=True)
    p.add_argument(
        "--source",
        type=Path,
        default=None,
        help="images-only folder of real images (default: the shared mito data for mito, "
        "none for er)",
    )
    p.add_argument(
        "--source-pixel-size",
        action="append",
        default=None,
        metavar="STEM=UM",
        help="µm per pixel of a real image (file stem), or one UM for every image; "
        "repeatable; overrides its TIFF metadata; an image whose pixel size is known is "
        "resampled to the config's (mito: 0.085 µm). Default: hcs_wt_mito=0.136 with the "
        "default mito data, none otherwise",
    )
    p.add_argument("--no-real", action="store_true", help="rendered sets only")
    p.add_argument("--tiles", type=int, default=40, help="rendered tiles per set")
    p.add_argument("--real-tiles", type=int, default=0, help="real tiles per image (0: all)")
    p.add_argument(
        "--sweep",
        action="append",
        metavar="PARAM=V1,V2",
        help="sensitivity to a parameter of the pseudo-mask method at the config's pixel "
        "size (default: block_size and floor_factor at 0.65-1.5 and 0.4-2 times theirs)",
    )
    p.add_argument("--no-sweep", action="store_true")
    p.add_argument("--seed", type=int, default=0, help="build seed of the rendered tiles")
    p.add_argument("--grid", type=Path, default=None, help="figure (default: docs/images/...)")
    p.add_argument("--no-grid", action="store_true")
    _common.add_json(p)
    return p


def _pixel_sizes(values: list[str] | None, structure: str, default: bool) -> dict[str, float]:
    from synthesis.groundtruth.sources.base import SourceError
    from synthesis.groundtruth.sources.pixel_size import parse_pixel_sizes

    if values is None:
        values = PIXEL_SIZES[structure] if default else []
    try:
        return parse_pixel_sizes(values)
    except SourceError as e:
        raise SystemExit(str(e)) from None


def main(argv: list[str] | None, doc: str | None, machine: str) -> dict:
    from synthesis.groundtruth.sources.images_only import METHOD_PIXEL_SIZE_UM, method_at_target
    from synthesis.levels import PIXEL_SIZE_UM

    args = parser(doc).parse_args(argv)
    t0 = time.perf_counter()
    structure = args.config
    base = method_at_target(structure)
    target = PIXEL_SIZE_UM.get(structure)
    source = args.source
    if source is None and structure == "mito":
        source = MITO_DATA
    pixel_sizes = _pixel_sizes(args.source_pixel_size, structure, args.source is None)
    note = None
    if args.no_real:
        source, note = None, "real tiles left out (--no-real)"
    elif source is None:
        note = f"no real {structure} images: rendered sets only, no distance to real"
    elif not (source / "images").is_dir():
        note = f"no real images at {source} (no images/ folder): rendered sets only"
        source = None
    result: dict[str, Any] = {
        "machine": machine,
        "config": structure,
        "source": None if source is None else str(source),
        "note": note,
        "pseudo_mask": {
            "method": base.to_dict(),
            "note": f"the default scaled from {METHOD_PIXEL_SIZE_UM:g} to {target:g} µm/px"
            if target is not None
            else "the default: the config states no pixel size",
        },
        "renderers": "the build's test split (ConfigImages.reference_images), SNR 8, seed "
        f"{args.seed}",
    }
    real_raw: dict[str, dict[str, Any]] = {}
    real: dict[str, Any] = {}
    if source is not None:
        real_raw = real_sets(source, structure, pixel_sizes, args.real_tiles)
        real = measure_real(real_raw)
        result["pseudo_mask"]["per_image"] = {s: v["method"].name for s, v in real_raw.items()}
    rendered, pseudo, images = {}, {}, {}
    for name, renderer, masks in RENDERED[structure]:
        x, m = rendered_tiles(structure, renderer, args.tiles, args.seed, masks)
        rendered[name], pseudo[name] = measure_rendered(x, m, base)
        images[name] = (x, m)
    result["rendered_sets"] = {
        name: {"renderer": renderer, "mito_masks": masks if structure == "mito" else None}
        for name, renderer, masks in RENDERED[structure]
    }
    sets: dict[str, Any] = {}
    for stem, s in real.items():
        sets[f"real:{stem}"] = {"kind": "real", "pixel_um": s["pixel_um"], **s}
    for r, s in rendered.items():
        sets[r] = {"kind": "rendered", "pixel_um": target, **s}
    result["tables"] = {name: row(s["report"], s["pixel_um"]) for name, s in sets.items()}
    result["tables_true_mask"] = {r: row(s["truth"], target) for r, s in rendered.items()}
    result["tiles"] = {name: s["report"]["tiles"] for name, s in sets.items()}
    result["iou"] = {
        **{f"real:{k}": {"tile_vs_field": v["tile_vs_field_iou"]} for k, v in real.items()},
        **{r: {"pseudo_vs_true": s["pseudo_vs_true_iou"]} for r, s in rendered.items()},
    }
    result["distances"] = {
        f"real:{stem}": {
            name: _distances(r["report"], s["report"])
            for name, s in sets.items()
            if name != f"real:{stem}"
        }
        for stem, r in real.items()
    }
    if structure in ROLES and real:
        roles = ROLES[structure]
        result["roles"] = roles
        result["verdicts"] = verdicts(result["distances"], roles)
        result["verdict_counts"] = verdict_counts(result["verdicts"])
    result["pixel_size"] = {
        "target_um": target,
        "given": pixel_sizes,
        "images": {stem: s["pixel_size"] for stem, s in real_raw.items()},
        "rendered_true_width": {
            r: {
                "px": s["truth"]["width"]["median"],
                "um": None if target is None else s["truth"]["width"]["median"] * target,
                "p25_px": s["truth"]["width"]["p25"],
                "p75_px": s["truth"]["width"]["p75"],
            }
            for r, s in rendered.items()
        },
    }
    result["reports"] = {name: _slim(s["report"]) for name, s in sets.items()}
    if not args.no_sweep:
        physics = {n: images[n] for n, renderer, _ in RENDERED[structure] if renderer == "physics"}
        result["sensitivity"] = {
            param: sweep(
                param, vals, structure, base, source, pixel_sizes, physics, args.real_tiles
            )  # fmt: skip
            for param, vals in _sweeps(args.sweep, base).items()
        }
    if not args.no_grid:
        path = args.grid or ROOT / "docs" / "images" / f"{structure}_pseudo_masks.png"
        fields = {s: _field(source, s, v) for s, v in real_raw.items()} if source else {}
        k = {r: int(np.argsort([p.mean() for p in pm])[len(pm) // 2]) for r, pm in pseudo.items()}
        tiles = {r: (images[r][0][k[r]], pseudo[r][k[r]], images[r][1][k[r]]) for r in pseudo}
        result["grid_bytes"] = write_figure(real_raw, fields, tiles, path)
        result["grid"] = shown(path)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    emit(result, args.json, report)
    return result


# ----------------------------------------------------------------------------- report


def _fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else spec.format(v)


def _table(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")


def report(r: dict) -> None:
    print(f"machine: {r['machine']}")
    print(f"config: {r['config']}; real source: {r['source']}")
    if r["note"]:
        print(f"note: {r['note']}")
    print(f"rendered: {r['renderers']}; sets: " + ", ".join(
        f"{n} ({v['renderer']}" + (f", --mito-masks {v['mito_masks']})" if v["mito_masks"]
                                   else ")") for n, v in r["rendered_sets"].items()))  # fmt: skip
    px = r["pixel_size"]
    target = px["target_um"]
    pm = r["pseudo_mask"]
    print(f"pseudo-mask method of the renders: {pm['method']['name']} ({pm['note']})")
    for stem, p in px["images"].items():
        native = "unknown" if p["native_um"] is None else f"{p['native_um']:g} µm/px ({p['from']})"
        print(f"real {stem}: pixel size {native}, resampled x{p['scale']:g} to "
              + ("its own" if p["pixel_size_um"] is None else f"{p['pixel_size_um']:g} µm/px")
              + f", pseudo-mask {p['pseudo_mask']}")  # fmt: skip
    print("\nmeasures on pseudo-masks (rows: tile sets; real: one row per image)\n")
    header = ["set", "tiles"] + [h for _, h, _ in COLUMNS] + ["pseudo vs true IoU"]
    rows = []
    for name, vals in r["tables"].items():
        iou = r["iou"][name].get("pseudo_vs_true")
        rows.append(
            [name, str(r["tiles"][name])]
            + [_fmt(vals[k], f) for k, _, f in COLUMNS]
            + [_fmt(iou["mean"] if iou else None, "{:.3f}")]
        )
    for name, vals in r["tables_true_mask"].items():
        rows.append(
            [f"{name} (true mask)", str(r["tiles"][name])]
            + [_fmt(vals[k], f) for k, _, f in COLUMNS]
            + ["1"]
        )
    _table(header, rows)
    for name, d in r["distances"].items():
        print(f"\ndistances to {name} (compare_reports; lower is closer)\n")
        _table(["set", *DISTANCES], [[s, *(_fmt(v[k], "{:.3f}") for k in DISTANCES)]
                                     for s, v in d.items()])  # fmt: skip
    if "verdicts" in r:
        roles = r["roles"]
        reals = list(r["distances"])
        rivals = [role for role in roles if role != "new"]
        print(f"\nverdicts: is new ({roles['new']}) closer than "
              + ", ".join(f"{role} ({roles[role]})" for role in rivals)
              + f"? per real image ({' / '.join(reals)}), then over all\n")  # fmt: skip
        _table(
            ["measure"] + [f"new vs {role}" for role in rivals],
            [
                [key]
                + [
                    " / ".join(v[role][x] for x in reals) + f" -> {v[role]['all']}"
                    for role in rivals
                ]  # fmt: skip
                for key, v in r["verdicts"].items()
            ],
        )
        print("\ncounts over the measures: " + "; ".join(
            f"vs {role}: " + ", ".join(f"{w} {n}" for w, n in sorted(c.items()))
            for role, c in r["verdict_counts"].items()))  # fmt: skip
    tvf = {k: v["tile_vs_field"]["mean"] for k, v in r["iou"].items() if "tile_vs_field" in v}
    if tvf:
        print("\nreal pseudo-masks, whole field vs tile alone (mean IoU): "
              + ", ".join(f"{k} {v:.3f}" for k, v in tvf.items()))  # fmt: skip
    print("\ntrue widths of the rendered sets (true masks), median (p25-p75): " + "; ".join(
        f"{n} {w['px']:.2f} px ({w['p25_px']:.2f}-{w['p75_px']:.2f})"
        + ("" if w["um"] is None else f" = {w['um']:.3f} µm")
        for n, w in px["rendered_true_width"].items())
        + (f" at {target:g} µm/px" if target is not None else ""))  # fmt: skip
    for param, rows_ in r.get("sensitivity", {}).items():
        print(f"\nsensitivity to {param} (real and physics sets; distances of each physics "
              "set to each real image)\n")  # fmt: skip
        keys = ("width_median", "branch_points_per_100px", "foreground_fraction",
                "empty_window_share")  # fmt: skip
        dkeys = ("width_w1", "branch_points_per_100px", "foreground_fraction",
                 "empty_window_share", "spectrum_log10")  # fmt: skip
        out = []
        for e in rows_:
            for name, vals in e["sets"].items():
                base = [f"{e['value']:g}", name] + [_fmt(vals[k], "{:.3f}") for k in keys]
                base.append(_fmt(vals.get("pseudo_vs_true_iou"), "{:.3f}"))
                if name in e["distances"]:
                    for syn, d in e["distances"][name].items():
                        out.append(base + [f"to {syn}"] + [_fmt(d.get(k), "{:.3f}") for k in dkeys])
                        base = [""] * len(base)
                else:
                    out.append(base + [""] + [""] * len(dkeys))
        _table(
            [param, "set", "median width", "branch/100px", "fg fraction", "empty share",
             "pseudo vs true IoU", "distance of"] + [f"d {k}" for k in dkeys],
            out,
        )  # fmt: skip
    if "grid" in r:
        print(f"\nfigure: {r['grid']} ({r['grid_bytes'] / 1024:.0f} KB)")
    print(f"\n{r['seconds']} s")

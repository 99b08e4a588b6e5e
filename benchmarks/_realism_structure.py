"""The realism report of a filamentous structure (``python benchmarks/realism.py --config mito``
or ``--config er``): real tiles against the physics and naive renderers, mask-free.

Three sets of 256 x 256 tiles, each measured by :func:`synthesis.structure_realism.
structure_report` on the image and its **pseudo-mask** (the same classical segmentation,
:func:`synthesis.groundtruth.pseudo_masks.pseudo_mask`, for every image, real or rendered):

- **real**: the tiles of an images-only source (``--source``, a folder of ``images/`` without
  ``masks/``; default the workspace's ``shared/data/mito-fluorescence`` for mito, none for
  ER), one set per image, each image pseudo-masked whole (before tiling, as the source does;
  the Otsu floor is a property of the field) by the structure's default method, or by it
  :meth:`~synthesis.groundtruth.pseudo_masks.PseudoMaskMethod.scaled` for an image sampled
  more finely (``--scale STEM=FACTOR``; default ``nao_mito=3``: 0.043 um/px, tubules 8-15 px);
- **physics** and **naive**: the build's own test images of the procedural masks
  (:class:`builder.assembly.images.ConfigImages`, ``reference_images("test")``: the
  ``test`` split of ``fluorobench-c build --config <structure>`` at seed 0, the reference
  SNR 8 through the build camera, Poisson-Gaussian noise), for ``--renderer physics`` and
  ``--renderer naive``; each tile is pseudo-masked on its own (a tile is a Mito-C field).
  Their **true** masks are measured beside, and the IoU of pseudo-mask against true mask
  per tile says how far the pseudo-mask method is from the truth on synthetic images.

A set's report pools its tiles' reports (:func:`pool_reports`: skeleton measures over all
tiles' skeletons, fractions and spectra averaged, native noise and SNR as the median
tile's), so :func:`synthesis.structure_realism.compare_reports` gives each synthetic set's
distances to each real image. Sensitivity (``--sweep PARAM=V1,V2,...``): the real and
physics sets again with one parameter of the pseudo-mask method changed (lengths scale with
an image's ``--scale``). The figure (``--grid``) shows each real image's field and a crop,
and one physics and one naive tile, with their pseudo-mask contours (and the true one).
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

from synthesis.groundtruth.pseudo_masks import DEFAULT_METHODS, PseudoMaskMethod, pseudo_mask
from synthesis.structure_realism import QUANTILE_LEVELS, compare_reports, structure_report

#: The real mitochondria the mito report reads by default (read in place, never copied).
MITO_DATA = ROOT.parent / "shared" / "data" / "mito-fluorescence"
#: Pseudo-mask scale per image stem of the default data: ``nao_mito`` is sampled at
#: 0.043 um/px (tubules 8-15 px wide), about 3x finer than the HCS field (2-4 px).
DEFAULT_SCALES: dict[str, float] = {"nao_mito": 3.0}
#: Pixel sizes (um) stated by the data (the folder's README, from the image's ImageJ/CZI
#: metadata: 23.5 px per micron). The HCS field states none.
PIXEL_UM: dict[str, float] = {"nao_mito": 4.253888e-2}
#: Default sensitivity sweeps of the pseudo-mask method (parameter: values).
DEFAULT_SWEEPS: dict[str, tuple[float, ...]] = {
    "block_size": (7, 11, 15, 21),
    "floor_factor": (0.1, 0.25, 0.5, 1.0),
    "offset": (0.0, 1.0, 2.0, 4.0),
}
RENDERERS = ("physics", "naive")
#: The table's columns: (key, header, format).
COLUMNS = (
    ("width_median", "median width (px)", "{:.2f}"),
    ("width_iqr", "width IQR (px)", "{:.2f}"),
    ("width_iqr_in_tile", "width IQR in a tile (px)", "{:.2f}"),
    ("branch_points_per_100px", "branch pts / 100 px", "{:.2f}"),
    ("end_points_per_100px", "end pts / 100 px", "{:.2f}"),
    ("segment_length_median", "median segment (px)", "{:.1f}"),
    ("foreground_fraction", "fg fraction", "{:.3f}"),
    ("empty_window_share", "empty 64x64 share", "{:.3f}"),
    ("native_snr", "native SNR", "{:.1f}"),
)
#: The distance columns (keys of :func:`compare_reports`).
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


def row(report: dict[str, Any]) -> dict[str, float | None]:
    """The table's numbers (:data:`COLUMNS`) of a (pooled) report."""
    t = report["topology"]
    return {
        "width_median": report["width"]["median"],
        "width_iqr": report["width"]["iqr"],
        "width_iqr_in_tile": report["width"].get("iqr_in_tile"),
        "branch_points_per_100px": t["branch_points_per_100px"],
        "end_points_per_100px": t["end_points_per_100px"],
        "segment_length_median": t["segment_length"]["median"],
        "foreground_fraction": report["foreground_fraction"],
        "empty_window_share": report["empty_window_share"],
        "native_snr": report.get("noise", {}).get("native_snr"),
    }


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _spread(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "median": float(np.median(v)), "min": float(v.min())}


# ----------------------------------------------------------------------------- the sets


def methods_for(stems: list[str], base: PseudoMaskMethod, scales: dict[str, float]) -> dict:
    """The pseudo-mask method of each image stem: ``base``, scaled where ``scales`` says."""
    return {s: base.scaled(scales[s]) if s in scales else base for s in stems}


def _stems(source: Path) -> list[str]:
    from synthesis.groundtruth.sources import IMAGE_SUFFIXES

    folder = source / "images"
    return sorted(p.stem for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def real_sets(
    source: Path, structure: str, methods: dict[str, PseudoMaskMethod], cap: int
) -> dict[str, dict[str, Any]]:
    """Per image stem: its tiles from the images-only source (pseudo-masked whole by its
    method), at most ``cap`` (0: all), as ``items`` and the method."""
    from synthesis.groundtruth.sources.images_only import ImagesOnlySource

    out: dict[str, dict[str, Any]] = {}
    for method in dict.fromkeys(methods.values()):
        src = ImagesOnlySource(source, structure, counts={}, method=method)
        src.scan()
        ids = sorted(i for split in ("train", "validation", "test") for i in src.ids(split))
        loaded = src.load(ids)
        for stem in (s for s, m in methods.items() if m == method):
            items = [it for it in loaded if Path(it.meta["image_file"]).stem == stem]
            if cap:
                items = items[:cap]
            if items:
                out[stem] = {"items": items, "method": method}
    return out


def rendered_tiles(structure: str, renderer: str, n: int, seed: int) -> tuple[np.ndarray, ...]:
    """(ADU images, true masks), each ``(n, 256, 256)``: the ``test`` split of a build of
    ``structure`` with ``renderer`` at the reference SNR, made as the build makes it."""
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


# ----------------------------------------------------------------------------- sweep


def sweep(
    param: str,
    values: list[float],
    structure: str,
    source: Path | None,
    scales: dict[str, float],
    images: np.ndarray,
    truth: np.ndarray,
    cap: int,
) -> list[dict[str, Any]]:
    """The real and physics sets again, with ``param`` of the method set to each value."""
    base = DEFAULT_METHODS[structure]
    rows = []
    for v in values:
        value = int(v) if param in ("block_size", "min_size", "max_hole") else float(v)
        method = replace(base, name=f"{base.name}-{param}={value:g}", **{param: value})
        entry: dict[str, Any] = {"value": value, "sets": {}, "distances": {}}
        real = {}
        if source is not None:
            methods = methods_for(_stems(source), method, scales)
            real = measure_real(real_sets(source, structure, methods, cap))
        phys, _ = measure_rendered(images, truth, method)
        for stem, r in real.items():
            entry["sets"][stem] = {"method": r["method"], **row(r["report"])}
            entry["distances"][stem] = _distances(r["report"], phys["report"])
        entry["sets"]["physics"] = {
            "method": method.name,
            **row(phys["report"]),
            "pseudo_vs_true_iou": phys["pseudo_vs_true_iou"]["mean"],
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
    """Rows: per real image, the field (pseudo-mask tinted, the crop framed), a crop, the
    crop with its pseudo-mask contour, and the crop's densest 128 px enlarged x2 with the
    contour; per renderer, a tile, with its pseudo-mask contour (red), with its true mask's
    (green), and its densest 128 px enlarged x2 with the pseudo-mask contour. Returns the file's size."""
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
        rows.append(
            (
                f"real: {stem}\n{s['method'].name}\ntile y{y} x{x}",
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
                f"{name} renderer\n(test tile, SNR 8)",
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


def _field(source: Path, stem: str, method: PseudoMaskMethod) -> tuple[np.ndarray, np.ndarray]:
    """(the whole image, its pseudo-mask), decoded as the images-only source decodes it, at
    the file's own pixel size (not resampled)."""
    from synthesis.groundtruth.sources.readers import _decode
    from synthesis.groundtruth.sources.readers import _grey as grey_of

    folder = source / "images"
    path = next(p for p in sorted(folder.iterdir()) if p.stem == stem)
    image = grey_of(_decode(path, str(path)), str(path), what="image")
    return image, pseudo_mask(image, method)


# ----------------------------------------------------------------------------- main


def _scales(values: list[str] | None) -> dict[str, float]:
    if values is None:
        return dict(DEFAULT_SCALES)
    out = {}
    for v in values:
        stem, sep, factor = v.partition("=")
        if not sep or not stem:
            raise SystemExit(f"--scale must be STEM=FACTOR. Got {v!r}")
        out[stem] = float(factor)
    return out


def _sweeps(values: list[str] | None) -> dict[str, list[float]]:
    if values is None:
        return {k: list(v) for k, v in DEFAULT_SWEEPS.items()}
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
    p.add_argument("--no-real", action="store_true", help="rendered sets only")
    p.add_argument("--tiles", type=int, default=40, help="rendered tiles per renderer")
    p.add_argument("--real-tiles", type=int, default=0, help="real tiles per image (0: all)")
    p.add_argument(
        "--scale",
        action="append",
        metavar="STEM=FACTOR",
        help="pseudo-mask method scaled for an image (default: nao_mito=3)",
    )
    p.add_argument(
        "--sweep",
        action="append",
        metavar="PARAM=V1,V2",
        help="sensitivity to a pseudo-mask parameter (default: floor_factor and block_size)",
    )
    p.add_argument("--no-sweep", action="store_true")
    p.add_argument("--seed", type=int, default=0, help="build seed of the rendered tiles")
    p.add_argument("--grid", type=Path, default=None, help="figure (default: docs/images/...)")
    p.add_argument("--no-grid", action="store_true")
    _common.add_json(p)
    return p


def main(argv: list[str] | None, doc: str | None, machine: str) -> dict:
    args = parser(doc).parse_args(argv)
    t0 = time.perf_counter()
    structure = args.config
    base = DEFAULT_METHODS[structure]
    scales = _scales(args.scale)
    source = args.source
    if source is None and structure == "mito":
        source = MITO_DATA
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
        "pseudo_mask": {"default": base.to_dict()},
        "renderers": "the build's test split (ConfigImages.reference_images), SNR 8, seed "
        f"{args.seed}",
    }
    real_raw: dict[str, dict[str, Any]] = {}
    real: dict[str, Any] = {}
    if source is not None:
        methods = methods_for(_stems(source), base, scales)
        real_raw = real_sets(source, structure, methods, args.real_tiles)
        real = measure_real(real_raw)
        result["pseudo_mask"]["per_image"] = {s: m.to_dict() for s, m in methods.items()}
    rendered, pseudo, images = {}, {}, {}
    for r in RENDERERS:
        x, m = rendered_tiles(structure, r, args.tiles, args.seed)
        rendered[r], pseudo[r] = measure_rendered(x, m, base)
        images[r] = (x, m)
    sets: dict[str, Any] = {}
    for stem, s in real.items():
        sets[f"real:{stem}"] = {"kind": "real", **s}
    for r, s in rendered.items():
        sets[r] = {"kind": "rendered", **s}
    result["tables"] = {name: row(s["report"]) for name, s in sets.items()}
    result["tables_true_mask"] = {r: row(s["truth"]) for r, s in rendered.items()}
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
    truth_width = rendered["physics"]["truth"]["width"]
    scale: dict[str, Any] = {
        "rendered_true_width_px": {k: truth_width[k] for k in ("median", "p25", "p75", "mean")},
        "real_width_px": {s: r["report"]["width"]["median"] for s, r in real.items()},
        "pixel_um": {s: PIXEL_UM[s] for s in real if s in PIXEL_UM},
    }
    known = {s: scale["real_width_px"][s] * um for s, um in scale["pixel_um"].items()}
    if known:
        width_um = float(np.mean(list(known.values())))
        scale["width_um"] = width_um
        scale["implied_um_per_px"] = {
            **{s: width_um / w for s, w in scale["real_width_px"].items() if s not in known},
            f"{structure}_c": width_um / truth_width["median"],
        }
    result["scale"] = scale
    result["reports"] = {name: _slim(s["report"]) for name, s in sets.items()}
    if not args.no_sweep:
        x, m = images["physics"]
        result["sensitivity"] = {
            param: sweep(param, vals, structure, source, scales, x, m, args.real_tiles)
            for param, vals in _sweeps(args.sweep).items()
        }
    if not args.no_grid:
        path = args.grid or ROOT / "docs" / "images" / f"{structure}_pseudo_masks.png"
        fields = {s: _field(source, s, v["method"]) for s, v in real_raw.items()}
        k = {
            r: int(np.argsort([p.mean() for p in pseudo[r]])[len(pseudo[r]) // 2])
            for r in RENDERERS
        }
        tiles = {r: (images[r][0][k[r]], pseudo[r][k[r]], images[r][1][k[r]]) for r in RENDERERS}
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
    print(f"rendered: {r['renderers']}")
    per = r["pseudo_mask"].get("per_image", {})
    base = r["pseudo_mask"]["default"]["name"]
    print(f"pseudo-mask method: {base}" + "".join(f"; {s}: {m['name']}" for s, m in per.items()))
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
    tvf = {k: v["tile_vs_field"]["mean"] for k, v in r["iou"].items() if "tile_vs_field" in v}
    if tvf:
        print("\nreal pseudo-masks, whole field vs tile alone (mean IoU): "
              + ", ".join(f"{k} {v:.3f}" for k, v in tvf.items()))  # fmt: skip
    s = r["scale"]
    w = s["rendered_true_width_px"]
    name = {"er": "ER-C", "mito": "Mito-C"}[r["config"]]
    print(f"\nscale: {name} true tubule width (true masks) median {w['median']:.2f} px "
          f"(p25 {w['p25']:.2f}, p75 {w['p75']:.2f})" + "".join(
              f"; real {k} (pseudo-mask) {v:.2f} px" for k, v in s["real_width_px"].items()))  # fmt: skip
    if "implied_um_per_px" in s:
        print(f"  width {s['width_um']:.3f} um at the stated pixel sizes "
              f"{s['pixel_um']}; implied pixel sizes (um/px): "
              + ", ".join(f"{k} {v:.3f}" for k, v in s["implied_um_per_px"].items()))  # fmt: skip
    for param, rows_ in r.get("sensitivity", {}).items():
        print(f"\nsensitivity to {param} (real and physics; distance of physics to each real)\n")
        keys = ("width_median", "branch_points_per_100px", "foreground_fraction",
                "empty_window_share")  # fmt: skip
        dkeys = ("width_w1", "branch_points_per_100px", "foreground_fraction",
                 "empty_window_share", "spectrum_log10")  # fmt: skip
        out = []
        for e in rows_:
            for name, vals in e["sets"].items():
                d = e["distances"].get(name, {})
                out.append(
                    [f"{e['value']:g}", name]
                    + [_fmt(vals[k], "{:.3f}") for k in keys]
                    + [_fmt(vals.get("pseudo_vs_true_iou"), "{:.3f}")]
                    + [_fmt(d.get(k), "{:.3f}") for k in dkeys]
                )
        _table(
            [param, "set", "median width", "branch/100px", "fg fraction", "empty share",
             "pseudo vs true IoU"] + [f"d {k}" for k in dkeys],
            out,
        )  # fmt: skip
    if "grid" in r:
        print(f"\nfigure: {r['grid']} ({r['grid_bytes'] / 1024:.0f} KB)")
    print(f"\n{r['seconds']} s")

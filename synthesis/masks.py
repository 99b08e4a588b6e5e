"""Procedural ground-truth masks: ER networks, mitochondria and nuclei, seeded and batched.

The embedded default source of the benchmark: no download, exactly known ground truth.
Each row is a pure function of its seed. A layout (sites, paths, shapes: variable counts) is
drawn first on the CPU from a ``torch.Generator`` seeded with the row's seed ("sample"), then
all rows are rasterised together with tensor ops ("apply").

- **ER**: the Voronoi diagram of a hard-core point process is a planar network whose
  vertices have degree three almost surely, like the three-way junctions of the peripheral
  ER; its cells are the polygonal loops. Site density rises towards the nucleus
  (perinuclear ER is denser), a smooth displacement field bends the tubules, a few edges are
  dropped (larger loops, free ends) and a few small cells near the nucleus are filled
  (small sheets). Tubules are drawn at their exact distance from the cell bisector.
- **Mitochondria**: persistent random walks with smoothly varying curvature, swept by a disc
  of the object's width; some branched, some fragmented into short rods or round puncta,
  placed without overlap inside a cytoplasm region.
- **Nuclei**: star-shaped ellipses with low-order harmonic irregularity, sizes and coverage
  drawn from the ranges measured on BBBC038 (``benchmarks/realism.py`` prints them),
  clustered or spread; overlapping neighbours are split along the curve of equal normalised
  radius, so touching nuclei stay separate instances.

Streams of :mod:`synthesis.rng` used here (200-299 are reserved for masks and rendering):
``STREAM_ER_WARP`` = 200 (the displacement field that bends ER tubules). All other draws
come from the per-row generator.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from synthesis import rng
from synthesis._checks import check_seeds

__all__ = [
    "MASK_SETTINGS",
    "STRUCTURES",
    "ERSettings",
    "MaskBatch",
    "MitoSettings",
    "NucleusSettings",
    "generate_masks",
]

logger = logging.getLogger(__name__)

#: The structures of the benchmark, named as the dataset's configs.
STRUCTURES: tuple[str, ...] = ("er", "mito", "nucleus")

STREAM_ER_WARP = 200

Range = tuple[float, float]


@dataclass(frozen=True)
class ERSettings:
    """Endoplasmic reticulum network. Lengths in pixels (about 30-60 nm each: SIM/Airyscan).

    Peripheral ER tubules are 50-100 nm wide and enclose polygons of 0.3-1.5 um, hence
    tubules of 2-4 px and loop spacings of 16-30 px. With Voronoi edge length per unit area
    ``2 sqrt(lambda)`` the foreground fraction is about ``2 w / spacing``: 15-40 %.
    """

    site_spacing_px: Range = (16.0, 30.0)  # mean distance between sites far from the nucleus
    hard_core: float = 0.5  # minimum site distance / local spacing (no slivers of loops)
    perinuclear_boost: Range = (1.5, 3.0)  # site density at the nuclear envelope / far field
    perinuclear_decay_px: Range = (30.0, 90.0)
    nucleus_in_view_prob: float = 0.35
    nucleus_radius_px: Range = (35.0, 70.0)
    tubule_width_px: Range = (2.0, 4.0)  # per edge, around a per-image mean
    edge_drop_prob: Range = (0.04, 0.16)
    warp_amplitude_px: Range = (1.0, 3.0)  # rms of the displacement field at its nodes
    warp_cells: int = 10  # nodes of the displacement field across the image
    sheet_image_prob: float = 0.4  # images with small sheets at all
    sheet_cell_prob: Range = (0.04, 0.12)  # filled cells at the envelope, decaying outwards
    cell_edge_prob: float = 0.3  # images where the cell's edge crosses the field
    min_inside_fraction: float = 0.5  # the cell covers at least this much of the field


@dataclass(frozen=True)
class MitoSettings:
    """Mitochondria: tubules, branched tubules, short rods and puncta.

    Widths 3-7 px (250-500 nm at ~70 nm pixels); tubule lengths 15-90 px (1-6 um). The
    per-image fraction of fragments spans healthy networks to fragmented (stressed) cells.
    Foreground fractions of 5-25 % match cytoplasm densely to sparsely filled with
    mitochondria.
    """

    foreground_fraction: Range = (0.05, 0.22)  # target coverage; placement stops there
    width_px: Range = (3.0, 7.0)
    mean_width_px: Range = (3.4, 6.0)  # per image; objects vary +-20 % around it
    tubule_length_px: Range = (15.0, 90.0)  # log-uniform
    rod_aspect: Range = (1.8, 4.0)  # rod length / width
    punctum_diameter_factor: Range = (1.0, 1.5)  # punctum diameter / width
    fragment_fraction: Range = (0.0, 0.8)  # per image: rods + puncta among objects
    punctum_share: Range = (0.2, 0.6)  # puncta among fragments
    branch_prob: Range = (0.0, 0.4)  # per image: branched tubules among tubules
    branch_length_factor: Range = (0.3, 0.7)
    curvature_rad_per_px: Range = (0.0, 0.07)  # rms of the smoothly varying curvature
    curvature_memory_px: float = 12.0  # correlation length of the curvature
    empty_fraction: Range = (0.0, 0.4)  # field outside the cytoplasm (nucleus, outside cell)
    gap_px: float = 1.0  # minimum distance between two objects
    max_attempts: int = 400


@dataclass(frozen=True)
class NucleusSettings:
    """Nuclei; ranges measured on the 361 fluorescence images of BBBC038 stage1_train.

    Measured on its 425 train tiles (``benchmarks/realism.py`` prints the comparison):
    median equivalent diameter per tile 10-50 px (5-95 %), foreground fraction 2-32 %
    rising with it (log-log slope ~1.0, residual log-sd 0.8), moment aspect ratio median
    1.4 (5-95 %: 1.1-2.4), solidity ~0.94, ~20 % of nuclei touching a neighbour. The
    coverage constants were then set so that the tiles' foreground fractions and counts
    match (placement rejects overlaps, so realised coverage is below the target).
    """

    median_diameter_px: Range = (11.0, 50.0)  # log-uniform per image
    diameter_cv: Range = (0.12, 0.35)
    coverage_at_18px: float = 0.11  # median foreground fraction of images of 18 px nuclei
    coverage_slope: float = 1.0  # d log(fraction) / d log(diameter)
    coverage_log_sd: float = 0.6  # (0.8 measured, less the spread from cutting into tiles)
    coverage_range: Range = (0.01, 0.40)
    aspect_mean_excess: Range = (0.3, 0.9)  # per image; per nucleus aspect 1 + Exp(mean)
    max_aspect: float = 2.8
    irregularity: Range = (0.02, 0.08)  # sd of the 2nd radius harmonic; k-th: * (2 / k)^2
    cluster_fraction: Range = (0.0, 0.7)  # nuclei placed near a cluster parent
    cluster_spread_diameters: Range = (1.0, 2.5)
    min_distance_factor: float = 0.8  # centres >= this * (r_i + r_j) apart (touching allowed)
    max_attempts_per_nucleus: int = 30


#: One settings table per structure, keyed by the dataset's config names.
MASK_SETTINGS: dict[str, ERSettings | MitoSettings | NucleusSettings] = {
    "er": ERSettings(),
    "mito": MitoSettings(),
    "nucleus": NucleusSettings(),
}


@dataclass
class MaskBatch:
    """Masks of one batch.

    Attributes:
        mask: ``(B, 1, H, W)`` bool, True on the structure.
        instances: ``(B, 1, H, W)`` int32 labels (0 = background, 1..N) for nuclei, else None.
        params: per row, the drawn generator parameters (JSON-serialisable), with the seed.
    """

    mask: Tensor
    instances: Tensor | None
    params: list[dict[str, Any]]


def generate_masks(
    structure: str,
    seeds: Tensor | int | list[int],
    *,
    size: int = 256,
    device: torch.device | str | None = None,
) -> MaskBatch:
    """Draw ``B`` procedural masks of ``structure``, row ``i`` a function of ``seeds[i]`` only.

    Args:
        structure: one of :data:`STRUCTURES`.
        seeds: ``(B,)`` int64 seeds (or an int for one row).
        size: image side in pixels (lengths in the settings are in pixels, not scaled).
        device: where the masks are rasterised; default: the device of ``seeds`` (or CPU).

    Returns:
        :class:`MaskBatch` with ``mask`` ``(B, 1, size, size)`` bool; every row has both
        foreground and background.

    Raises:
        ValueError: unknown structure, ``size`` < 32, or bad seeds.

    Example:
        >>> out = generate_masks("mito", torch.tensor([1, 2]), size=64)
        >>> out.mask.shape, out.mask.dtype, out.instances is None
        (torch.Size([2, 1, 64, 64]), torch.bool, True)
    """
    if structure not in STRUCTURES:
        raise ValueError(f"structure must be one of {STRUCTURES}. Got {structure!r}")
    if not isinstance(size, int) or size < 32:
        raise ValueError(f"size must be an int >= 32. Got {size!r}")
    if device is None:
        device = seeds.device if isinstance(seeds, Tensor) else torch.device("cpu")
    seeds_t = torch.as_tensor(seeds)
    seeds_t = check_seeds(seeds_t, seeds_t.reshape(-1).shape[0], device=torch.device(device))
    seed_list = [int(s) for s in seeds_t.cpu().tolist()]
    settings = MASK_SETTINGS[structure]
    if structure == "er":
        mask, instances, params = _er(seed_list, seeds_t, size, settings)
    elif structure == "mito":
        mask, instances, params = _mito(seed_list, size, settings, seeds_t.device)
    else:
        mask, instances, params = _nuclei(seed_list, size, settings, seeds_t.device)
    fg = mask.flatten(1).sum(1)
    bad = torch.nonzero((fg == 0) | (fg == mask[0].numel())).flatten().tolist()
    if bad:  # the layouts guarantee both; this guards the guarantee
        raise RuntimeError(
            f"{structure} masks of seeds {[seed_list[i] for i in bad]} lack fg or bg"
        )
    for p, f, s in zip(params, (fg.float() / mask[0].numel()).tolist(), seed_list, strict=True):
        p["foreground_fraction"] = round(f, 5)
        p["mask_seed"] = s
        p["generator"] = f"procedural:{structure}"
    return MaskBatch(mask=mask, instances=instances, params=params)


# ----------------------------------------------------------------------------- helpers


class _Draws:
    """Scalar draws for a layout from a ``torch.Generator`` seeded with the row's seed.

    Draws come in blocks (a torch call per scalar cost ~10 us, most of a layout's time); the
    sequence is still a pure function of the seed and the order of the calls.
    """

    _BLOCK = 512

    def __init__(self, seed: int) -> None:
        self.g = torch.Generator().manual_seed(int(seed))
        self._uni = np.empty(0)
        self._nor = np.empty(0)

    def u(self, lo: float = 0.0, hi: float = 1.0) -> float:
        if self._uni.size == 0:
            self._uni = torch.rand(self._BLOCK, generator=self.g, dtype=torch.float64).numpy()
        x, self._uni = self._uni[0], self._uni[1:]
        return lo + (hi - lo) * float(x)

    def logu(self, lo: float, hi: float) -> float:
        return math.exp(self.u(math.log(lo), math.log(hi)))

    def n(self) -> float:
        return float(self.normals(1)[0])

    def normals(self, count: int) -> np.ndarray:
        if self._nor.size < count:
            more = torch.randn(max(self._BLOCK, count), generator=self.g, dtype=torch.float64)
            self._nor = np.concatenate([self._nor, more.numpy()])
        x, self._nor = self._nor[:count], self._nor[count:]
        return x


def _r(x: float) -> float:
    return round(float(x), 4)


# ----------------------------------------------------------------------------- ER


def _er_layout(seed: int, size: int, s: ERSettings) -> dict[str, Any]:
    """Sites (N, 2) as (y, x), per-site draws and the scalar parameters of one ER image."""
    dr = _Draws(seed)
    g = dr.g
    spacing = dr.u(*s.site_spacing_px)
    boost = dr.u(*s.perinuclear_boost)
    decay = dr.u(*s.perinuclear_decay_px)
    radius = dr.u(*s.nucleus_radius_px)
    in_view = dr.u() < s.nucleus_in_view_prob
    half = size / 2
    if in_view:
        cy, cx = dr.u(0.15, 0.85) * size, dr.u(0.15, 0.85) * size
    else:  # beyond the field: its density gradient still crosses the image
        angle = dr.u(0, 2 * math.pi)
        dist = half * math.sqrt(2) + radius + dr.u(0.0, 0.6) * size
        cy, cx = half + dist * math.sin(angle), half + dist * math.cos(angle)
    # The cell's edge: a (warped) circle around the nucleus; inside covers enough of the field.
    cell_radius = math.inf
    if dr.u() < s.cell_edge_prob:
        yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
        r = torch.hypot((yy + 0.5) * size / 16 - cy, (xx + 0.5) * size / 16 - cx).flatten()
        r_min = float(torch.quantile(r, s.min_inside_fraction))
        r_max = float(r.max())
        if r_max > r_min:
            cell_radius = dr.u(r_min, r_max)
    # Hard-core (Matern II) thinning of an oversampled inhomogeneous Poisson process keeps the
    # target density when candidates are oversampled by m with 1 - exp(-m a) = a, a = pi c^2.
    a = math.pi * s.hard_core**2
    over = -math.log(1 - a) / a
    lam0 = 1.0 / spacing**2
    margin = 2 * spacing * math.sqrt(boost)
    lo, hi = -margin, size + margin
    lam_max = lam0 * boost * over
    n = int(torch.poisson(torch.tensor([lam_max * (hi - lo) ** 2], dtype=torch.float64), g)[0])
    pts = lo + (hi - lo) * torch.rand(n, 2, generator=g, dtype=torch.float64)
    r = torch.hypot(pts[:, 0] - cy, pts[:, 1] - cx)
    lam = lam0 * (1 + (boost - 1) * torch.exp(-(r - radius).clamp(min=0) / decay))
    lam = torch.where(r < radius, torch.zeros_like(lam), lam)
    keep = torch.rand(n, generator=g, dtype=torch.float64) < lam * over / lam_max
    pts, lam, r = pts[keep], lam[keep], r[keep]
    marks = torch.rand(pts.shape[0], generator=g, dtype=torch.float64)
    ok = torch.from_numpy(
        _matern2(pts.numpy(), (s.hard_core / torch.sqrt(lam)).numpy(), marks.numpy())
    )
    pts, r = pts[ok], r[ok]
    m = pts.shape[0]
    width_mean = dr.u(s.tubule_width_px[0] + 0.2, s.tubule_width_px[1] - 0.4)
    drop = dr.u(*s.edge_drop_prob)
    u_width = torch.rand(m, generator=g, dtype=torch.float64)
    u_keep = torch.rand(m, generator=g, dtype=torch.float64)
    sheet_p = dr.u(*s.sheet_cell_prob) if dr.u() < s.sheet_image_prob else 0.0
    p_cell = sheet_p * torch.exp(-(r - radius).clamp(min=0) / decay)
    sheets = torch.rand(m, generator=g, dtype=torch.float64) < p_cell
    return {
        "sites": pts,
        "u_width": u_width,
        "u_keep": u_keep,
        "sheets": sheets,
        "warp": dr.u(*s.warp_amplitude_px),
        "params": {
            "site_spacing_px": _r(spacing),
            "perinuclear_boost": _r(boost),
            "perinuclear_decay_px": _r(decay),
            "nucleus_in_view": bool(in_view),
            "nucleus_center_yx": [_r(cy), _r(cx)],
            "nucleus_radius_px": _r(radius),
            "cell_radius_px": None if math.isinf(cell_radius) else _r(cell_radius),
            "sites": int(m),
            "tubule_width_mean_px": _r(width_mean),
            "edge_drop_prob": _r(drop),
            "sheet_cell_prob": _r(sheet_p),
            "sheet_cells": int(sheets.sum()),
        },
    }


def _matern2(pts: np.ndarray, core: np.ndarray, marks: np.ndarray) -> np.ndarray:
    """Matern type-II thinning: keep a point unless a point closer than the smaller of their
    hard-core distances has a smaller mark. Pairs are searched in a sliding window of the
    points sorted by y (5x faster than all pairs for ~2000 points)."""
    n = pts.shape[0]
    if n == 0:
        return np.zeros(0, dtype=bool)
    order = np.argsort(pts[:, 0], kind="stable")
    ps, cs, ms = pts[order], core[order], marks[order]
    reach = float(cs.max())
    lo = np.searchsorted(ps[:, 0], ps[:, 0] - reach)
    hi = np.searchsorted(ps[:, 0], ps[:, 0] + reach, side="right")
    idx = lo[:, None] + np.arange(int((hi - lo).max()))[None, :]
    valid = (idx < hi[:, None]) & (idx != np.arange(n)[:, None])
    idx = np.minimum(idx, n - 1)
    d2 = ((ps[idx] - ps[:, None, :]) ** 2).sum(-1)
    conflict = valid & (d2 < np.minimum(cs[idx], cs[:, None]) ** 2) & (ms[idx] < ms[:, None])
    keep = np.empty(n, dtype=bool)
    keep[order] = ~conflict.any(1)
    return keep


def finite_normal(seeds: Tensor, shape: tuple[int, ...], stream: int) -> Tensor:
    """:func:`synthesis.rng.normal` with its tails clamped to +-5.5 sd (always finite).

    ``rng.uniform`` can round to exactly 1.0 in float32 (24 bits + 2^-25), where the inverse
    CDF is inf (probability 2^-24 per value: 0.4 % of 256x256 fields); the clamp changes
    nothing else, as the 24-bit uniforms bound the tails at 5.4 sd.
    """
    return rng.normal(seeds, shape, stream).clamp_(-5.5, 5.5)


def _smooth_field(seeds: Tensor, stream: int, size: int, cells: int) -> Tensor:
    """``(B, 2, size, size)`` smooth unit-rms (at the nodes) noise, bicubic between nodes."""
    nodes = finite_normal(seeds, (2, cells + 1, cells + 1), stream)
    return F.interpolate(nodes, size=(size, size), mode="bicubic", align_corners=True)


def _er(
    seeds: list[int], seeds_t: Tensor, size: int, s: ERSettings
) -> tuple[Tensor, None, list[dict[str, Any]]]:
    device = seeds_t.device
    layouts = [_er_layout(sd, size, s) for sd in seeds]
    warp = _smooth_field(seeds_t, STREAM_ER_WARP, size, s.warp_cells)
    amp = torch.tensor([lay["warp"] for lay in layouts], device=device, dtype=torch.float32)
    yy, xx = torch.meshgrid(
        torch.arange(size, dtype=torch.float32, device=device),
        torch.arange(size, dtype=torch.float32, device=device),
        indexing="ij",
    )
    grid = torch.stack([yy, xx])[None]
    q = grid + amp[:, None, None, None] * warp  # (B, 2, H, W) warped coordinates
    out = torch.empty(len(seeds), 1, size, size, dtype=torch.bool, device=device)
    # A few rows at a time: batched ops (one call per op, not per row: op overhead dominated
    # on a busy 2-core machine), with ~20 MB tensors.
    for r0 in range(0, len(seeds), _ER_ROWS):
        rows = slice(r0, r0 + _ER_ROWS)
        out[rows, 0] = _er_raster(q[rows], layouts[rows], s, size)
    params = []
    for lay in layouts:
        p = dict(lay["params"])
        p["warp_amplitude_px"] = _r(lay["warp"])
        params.append(p)
    return out, None, params


_ER_ROWS = 4
_ER_CANDIDATES = 10  # nearest sites kept per 8x8 cell (redone exactly where too few)
_FAR = 1e6  # padding sites, never among the nearest three


def _nearest3(q: Tensor, sites: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Indices and squared distances of the 3 nearest sites, ``(B, P, 3)`` each.

    ``q``: ``(B, P, 2)`` points (a ``size`` x ``size`` grid, row-major); ``sites``:
    ``(B, N, 2)``. Candidates are the ``_ER_CANDIDATES`` nearest sites of the centre of the
    pixel's 8x8 cell; a pixel whose 3rd distance plus its offset from the centre exceeds the
    cell's last candidate distance could miss a site (triangle inequality) and is redone
    against all sites, so results match a brute-force search (up to float32 rounding of
    near-ties: a few pixels per image).
    """
    b, n, _ = sites.shape
    k = min(_ER_CANDIDATES, n)
    c = 8
    side = size // c
    qg = q.reshape(b, size, size, 2)
    centres = qg[:, c // 2 :: c, c // 2 :: c][:, :side, :side].reshape(b, -1, 2)
    dk, cand = torch.cdist(centres, sites).topk(k, dim=2, largest=False)
    iy = (torch.arange(size, device=q.device) // c).clamp(max=side - 1)
    cell = (iy[:, None] * side + iy[None, :]).reshape(-1)
    cand_p = cand[:, cell].reshape(b, -1)  # (B, P * k)
    d2 = (torch.gather(sites[..., 0], 1, cand_p).reshape(b, -1, k) - q[..., :1]).square_()
    d2 += (torch.gather(sites[..., 1], 1, cand_p).reshape(b, -1, k) - q[..., 1:]).square_()
    # Three passes of min: ~3x faster than topk(3) over a last dim of 10 on CPU.
    d3 = torch.empty(b, d2.shape[1], 3, device=q.device)
    j3 = torch.empty(b, d2.shape[1], 3, device=q.device, dtype=torch.int64)
    for j in range(3):
        d3[..., j], j3[..., j] = d2.min(dim=2)
        if j < 2:
            d2.scatter_(2, j3[..., j : j + 1], math.inf)
    idx = torch.gather(cand_p.reshape(b, -1, k), 2, j3)
    off = q - centres[:, cell]
    offset = torch.hypot(off[..., 0], off[..., 1])
    redo = d3[..., 2].sqrt() + offset + 0.01 > dk[:, cell, -1]
    if k < n:
        for i in torch.nonzero(redo.any(1)).flatten().tolist():
            pix = torch.nonzero(redo[i]).flatten()
            dr, ir = torch.cdist(q[i, pix], sites[i]).topk(3, dim=1, largest=False)
            d3[i, pix], idx[i, pix] = dr * dr, ir
    return idx, d3


def _er_raster(q: Tensor, layouts: list[dict[str, Any]], s: ERSettings, size: int) -> Tensor:
    """``(b, size, size)`` bool ER masks of ``layouts`` at warped coordinates ``q`` (b, 2, H, W)."""
    device = q.device
    b = len(layouts)
    n = max(lay["sites"].shape[0] for lay in layouts)

    def padded(key: str, fill: float) -> Tensor:
        out = torch.full((b, n) + tuple(layouts[0][key].shape[1:]), fill, dtype=torch.float32)
        for i, lay in enumerate(layouts):
            out[i, : lay[key].shape[0]] = lay[key].to(torch.float32)
        return out.to(device)

    # Padding sites far away and apart (no ties among them).
    sites = padded("sites", math.nan)
    far = _FAR + 10 * torch.arange(n, device=device, dtype=torch.float32)
    sites = torch.where(sites.isnan(), far[None, :, None].expand_as(sites), sites)
    u_w, u_k, sheets = padded("u_width", 0.0), padded("u_keep", 0.0), padded("sheets", 0.0) > 0

    def col(values: list[float]) -> Tensor:
        return torch.tensor(values, device=device, dtype=torch.float32)[:, None]

    ps = [lay["params"] for lay in layouts]
    lo_w = col([max(s.tubule_width_px[0], p["tubule_width_mean_px"] * 0.75) for p in ps])
    hi_w = col([min(s.tubule_width_px[1], p["tubule_width_mean_px"] * 1.25) for p in ps])
    drop = col([p["edge_drop_prob"] for p in ps])
    qf = q.permute(0, 2, 3, 1).reshape(b, -1, 2)
    idx, d2 = _nearest3(qf, sites, size)
    i0 = idx[..., 0]
    fg = torch.gather(sheets, 1, i0)
    s0y, s0x = torch.gather(sites[..., 0], 1, i0), torch.gather(sites[..., 1], 1, i0)
    w0, k0 = torch.gather(u_w, 1, i0), torch.gather(u_k, 1, i0)
    for j in (1, 2):
        ij = idx[..., j]
        sep = torch.hypot(
            s0y - torch.gather(sites[..., 0], 1, ij), s0x - torch.gather(sites[..., 1], 1, ij)
        )
        # frac(u_a + u_b) is uniform and symmetric in the pair: one value per edge.
        width = lo_w + (hi_w - lo_w) * torch.frac(w0 + torch.gather(u_w, 1, ij))
        keep = torch.frac(k0 + torch.gather(u_k, 1, ij)) >= drop
        # Distance to the bisector of sites 0 and j is (d_j^2 - d_0^2) / (2 |s_0 - s_j|).
        fg |= (d2[..., j] - d2[..., 0] <= width * sep.clamp(min=1e-6)) & keep
    cy = col([p["nucleus_center_yx"][0] for p in ps])
    cx = col([p["nucleus_center_yx"][1] for p in ps])
    r = torch.hypot(qf[..., 0] - cy, qf[..., 1] - cx)
    in_view = col([float(p["nucleus_in_view"]) for p in ps]) > 0
    radius = col([p["nucleus_radius_px"] for p in ps])
    env = col([p["tubule_width_mean_px"] / 2 for p in ps])
    nucleus = torch.where(in_view, (fg & (r > radius)) | ((r - radius).abs() <= env), fg)
    cell = col([math.inf if p["cell_radius_px"] is None else p["cell_radius_px"] for p in ps])
    return (nucleus & (r <= cell)).reshape(b, size, size)


# ----------------------------------------------------------------------------- stamping


def _patches(size: int, row: Tensor, cy: Tensor, cx: Tensor, half: Tensor, ratio_fn: Any) -> Any:
    """Yield ``(flat index, ratio, member)`` per chunk of shapes, over each shape's patch.

    Shape ``m`` covers the patch of side ``2 half[m] + 1`` around its centre
    ``(cy[m], cx[m])`` (continuous coordinates, pixel ``i`` spans ``[i, i + 1)``) in row
    ``row[m]``; ``ratio_fn(members, dy, dx)`` gives the normalised radius (<= 1 inside) of
    shapes ``members`` (an index tensor) at the offsets ``dy, dx`` ``(M, P, P)`` of the pixel
    centres. Shapes are processed by increasing size, each chunk with the patch of its
    largest (small nuclei do not pay for large ones). Only pixels inside a shape and inside
    the image are yielded; ``member`` is the shape index of each.
    """
    order = torch.argsort(half, stable=True)
    values, counts = torch.unique_consecutive(half[order], return_counts=True)
    chunks = []
    start = 0
    for h, n in zip(values.tolist(), counts.tolist(), strict=True):
        # Chunks of one patch size whose patches hold ~2M pixels (~50 MB transient).
        step = max(1, (1 << 21) // (2 * h + 1) ** 2)
        chunks += [(h, order[i : min(i + step, start + n)]) for i in range(start, start + n, step)]
        start += n
    for h, members in chunks:
        off = torch.arange(-h, h + 1, device=row.device)
        iy = torch.floor(cy[members]).long()[:, None, None] + off[None, :, None]
        ix = torch.floor(cx[members]).long()[:, None, None] + off[None, None, :]
        dy = iy.float() + 0.5 - cy[members, None, None]
        dx = ix.float() + 0.5 - cx[members, None, None]
        ratio = ratio_fn(members, dy, dx)
        inside = (ratio <= 1) & (iy >= 0) & (iy < size) & (ix >= 0) & (ix < size)
        sel = torch.nonzero(inside.reshape(-1)).flatten()
        flat = ((row[members, None, None] * size + iy) * size + ix).reshape(-1)[sel]
        yield flat, ratio.reshape(-1)[sel], members[sel // (2 * h + 1) ** 2]


def _stamp_union(batch: int, size: int, *args: Any) -> Tensor:
    """``(B, size, size)`` bool union of the shapes (arguments as :func:`_patches`)."""
    out = torch.zeros(batch * size * size, dtype=torch.bool, device=args[0].device)
    for flat, _, _ in _patches(size, *args):
        out[flat] = True
    return out.reshape(batch, size, size)


def _stamp_labels(batch: int, size: int, label: Tensor, *args: Any) -> Tensor:
    """``(B, size, size)`` int64 labels (0 = none) of the shapes (arguments as :func:`_patches`).

    Where shapes overlap, the least normalised radius wins: overlapping shapes are split
    along their curve of equal normalised radius.
    """
    sentinel = torch.iinfo(torch.int64).max
    keys = torch.full((batch * size * size,), sentinel, dtype=torch.int64, device=label.device)
    for flat, ratio, member in _patches(size, *args):
        # One int64 key per pixel and shape: quantised ratio in the high bits, label low.
        key = ((ratio.clamp(0, 1) * (1 << 20)).long() << 32) | label[member]
        keys.scatter_reduce_(0, flat, key, reduce="amin")
    hit = keys != sentinel
    out = torch.where(hit, keys & 0xFFFFFFFF, torch.zeros_like(keys))
    return out.reshape(batch, size, size)


# ----------------------------------------------------------------------------- mitochondria


def _walk(
    dr: _Draws, y0: float, x0: float, theta0: float, length: float, curv: float, mem: float
) -> np.ndarray:
    """Points (n, 2) every 1 px of a walk whose curvature is a smooth AR(1) random process."""
    n = max(1, int(round(length)) + 1)
    rho = math.exp(-1.0 / mem)
    eps = dr.normals(n) * curv
    # AR(1) kappa_t = rho kappa_{t-1} + sqrt(1 - rho^2) eps_t, stationary from t = 0.
    kappa = np.convolve(eps, rho ** np.arange(n))[:n] * math.sqrt(1 - rho * rho)
    kappa += eps[0] * rho ** np.arange(n) * (1 - math.sqrt(1 - rho * rho))
    theta = theta0 + np.cumsum(kappa) - kappa[0]
    y = y0 + np.concatenate([[0.0], np.cumsum(np.sin(theta[:-1]))])
    x = x0 + np.concatenate([[0.0], np.cumsum(np.cos(theta[:-1]))])
    return np.stack([y, x], 1)


@lru_cache(maxsize=256)
def _disc_offsets(r20: int) -> np.ndarray:
    """Integer offsets within radius ``r20 / 20`` px (cached per 0.05 px of radius)."""
    r = r20 / 20
    k = int(math.ceil(r))
    a = np.arange(-k, k + 1)
    dy, dx = np.meshgrid(a, a, indexing="ij")
    sel = dy**2 + dx**2 <= r * r
    return np.stack([dy[sel], dx[sel]], 1)


def _footprint(path: np.ndarray, r: float, size: int) -> np.ndarray:
    """Flat indices of the pixels within ``r`` of the path's pixels (clipped to the image)."""
    cells = np.floor(path).astype(np.int64)
    offs = _disc_offsets(int(math.ceil(r * 20)))
    fy = (cells[:, :1] + offs[None, :, 0]).ravel()
    fx = (cells[:, 1:] + offs[None, :, 1]).ravel()
    ok = (fy >= 0) & (fy < size) & (fx >= 0) & (fx < size)
    return fy[ok] * size + fx[ok]


def _mito_layout(seed: int, size: int, s: MitoSettings) -> dict[str, Any]:
    """Centre-line points, radii and object ids of one image of mitochondria."""
    dr = _Draws(seed)
    target = dr.u(*s.foreground_fraction)
    w_mean = dr.u(*s.mean_width_px)
    frag = dr.u(*s.fragment_fraction)
    punct = dr.u(*s.punctum_share)
    branch = dr.u(*s.branch_prob)
    empty = dr.u(*s.empty_fraction)
    # Cytoplasm: a smooth random field thresholded at its ``empty`` quantile (coarse grid).
    nodes = torch.from_numpy(dr.normals(25)).reshape(1, 1, 5, 5)
    field = F.interpolate(nodes, size=(64, 64), mode="bicubic", align_corners=True)[0, 0]
    cyto = (field >= torch.quantile(field.flatten(), empty)).numpy()
    occ = np.zeros(size * size, dtype=bool)  # placed objects (for the no-overlap rule)
    pts: list[np.ndarray] = []
    radii: list[np.ndarray] = []
    ids: list[np.ndarray] = []
    kinds = {"tubule": 0, "branched": 0, "rod": 0, "punctum": 0}
    covered = 0
    goal = target * size * size
    attempts = 0
    mem = s.curvature_memory_px
    while covered < goal and attempts < s.max_attempts:
        attempts += 1
        w = min(max(w_mean * dr.u(0.8, 1.2), s.width_px[0]), s.width_px[1])
        y0, x0 = dr.u(-10, size + 10), dr.u(-10, size + 10)
        theta = dr.u(0, 2 * math.pi)
        kind_u = dr.u()
        if not cyto[min(max(int(y0 * 64 / size), 0), 63), min(max(int(x0 * 64 / size), 0), 63)]:
            continue
        if kind_u < frag * punct:
            kind = "punctum"
            r = w / 2 * dr.u(*s.punctum_diameter_factor)
            path = np.array([[y0, x0]])
        elif kind_u < frag:
            kind = "rod"
            r = w / 2
            path = _walk(dr, y0, x0, theta, w * dr.u(*s.rod_aspect) - w, 0.02, mem)
        else:
            kind = "tubule"
            r = w / 2
            length = dr.logu(*s.tubule_length_px)
            curv = dr.u(*s.curvature_rad_per_px)
            path = _walk(dr, y0, x0, theta, length, curv, mem)
            if dr.u() < branch:
                kind = "branched"
                parts = [path]
                for _ in range(1 + int(dr.u() < 0.3)):
                    at = path[int(dr.u(0.2, 0.8) * (len(path) - 1))]
                    dirv = path[-1] - path[0]
                    side = 1 if dr.u() < 0.5 else -1
                    angle = math.atan2(dirv[0], dirv[1]) + side * math.radians(dr.u(40, 90))
                    blen = length * dr.u(*s.branch_length_factor)
                    parts.append(_walk(dr, at[0], at[1], angle, blen, curv, mem))
                path = np.concatenate(parts)
        # Footprint check against already placed objects, widened by the gap.
        if occ[_footprint(path, r + s.gap_px, size)].any():
            continue
        own = _footprint(path, r, size)
        if own.size == 0:
            continue
        before = np.count_nonzero(occ)
        occ[own] = True
        covered += np.count_nonzero(occ) - before
        kinds[kind] += 1
        pts.append(path)
        radii.append(np.full(len(path), r))
        ids.append(np.full(len(path), len(pts)))
    if not pts:  # a field too small to fit one object: a punctum at the centre
        pts, radii, ids = [np.array([[size / 2, size / 2]])], [np.array([w_mean / 2])], [np.ones(1)]
        kinds["punctum"] += 1
    return {
        "points": np.concatenate(pts),
        "radii": np.concatenate(radii),
        "ids": np.concatenate(ids).astype(np.int64),
        "params": {
            "target_foreground_fraction": _r(target),
            "mean_width_px": _r(w_mean),
            "fragment_fraction": _r(frag),
            "punctum_share": _r(punct),
            "branch_prob": _r(branch),
            "empty_fraction": _r(empty),
            "objects": int(sum(kinds.values())),
            **{f"n_{k}": v for k, v in kinds.items()},
        },
    }


def _mito(
    seeds: list[int], size: int, s: MitoSettings, device: torch.device
) -> tuple[Tensor, None, list[dict[str, Any]]]:
    layouts = [_mito_layout(sd, size, s) for sd in seeds]
    row = torch.cat([torch.full((len(lay["points"]),), i) for i, lay in enumerate(layouts)])
    pts = torch.from_numpy(np.concatenate([lay["points"] for lay in layouts])).float()
    rad = torch.from_numpy(np.concatenate([lay["radii"] for lay in layouts])).float()
    row, pts, rad = row.to(device), pts.to(device), rad.to(device)
    half = torch.ceil(rad).long() + 1

    def ratio(sl: Tensor, dy: Tensor, dx: Tensor) -> Tensor:
        return torch.sqrt(dy * dy + dx * dx) / rad[sl, None, None]

    fg = _stamp_union(len(layouts), size, row, pts[:, 0], pts[:, 1], half, ratio)
    return fg[:, None], None, [lay["params"] for lay in layouts]


# ----------------------------------------------------------------------------- nuclei


# Harmonic k of a nucleus outline has sd irregularity * (2 / k)^2: lobes, not stars.
_HARMONIC_DECAY = (2.0 / np.arange(2, 6)) ** 2


def _nucleus_layout(seed: int, size: int, s: NucleusSettings) -> dict[str, Any]:
    """Centres, semi-axes, orientations and harmonics of the nuclei of one image."""
    dr = _Draws(seed)
    dmed = dr.logu(*s.median_diameter_px)
    cv = dr.u(*s.diameter_cv)
    cover = s.coverage_at_18px * (dmed / 18.0) ** s.coverage_slope
    cover = float(np.clip(cover * math.exp(s.coverage_log_sd * dr.n()), *s.coverage_range))
    excess = dr.u(*s.aspect_mean_excess)
    irr = dr.u(*s.irregularity)
    clus = dr.u(*s.cluster_fraction)
    spread = dr.u(*s.cluster_spread_diameters) * dmed
    sig = math.sqrt(math.log(1 + cv * cv))
    mean_area = math.pi / 4 * dmed**2 * math.exp(2 * sig * sig)  # E[d^2] of a lognormal d
    n_target = max(1, int(round(cover * size * size / mean_area)))
    n_parents = max(1, int(round(n_target / dr.u(3, 8))))
    parents = [(dr.u(0, size), dr.u(0, size)) for _ in range(n_parents)]
    cy_l: list[float] = []
    cx_l: list[float] = []
    req: list[float] = []
    nuc: list[list[float]] = []
    for _ in range(n_target * s.max_attempts_per_nucleus):
        if len(nuc) >= n_target:
            break
        r_eq = dmed * math.exp(sig * dr.n()) / 2
        if dr.u() < clus:
            py, px = parents[int(dr.u() * n_parents) % n_parents]
            cy, cx = py + dr.n() * spread, px + dr.n() * spread
        else:
            cy, cx = dr.u(0, size), dr.u(0, size)
        aspect = min(s.max_aspect, 1 - math.log(1 - dr.u()) * excess)
        phi = dr.u(0, math.pi)
        harm = (dr.normals(4) * irr * _HARMONIC_DECAY).tolist()
        phase = [dr.u(0, 2 * math.pi) for _ in range(4)]
        lim = r_eq / 4  # centres up to a quarter radius outside: cut nuclei, never empty
        if not (-lim <= cy <= size + lim and -lim <= cx <= size + lim):
            continue
        if nuc:
            dist = np.hypot(np.asarray(cy_l) - cy, np.asarray(cx_l) - cx)
            if (dist < s.min_distance_factor * (np.asarray(req) + r_eq)).any():
                continue
        cy_l.append(cy)
        cx_l.append(cx)
        req.append(r_eq)
        a, b = r_eq * math.sqrt(aspect), r_eq / math.sqrt(aspect)
        nuc.append([cy, cx, a, b, phi, *harm, *phase])
    return {
        "nuclei": np.asarray(nuc, dtype=np.float64),
        "params": {
            "median_diameter_px": _r(dmed),
            "diameter_cv": _r(cv),
            "target_foreground_fraction": _r(cover),
            "aspect_mean_excess": _r(excess),
            "irregularity": _r(irr),
            "cluster_fraction": _r(clus),
            "cluster_spread_px": _r(spread),
            "nuclei_target": int(n_target),
            "nuclei_placed": len(nuc),
        },
    }


def _nuclei(
    seeds: list[int], size: int, s: NucleusSettings, device: torch.device
) -> tuple[Tensor, Tensor, list[dict[str, Any]]]:
    layouts = [_nucleus_layout(sd, size, s) for sd in seeds]
    row = torch.cat([torch.full((len(lay["nuclei"]),), i) for i, lay in enumerate(layouts)])
    nuc = torch.from_numpy(np.concatenate([lay["nuclei"] for lay in layouts])).float()
    lab = torch.cat([torch.arange(1, len(lay["nuclei"]) + 1) for lay in layouts])
    row, nuc, lab = row.to(device), nuc.to(device), lab.to(device)
    cy, cx, a, b, phi = nuc[:, 0], nuc[:, 1], nuc[:, 2], nuc[:, 3], nuc[:, 4]
    harm, phase = nuc[:, 5:9], nuc[:, 9:13]
    # Largest radius: the semi-major axis times the largest harmonic factor.
    half = torch.ceil(a * (1 + harm.abs().sum(1))).long() + 2

    def ratio(sl: Tensor, dy: Tensor, dx: Tensor) -> Tensor:
        t = torch.atan2(dy, dx)
        rel = t - phi[sl, None, None]
        ca, cb = a[sl, None, None], b[sl, None, None]
        r_ell = ca * cb / torch.sqrt((cb * torch.cos(rel)) ** 2 + (ca * torch.sin(rel)) ** 2)
        wave = torch.zeros_like(t)
        for j in range(4):  # harmonics k = 2..5, one (M, P, P) pass each
            wave += harm[sl, j, None, None] * torch.cos((j + 2) * t + phase[sl, j, None, None])
        return torch.sqrt(dy * dy + dx * dx) / (r_ell * (1 + wave))

    labels = _stamp_labels(len(layouts), size, lab, row, cy, cx, half, ratio)
    inst = torch.zeros_like(labels, dtype=torch.int32)
    params = []
    for i, lay in enumerate(layouts):
        # Consecutive labels 1..N over the nuclei that are visible in the field.
        present = torch.bincount(labels[i].flatten(), minlength=len(lay["nuclei"]) + 1) > 0
        present[0] = False
        lut = torch.cumsum(present, 0) * present
        inst[i] = lut[labels[i]].to(torch.int32)
        p = dict(lay["params"])
        p["n_instances"] = int(present.sum())
        params.append(p)
    return (inst > 0)[:, None], inst[:, None], params


def settings_dict(structure: str) -> dict[str, Any]:
    """The settings table of ``structure`` as a JSON-serialisable dict (for dataset cards)."""
    if structure not in STRUCTURES:
        raise ValueError(f"structure must be one of {STRUCTURES}. Got {structure!r}")
    return asdict(MASK_SETTINGS[structure])

"""Procedural ER networks: the settings :class:`ERSettings` and the generator.

The Voronoi diagram of a hard-core point process is a planar network whose vertices have
degree three almost surely, like the three-way junctions of the peripheral ER; its cells are
the polygonal loops. Site density rises towards the nucleus (perinuclear ER is denser), a
smooth displacement field bends the tubules, a few edges are dropped (larger loops, free
ends) and a few small cells near the nucleus are filled (small sheets). Tubules are drawn at
their exact distance from the cell bisector.

Streams of :mod:`synthesis.rng` used here: :data:`streams.ER_WARP` (the displacement field
that bends ER tubules). All other draws come from the per-row generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from synthesis.groundtruth.masks.common import Range, _Draws, _r, _smooth_field
from synthesis.rng import streams


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


# ----------------------------------------------------------------------------- layout


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


def _er(
    seeds: list[int], seeds_t: Tensor, size: int, s: ERSettings
) -> tuple[Tensor, None, list[dict[str, Any]]]:
    device = seeds_t.device
    layouts = [_er_layout(sd, size, s) for sd in seeds]
    warp = _smooth_field(seeds_t, streams.ER_WARP, size, s.warp_cells)
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

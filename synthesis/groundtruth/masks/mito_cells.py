"""Procedural mitochondria in cells (``--mito-masks cells``): :class:`MitoCellsSettings` and
the generator.

Mito-C's other generator (:mod:`.mito`, ``worms``, the default) spreads unbranched worms
evenly over the tile. Real fields (``shared/data/mito-fluorescence``) show cells: networks
packed around a dark nucleus, thinning towards the cell's edge, and empty space between
cells. This generator draws that layout, at Mito-C's stated pixel size
(:data:`synthesis.levels.PIXEL_SIZE_UM`, 0.085 um/px), in four steps per tile:

1. **Cells**: one, two or three star-shaped outlines (a disc whose log-radius carries
   harmonics 2-4), each around an elliptical nucleus. The first cell's centre lies inside the
   tile, the others' anywhere up to a third of a tile outside it, apart from the cells
   already drawn: a tile often shows part of a cell, and the space between cells is empty.
2. **Density**: in a cell's cytoplasm (inside the outline, outside every nucleus), the
   coverage goal is ``coverage_at_nucleus x exp(-d / decay) x polarity x edge``, with
   ``d`` the distance from the nuclear envelope, ``polarity`` a smooth angular modulation
   around the nucleus (mitochondria gathered on one side) and ``edge`` a ramp to zero at the
   cell outline. The goal is summed over blocks of ``block_px``; a block whose goal is under
   one object (``object_area_px``) gets one object's worth or nothing (randomised
   rounding). Objects start in blocks drawn in proportion to their remaining goal, until
   every block is full or has refused ``block_fails`` objects in a row (it is as full as
   the rules allow), or after ``max_attempts``: the coverage follows the density locally,
   and a saturated region near the nucleus does not push its shortfall outwards.
3. **Tubules**: persistent random walks (:func:`.mito._walk`), started in the blocks so
   drawn or, with probability ``branch_start``, growing sideways from a tubule already
   placed (a Y or T junction). A walk stops when it would leave the cytoplasm, or when it
   comes within ``gap_px`` of another tubule: there it **fuses** (runs on into it: a
   junction, and near the nucleus a closed mesh) with a probability rising from
   ``fuse_far`` to ``fuse_near`` with the density, or else ends short of it (a free end).
   Widths vary between objects (``object_width_factor`` around the tile's mean) and
   smoothly along each (log-normal, ``width_along_sd``, correlation ``width_memory_px``).
4. **Fragments**: short rods and round puncta (a share ``fragment_fraction`` of the
   attempts), started in the same blocks, placed without touching anything.

Masks are rasterised on the CPU as the layout is drawn (discs of each centre-line point's
radius around its pixel, as :func:`.mito._footprint` does), so the mask does not depend on
the device. Instance labels are the mask's 8-connected components (a fused network is one
object). All draws come from the per-row generator (:class:`.common._Draws`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor

from synthesis.groundtruth.masks.common import Range, _Draws, _r
from synthesis.groundtruth.masks.mito import _walk
from synthesis.levels import PIXEL_SIZE_UM


@dataclass(frozen=True)
class MitoCellsSettings:
    """Mitochondria in cells, sized for Mito-C's stated pixel size of **0.085 um/px**
    (:data:`synthesis.levels.PIXEL_SIZE_UM`; lengths in um are converted with it, the rest
    are in pixels).

    Nuclei 7.5-11.5 um across (88-135 px; the HCS field's, resampled to 0.085 um/px, are
    about 100-130 px), cells 1.6-2.6 nuclear diameters (14-40 um, 165-470 px), so a 256 px
    tile (21.8 um) often shows part of a cell. Tubules 3-7 px wide (0.26-0.6 um; tile means
    3.3-4.8 px), growing 20-100 px (1.7-8.5 um) before they stop or fuse. The density falls
    with the distance from the nuclear envelope with an e-folding length of 2.5-6 um.
    """

    pixel_size_um: float = PIXEL_SIZE_UM["mito"]
    cell_count_probs: tuple[float, float, float] = (0.5, 0.35, 0.15)  # 1, 2, 3 cells
    nucleus_diameter_um: Range = (7.5, 11.5)  # mean of the two axes
    nucleus_aspect: Range = (1.0, 1.4)
    cell_to_nucleus: Range = (1.6, 2.6)  # cell diameter / nucleus diameter
    cell_diameter_um: Range = (14.0, 40.0)  # bounds of the cell diameter
    cell_harmonics: tuple[float, ...] = (0.35, 0.2, 0.1)  # max amplitudes, k = 2, 3, 4
    nucleus_offset: Range = (0.0, 0.35)  # nucleus centre from the cell centre / cell radius
    cell_spacing: float = 0.95  # other cells' centres >= this * (R_i + R_j) apart
    decay_um: Range = (2.5, 6.0)  # e-folding distance of the density from the nucleus
    polarity: Range = (0.0, 1.0)  # amplitude of the angular modulation (log scale)
    edge_ramp_px: float = 10.0  # the density ramps to 0 over this distance to the outline
    coverage_at_nucleus: Range = (0.6, 0.9)  # coverage goal at the nuclear envelope
    mean_width_px: Range = (3.3, 4.8)  # per tile
    width_px: Range = (3.0, 7.0)
    object_width_factor: Range = (0.8, 1.25)
    width_along_sd: Range = (0.05, 0.2)  # log-sd of the width along a tubule
    width_memory_px: float = 8.0
    tubule_length_px: Range = (20.0, 100.0)  # log-uniform
    curvature_rad_per_px: Range = (0.04, 0.12)  # rms of the smoothly varying curvature
    curvature_memory_px: float = 5.0
    branch_start: Range = (0.4, 0.7)  # share of tubules grown from one already placed
    branch_angle_deg: Range = (40.0, 100.0)
    fuse_near: Range = (0.8, 1.0)  # probability a tubule meeting another fuses, at density 1
    fuse_far: Range = (0.2, 0.5)  # ... at density 0
    fragment_fraction: Range = (0.05, 0.3)  # per tile: rods + puncta among objects
    punctum_share: Range = (0.3, 0.6)  # puncta among fragments
    rod_aspect: Range = (1.8, 4.0)  # rod length / width
    punctum_diameter_factor: Range = (1.0, 1.5)  # punctum diameter / width
    gap_px: float = 1.0  # minimum distance between objects that do not fuse
    grid_px: int = 4  # cell of the density grid
    block_px: int = 16  # blocks whose coverage follows the density
    block_fails: int = 6  # consecutive refusals that close a block
    object_area_px: float = 150.0  # typical area of one object (rounding of block goals)
    max_attempts: int = 1500


#: Radius bounds (px) of a centre-line point (widths 3-7 px).
_R_MIN, _R_MAX = 1.5, 3.5


# ----------------------------------------------------------------------------- geometry


@lru_cache(maxsize=64)
def _disc_table(r20: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer offsets ``dy, dx`` within radius ``r20 / 20`` px and their squared lengths."""
    r = r20 / 20
    k = int(math.ceil(r))
    a = np.arange(-k, k + 1)
    dy, dx = np.meshgrid(a, a, indexing="ij")
    d2 = dy**2 + dx**2
    sel = d2 <= r * r
    return dy[sel], dx[sel], d2[sel]


def _footprints(path: np.ndarray, radii: np.ndarray, size: int) -> np.ndarray:
    """``(n, m)`` flat indices of the pixels within each point's radius of its pixel (as
    :func:`.mito._footprint`, per point), ``size * size`` (a pixel that is never set) for
    offsets outside the point's disc or the image."""
    dy, dx, d2 = _disc_table(int(math.ceil(float(radii.max()) * 20)))
    cells = np.floor(path).astype(np.int64)
    fy = cells[:, :1] + dy[None]
    fx = cells[:, 1:] + dx[None]
    ok = (d2[None] <= (radii * radii)[:, None]) & (fy >= 0) & (fy < size) & (fx >= 0) & (fx < size)
    return np.where(ok, fy * size + fx, size * size)


def _ar1(dr: _Draws, n: int, mem: float) -> np.ndarray:
    """A stationary unit-variance AR(1) sequence of correlation length ``mem`` (as the
    curvature of :func:`.mito._walk`)."""
    rho = math.exp(-1.0 / mem)
    eps = dr.normals(n)
    c = math.sqrt(1 - rho * rho)
    x = np.convolve(eps, rho ** np.arange(n))[:n] * c
    return x + eps[0] * rho ** np.arange(n) * (1 - c)


def _cell_radius(c: dict[str, Any], theta: np.ndarray) -> np.ndarray:
    wave = sum(
        a * np.cos(k * (theta - p))
        for k, a, p in zip((2, 3, 4), c["amps"], c["phases"], strict=True)
    )
    return c["R"] * np.exp(wave)


def _nucleus_rho(c: dict[str, Any], y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Normalised radius of the nucleus ellipse (1 on the envelope)."""
    dy, dx = y - c["ny"], x - c["nx"]
    cp, sp = math.cos(c["nphi"]), math.sin(c["nphi"])
    u, v = dx * cp + dy * sp, -dx * sp + dy * cp
    return np.sqrt((u / c["na"]) ** 2 + (v / c["nb"]) ** 2)


def _field(
    cells: list[dict[str, Any]], y: np.ndarray, x: np.ndarray, margin: np.ndarray | float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """(density, valid) at points ``y, x``: valid where a disc of radius ``margin`` lies in
    some cell's cytoplasm (inside its outline, outside every nucleus); the density as the
    module docstring defines it (0 where not valid)."""
    dens = np.zeros(np.shape(y))
    inside = np.zeros(np.shape(y), dtype=bool)
    in_nucleus = np.zeros(np.shape(y), dtype=bool)
    for c in cells:
        # (rho - 1) * minor semi-axis: a lower bound of the distance outside the ellipse.
        d_nuc = (_nucleus_rho(c, y, x) - 1) * c["nb"]
        in_nucleus |= d_nuc < margin
        dy, dx = y - c["cy"], x - c["cx"]
        edge = _cell_radius(c, np.arctan2(dy, dx)) - np.hypot(dy, dx)
        mine = edge >= margin
        tn = np.arctan2(y - c["ny"], x - c["nx"])
        d = np.exp(-np.maximum(d_nuc, 0) / c["lam"]) * np.exp(
            c["pol"] * (np.cos(tn - c["pol_t"]) - 1)
        )
        d = d * np.clip(edge / c["ramp"], 0, 1)
        dens = np.where(mine, np.maximum(dens, d), dens)
        inside |= mine
    valid = inside & ~in_nucleus
    return np.where(valid, dens, 0.0), valid


def _draw_cell(
    dr: _Draws, size: int, s: MitoCellsSettings, placed: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """One cell (outline, nucleus, density shape); None if no place apart from ``placed``."""
    px = 1.0 / s.pixel_size_um
    dn = dr.u(*s.nucleus_diameter_um) * px
    aspect = dr.u(*s.nucleus_aspect)
    na, nb = dn / 2 * math.sqrt(aspect), dn / 2 / math.sqrt(aspect)
    nphi = dr.u(0, math.pi)
    dc = dn * dr.u(*s.cell_to_nucleus)
    dc = min(max(dc, s.cell_diameter_um[0] * px), s.cell_diameter_um[1] * px)
    amps = [dr.u(0, a) for a in s.cell_harmonics]
    phases = [dr.u(0, 2 * math.pi) for _ in s.cell_harmonics]
    off = dr.u(*s.nucleus_offset)
    off_t = dr.u(0, 2 * math.pi)
    c: dict[str, Any] = {
        "R": dc / 2,
        "amps": amps,
        "phases": phases,
        "na": na,
        "nb": nb,
        "nphi": nphi,
        "lam": dr.u(*s.decay_um) * px,
        "pol": dr.u(*s.polarity),
        "pol_t": dr.u(0, 2 * math.pi),
        "ramp": s.edge_ramp_px,
    }
    for _ in range(30):
        if not placed:
            cy, cx = dr.u(0.1, 0.9) * size, dr.u(0.1, 0.9) * size
        else:
            cy, cx = dr.u(-0.35, 1.35) * size, dr.u(-0.35, 1.35) * size
            if any(
                math.hypot(cy - o["cy"], cx - o["cx"]) < s.cell_spacing * (c["R"] + o["R"])
                for o in placed
            ):
                continue
            # Seen in the tile: its outline reaches into it.
            ny_, nx_ = min(max(cy, 0), size), min(max(cx, 0), size)
            if math.hypot(cy - ny_, cx - nx_) > 0.8 * c["R"]:
                continue
        break
    else:
        return None
    c["cy"], c["cx"] = cy, cx
    # The nucleus inside the outline, with a rim of cytoplasm: offset shrunk, else cell grown.
    t = np.linspace(0, 2 * math.pi, 72, endpoint=False)
    cp, sp = math.cos(nphi), math.sin(nphi)
    ex, ey = na * np.cos(t), nb * np.sin(t)
    for _ in range(20):
        for shrink in (1.0, 0.5, 0.0):
            ny_ = cy + shrink * off * c["R"] * math.sin(off_t)
            nx_ = cx + shrink * off * c["R"] * math.cos(off_t)
            by, bx = ny_ + ex * sp + ey * cp, nx_ + ex * cp - ey * sp
            r_out = _cell_radius(c, np.arctan2(by - cy, bx - cx))
            if (np.hypot(by - cy, bx - cx) <= r_out - 0.08 * c["R"] - 6).all():
                break
        else:
            c["R"] *= 1.1
            continue
        break
    c["ny"], c["nx"] = ny_, nx_
    return c


def _grow(
    dr: _Draws,
    path: np.ndarray,
    radii: np.ndarray,
    is_branch: bool,
    cells: list[dict[str, Any]],
    occ: np.ndarray,
    size: int,
    s: MitoCellsSettings,
    fuse_near: float,
    fuse_far: float,
    w: float,
) -> tuple[tuple[np.ndarray, np.ndarray] | None, bool]:
    """The part of a tubule's walk that is placed, and whether it fused; (None, False) if
    none. It stops where it would leave the cytoplasm, or where it comes within ``gap_px``
    of an object: there it fuses (runs on into it) with a probability rising with the
    density, else it ends short of it. A branch starts on its parent: contacts count once
    it is clear of it."""
    gap = s.gap_px
    dens, ok = _field(cells, path[:, 0], path[:, 1], radii + 1)
    hit = occ[_footprints(path, radii + gap, size)].any(1)
    if is_branch:
        clear = np.flatnonzero(~hit)
        if clear.size == 0 or clear[0] > 2 * radii[0] + 6 or not ok[: clear[0] + 1].all():
            return None, False
        start = int(clear[0])
    else:
        if hit[0] or not ok[0]:
            return None, False
        start = 0
    stops = np.flatnonzero((hit | ~ok)[start:])
    end = len(path) if stops.size == 0 else start + int(stops[0])
    fused = False
    if end < len(path) and ok[end]:  # it met another object
        if dr.u() < fuse_far + (fuse_near - fuse_far) * float(dens[end]):
            tail = slice(end, min(len(path), end + int(math.ceil(gap)) + 4))
            reach = np.flatnonzero(occ[_footprints(path[tail], radii[tail], size)].any(1))
            if reach.size and ok[tail][: reach[0] + 1].all():
                end += int(reach[0]) + 1
                fused = True
    if end - start < 2 * w:
        return None, False
    return (path[:end], radii[:end]), fused


# ----------------------------------------------------------------------------- layout


def _cells_layout(seed: int, size: int, s: MitoCellsSettings) -> dict[str, Any]:
    """The mask (``(size, size)`` bool) and params of one tile of mitochondria in cells."""
    dr = _Draws(seed)
    u = dr.u()
    p1, p2, _ = s.cell_count_probs
    n_cells = 1 if u < p1 else 2 if u < p1 + p2 else 3
    w_mean = dr.u(*s.mean_width_px)
    frag = dr.u(*s.fragment_fraction)
    punct = dr.u(*s.punctum_share)
    branch = dr.u(*s.branch_start)
    fuse_near = dr.u(*s.fuse_near)
    fuse_far = dr.u(*s.fuse_far)
    cover = dr.u(*s.coverage_at_nucleus)
    along = dr.u(*s.width_along_sd)
    curv = dr.u(*s.curvature_rad_per_px)
    cells: list[dict[str, Any]] = []
    for _ in range(n_cells):
        c = _draw_cell(dr, size, s, cells)
        if c is not None:
            cells.append(c)

    # The density on a coarse grid, summed per block: each block's coverage goal. Seeds are
    # drawn from the blocks' remaining capacity, so the coverage follows the density
    # locally (a block that keeps refusing objects is closed: it is as full as it gets).
    g, bs = s.grid_px, s.block_px
    n_g, n_b = -(-size // g), -(-size // bs)
    centres = (np.arange(n_g) + 0.5) * g
    gy, gx = np.meshgrid(centres, centres, indexing="ij")
    dens, _ = _field(cells, gy, gx)
    inside_tile = np.minimum(size - (gy - g / 2), g) * np.minimum(size - (gx - g / 2), g)
    grid_block = ((gy // bs) * n_b + gx // bs).astype(np.int64).ravel()
    target = cover * np.bincount(grid_block, (dens * inside_tile).ravel(), minlength=n_b * n_b)
    # A block whose goal is under one object's area gets one object's worth or nothing
    # (randomised rounding): else every sparse block would get a whole object.
    small = np.flatnonzero((target > 0) & (target < s.object_area_px))
    draws = np.array([dr.u() for _ in small])
    target[small] = np.where(draws * s.object_area_px < target[small], s.object_area_px, 0.0)
    goal = float(target.sum())
    done = np.zeros(n_b * n_b)
    fails = np.zeros(n_b * n_b, dtype=np.int64)
    rows = np.arange(size) // bs
    pixel_block = (rows[:, None] * n_b + rows[None, :]).ravel()

    def block_of(y: float, x: float) -> int:
        return int(min(max(y, 0), size - 1) // bs) * n_b + int(min(max(x, 0), size - 1) // bs)

    def seed_point() -> tuple[float, float]:
        cum = np.cumsum(np.maximum(target - done, 0))
        k = min(int(np.searchsorted(cum, dr.u() * cum[-1], side="right")), cum.size - 1)
        by, bx = divmod(k, n_b)
        return min((by + dr.u()) * bs, size - 1e-6), min((bx + dr.u()) * bs, size - 1e-6)

    never = size * size
    occ = np.zeros(never + 1, dtype=bool)  # the last entry stands for "no pixel": never set
    tub_pts = np.zeros((0, 2))
    tub_dir = np.zeros(0)
    kinds = {"tubule": 0, "branch": 0, "rod": 0, "punctum": 0}
    fused = 0
    attempts = 0
    mem = s.curvature_memory_px
    gap = s.gap_px
    while goal > 0 and (target - done).clip(0).sum() > 0 and attempts < s.max_attempts:
        attempts += 1
        w = min(max(w_mean * dr.u(*s.object_width_factor), s.width_px[0]), s.width_px[1])
        r = min(max(w / 2, _R_MIN), _R_MAX)
        kind_u = dr.u()
        placed: tuple[np.ndarray, np.ndarray] | None = None
        did_fuse = False
        if kind_u < frag:  # a fragment: a rod or a punctum, touching nothing
            y0, x0 = seed_point()
            if kind_u < frag * punct:
                kind = "punctum"
                path = np.array([[y0, x0]])
                radii = np.array([min(r * dr.u(*s.punctum_diameter_factor), _R_MAX)])
            else:
                kind = "rod"
                theta = dr.u(0, 2 * math.pi)
                path = _walk(dr, y0, x0, theta, w * dr.u(*s.rod_aspect) - w, 0.02, mem)
                radii = np.full(len(path), r)
            _, ok = _field(cells, path[:, 0], path[:, 1], radii + 1)
            if ok.all() and not occ[_footprints(path, radii + gap, size)].any():
                placed = path, radii
        else:
            length = dr.logu(*s.tubule_length_px)
            is_branch = tub_pts.shape[0] > 0 and dr.u() < branch
            if is_branch:
                j = min(int(dr.u() * tub_pts.shape[0]), tub_pts.shape[0] - 1)
                y0, x0 = tub_pts[j]
                side = 1.0 if dr.u() < 0.5 else -1.0
                theta = tub_dir[j] + side * math.radians(dr.u(*s.branch_angle_deg))
            else:
                y0, x0 = seed_point()
                theta = dr.u(0, 2 * math.pi)
            kind = "branch" if is_branch else "tubule"
            if target[block_of(y0, x0)] > done[block_of(y0, x0)]:  # room left where it starts
                path = _walk(dr, y0, x0, theta, length, curv, mem)
                noise = _ar1(dr, len(path), s.width_memory_px)
                radii = np.clip(r * np.exp(along * noise), _R_MIN, _R_MAX)
                placed, did_fuse = _grow(
                    dr, path, radii, is_branch, cells, occ, size, s, fuse_near, fuse_far, w
                )
        b0 = block_of(y0, x0)
        if placed is None:
            fails[b0] += 1
            if fails[b0] >= s.block_fails:
                target[b0] = min(target[b0], done[b0])
            continue
        path, radii = placed
        own = np.unique(_footprints(path, radii, size))
        own = own[~occ[own]]
        if own.size == 0:
            continue
        fails[b0] = 0
        occ[own] = True
        occ[never] = False
        done += np.bincount(pixel_block[own[own < never]], minlength=n_b * n_b)
        kinds[kind] += 1
        fused += did_fuse
        if kind in ("tubule", "branch") and len(path) >= 2:
            step = np.gradient(path, axis=0)
            tub_pts = np.concatenate([tub_pts, path])
            tub_dir = np.concatenate([tub_dir, np.arctan2(step[:, 0], step[:, 1])])
    mask = occ[:never].reshape(size, size)
    if not mask.any():  # no cytoplasm to fill (a tile smaller than a nucleus): one punctum
        cy = cx = size // 2
        mask[max(cy - 1, 0) : cy + 2, max(cx - 1, 0) : cx + 2] = True
        kinds["punctum"] += 1
    return {
        "mask": mask,
        "cells": cells,
        "params": {
            "pixel_size_um": s.pixel_size_um,
            "cells": [
                {
                    "centre_yx": [_r(c["cy"]), _r(c["cx"])],
                    "radius_px": _r(c["R"]),
                    "outline_harmonics": [_r(a) for a in c["amps"]],
                    "outline_phases_rad": [_r(a) for a in c["phases"]],
                    "nucleus_centre_yx": [_r(c["ny"]), _r(c["nx"])],
                    "nucleus_semi_axes_px": [_r(c["na"]), _r(c["nb"])],
                    "nucleus_angle_rad": _r(c["nphi"]),
                    "decay_px": _r(c["lam"]),
                    "polarity": _r(c["pol"]),
                }
                for c in cells
            ],
            "target_foreground_fraction": _r(goal / (size * size)),
            "coverage_at_nucleus": _r(cover),
            "mean_width_px": _r(w_mean),
            "width_along_sd": _r(along),
            "curvature_rad_per_px": _r(curv),
            "fragment_fraction": _r(frag),
            "punctum_share": _r(punct),
            "branch_start": _r(branch),
            "fuse_near": _r(fuse_near),
            "fuse_far": _r(fuse_far),
            "objects": int(sum(kinds.values())),
            "fused": int(fused),
            "attempts": attempts,
            **{f"n_{k}": v for k, v in kinds.items()},
        },
    }


def _mito_cells(
    seeds: list[int], size: int, s: MitoCellsSettings, device: torch.device
) -> tuple[Tensor, Tensor, list[dict[str, Any]]]:
    """Masks ``(B, 1, size, size)`` bool, instance labels (8-connected components, int32)
    and per-row params; each row a function of its seed only."""
    from scipy import ndimage

    layouts = [_cells_layout(sd, size, s) for sd in seeds]
    masks = np.stack([lay["mask"] for lay in layouts])
    labels = np.zeros(masks.shape, dtype=np.int32)
    params = []
    for i, lay in enumerate(layouts):
        labels[i], n = ndimage.label(masks[i], structure=np.ones((3, 3), dtype=bool))
        params.append({**lay["params"], "n_instances": int(n)})
    mask = torch.from_numpy(masks)[:, None].to(device)
    inst = torch.from_numpy(labels)[:, None].to(device)
    return mask, inst, params

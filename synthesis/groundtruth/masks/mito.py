"""Procedural mitochondria: the settings :class:`MitoSettings` and the generator.

Persistent random walks with smoothly varying curvature, swept by a disc of the object's
width; some branched, some fragmented into short rods or round puncta, placed without
overlap inside a cytoplasm region. All draws come from the per-row generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from synthesis.groundtruth.masks.common import Range, _Draws, _r, _stamp_union


@dataclass(frozen=True)
class MitoSettings:
    """Mitochondria: tubules, branched tubules, short rods and puncta.

    Widths 3-7 px (0.26-0.6 um at Mito-C's stated 0.085 um/px,
    :data:`synthesis.levels.PIXEL_SIZE_UM`); tubule lengths 15-90 px (1.3-7.7 um). The
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

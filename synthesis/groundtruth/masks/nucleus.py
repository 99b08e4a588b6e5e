"""Procedural nuclei: the settings :class:`NucleusSettings` and the generator.

Star-shaped ellipses with low-order harmonic irregularity, sizes and coverage drawn from the
ranges measured on BBBC038 (``benchmarks/realism.py`` prints them), clustered or spread;
overlapping neighbours are split along the curve of equal normalised radius, so touching
nuclei stay separate instances. All draws come from the per-row generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from synthesis.groundtruth.masks.common import Range, _Draws, _r, _stamp_labels


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

"""Fit the physics renderer's background and haze ranges to real tiles (docs/definitions.md#renderer-fit).

A U-Net trained on renders segments real tiles well where they look like the renders; where
real tiles hold something the renders never show, it guesses. On BBBC038 the commonest such
thing is bright, diffuse, unlabelled light between the nuclei (tissue autofluorescence,
out-of-focus cells): a model that never saw it calls it nucleus. So the background and haze
ranges are fitted to what real tiles show, by code, on training tiles only:

1. **Statistics per tile**, offset-free and relative to the foreground (so they do not depend
   on gain or exposure): the tile's dark level ``d`` is the 2nd percentile of the smoothed
   background far from the mask (more than ``margin`` px away); ``f`` = mean foreground - d.
   Then ``(quantile of the smoothed far background - d) / f`` at 50, 95 and 99 %, and the
   mean of the ring 1-``margin`` px outside the mask (the halo), likewise.
2. **Distance** between real tiles and renders of the same masks: the mean, over the four
   statistics and the 5/25/50/75/95 % quantiles of each over tiles, of
   ``|log(q_render / q_real)|`` (each floored at 1e-3).
3. **Fit**: every candidate of a grid of ranges (``background_fraction``,
   ``background_variation``, ``haze_fraction``) renders the training masks with the same
   seeds; the candidate of least distance wins. Hand-written: a small grid search on a
   deterministic render, nothing a library does for us.

Smoothing (a ``smooth`` px Gaussian) takes the noise out of real tiles; renders are noise-free.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from synthesis.checks import check_images, check_mask
from synthesis.filters.gaussian import gaussian_blur
from synthesis.render.physics import RENDER_SETTINGS, RenderSettings, render

__all__ = [
    "QUANTILES",
    "STATISTICS",
    "BackgroundFit",
    "background_statistics",
    "fit_background",
    "fit_train_snr",
    "settings_distance",
    "statistics_distance",
]

logger = logging.getLogger(__name__)

#: Per-tile statistics, in the column order of :func:`background_statistics`.
STATISTICS = ("bg_p50", "bg_p95", "bg_p99", "halo")
#: Quantiles over tiles compared by :func:`statistics_distance`.
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
#: The default grid: each axis a list of (low, high) ranges.
GRID: dict[str, list[tuple[float, float]]] = {
    "background_fraction": [
        (0.001, 0.02),
        (0.002, 0.03),
        (0.005, 0.05),
        (0.01, 0.08),
        (0.03, 0.15),
    ],
    "background_variation": [(0.1, 0.5), (0.5, 1.3), (0.8, 1.6), (1.0, 2.0), (1.2, 2.4)],
    "haze_fraction": [(0.05, 0.25), (0.1, 0.4), (0.2, 0.6), (0.3, 0.8)],
}


@dataclass(frozen=True)
class BackgroundFit:
    """Result of :func:`fit_background`.

    Attributes:
        settings: the structure's settings with the fitted ranges.
        distance: its distance to the real statistics.
        table: every candidate, ``({name: range}, distance)``, best first.
        real: the real tiles' quantiles ``{statistic: [q05, q25, q50, q75, q95]}``.
        rendered: the same for renders with the fitted settings.
    """

    settings: RenderSettings
    distance: float
    table: list[tuple[dict[str, tuple[float, float]], float]]
    real: dict[str, list[float]]
    rendered: dict[str, list[float]]


def background_statistics(
    images: Tensor, masks: Tensor, *, margin: int = 6, smooth: float = 4.0
) -> Tensor:
    """Per tile: far-background median, 95 % and 99 % quantiles, and the halo, each above
    the tile's dark level and divided by its foreground mean above it.

    Args:
        images: ``(B, 1, H, W)`` images (real grey levels or renders), any linear unit.
        masks: ``(B, 1, H, W)`` bool foreground masks, each with foreground and background
            beyond ``margin``.
        margin: px around the mask that are not far background; the halo is the ring
            1..``margin`` px outside the mask.
        smooth: sigma (px) of the Gaussian that takes the noise out of the background.

    Returns:
        ``(B, 4)`` float64, columns :data:`STATISTICS`.

    Raises:
        ValueError: a tile without foreground or without far background.
    """
    x = check_images(images, "images").to(torch.float64)
    m = check_mask(masks, x)
    near = F.max_pool2d(m.to(torch.float64), 2 * margin + 1, 1, margin) > 0
    far = ~near
    halo = near & ~m
    sm = gaussian_blur(x, torch.full((x.shape[0],), float(smooth), dtype=torch.float64))
    rows = []
    for i in range(x.shape[0]):
        b = sm[i][far[i]]
        if b.numel() == 0 or not bool(m[i].any()):
            raise ValueError(
                f"tile {i}: needs foreground and background more than {margin} px from it"
            )
        dark = torch.quantile(b, 0.02)
        fg = (x[i][m[i]].mean() - dark).clamp(min=1e-9)
        q = torch.quantile(b - dark, torch.tensor([0.5, 0.95, 0.99], dtype=torch.float64))
        h = (sm[i][halo[i]].mean() - dark) if bool(halo[i].any()) else q[0]
        rows.append(torch.cat([q, h.reshape(1)]) / fg)
    return torch.stack(rows)


def _quantiles(stats: Tensor) -> dict[str, list[float]]:
    q = torch.quantile(stats, torch.tensor(QUANTILES, dtype=stats.dtype), dim=0)
    return {name: [float(v) for v in q[:, j]] for j, name in enumerate(STATISTICS)}


def statistics_distance(real: dict[str, list[float]], rendered: dict[str, list[float]]) -> float:
    """Mean ``|log(q_rendered / q_real)|`` over every statistic and quantile (floored at
    1e-3): 0 when the distributions over tiles agree at every quantile."""
    terms = [
        abs(math.log(max(b, 1e-3) / max(a, 1e-3)))
        for name in STATISTICS
        for a, b in zip(real[name], rendered[name], strict=True)
    ]
    return sum(terms) / len(terms)


def fit_background(
    real_images: Tensor,
    masks: Tensor,
    *,
    instances: Tensor | None = None,
    structure: str = "nucleus",
    grid: dict[str, Sequence[tuple[float, float]]] | None = None,
    seed: int = 0,
    batch: int = 32,
) -> BackgroundFit:
    """Fit the background and haze ranges of ``structure`` to real tiles.

    Args:
        real_images: ``(N, 1, H, W)`` real training tiles (never the tiles reported on).
        masks: their ``(N, 1, H, W)`` bool masks.
        instances: optional instance labels (per-nucleus brightness, as in a build).
        structure: whose :data:`RENDER_SETTINGS` are the starting point.
        grid: ``{setting name: [(low, high), ...]}``; default :data:`GRID`.
        seed: render seeds are ``seed + i`` for tile ``i`` (the same for every candidate).
        batch: tiles rendered at once.

    Returns:
        :class:`BackgroundFit`.
    """
    real = _quantiles(background_statistics(real_images, masks))
    grid = dict(GRID if grid is None else grid)
    base = RENDER_SETTINGS[structure]
    seeds = seed + torch.arange(masks.shape[0], dtype=torch.int64)
    table = []
    for combo in itertools.product(*grid.values()):
        ranges = dict(zip(grid, combo, strict=True))
        settings = replace(base, **ranges)
        q = _quantiles(_render_statistics(masks, instances, seeds, settings, structure, batch))
        d = statistics_distance(real, q)
        table.append((ranges, d, q))
        logger.info("renderer fit: %s distance %.4f", ranges, d)
    table.sort(key=lambda r: r[1])
    best, dist, rendered = table[0]
    return BackgroundFit(
        settings=replace(base, **best),
        distance=dist,
        table=[(r, d) for r, d, _ in table],
        real=real,
        rendered=rendered,
    )


def settings_distance(
    settings: RenderSettings,
    real_images: Tensor,
    masks: Tensor,
    *,
    instances: Tensor | None = None,
    structure: str = "nucleus",
    seed: int = 0,
    batch: int = 32,
) -> float:
    """The :func:`statistics_distance` between real tiles and renders of their masks with
    ``settings`` (render seeds ``seed + i``, as :func:`fit_background`): how well a fit holds
    on tiles it was not fitted on."""
    real = _quantiles(background_statistics(real_images, masks))
    seeds = seed + torch.arange(masks.shape[0], dtype=torch.int64)
    rendered = _render_statistics(masks, instances, seeds, settings, structure, batch)
    return statistics_distance(real, _quantiles(rendered))


def _render_statistics(
    masks: Tensor,
    instances: Tensor | None,
    seeds: Tensor,
    settings: RenderSettings,
    structure: str,
    batch: int,
) -> Tensor:
    parts: list[Tensor] = []
    for lo in range(0, masks.shape[0], batch):
        sl = slice(lo, lo + batch)
        inst = None if instances is None else instances[sl]
        img = render(masks[sl], seeds[sl], structure, instances=inst, settings=settings).image
        parts.append(background_statistics(img, masks[sl]))
    return torch.cat(parts)


def fit_train_snr(
    images: Tensor, mask: Tensor, *, quantile: float = 0.95
) -> tuple[tuple[float, float], Tensor]:
    """The SNR range of the ``train`` and ``validation`` rows (:data:`synthesis.levels.TRAIN_SNR`)
    fitted to real tiles: from the reference SNR to the ``quantile`` of the tiles' native SNRs,
    rounded to a whole SNR (never below the reference).

    Each tile's native SNR is the camera equation on its mask with its own noise, fitted on
    that tile alone, as the build measures the real splits'
    (:func:`synthesis.corruptions.real.native_snr`).

    Args:
        images: ``(N, 1, H, W)`` real tiles in grey levels (train tiles only).
        mask: ``(N, 1, H, W)`` bool masks.
        quantile: the upper end's quantile of the native SNRs, in (0, 1].

    Returns:
        ``((low, high), native SNR of each tile (N,) float64)``.

    Raises:
        ValueError: ``quantile`` out of range, or no tile with a finite positive native SNR.
    """
    from synthesis.corruptions.real import estimate_noise, native_snr
    from synthesis.levels import REFERENCE_SNR

    if not 0 < quantile <= 1:
        raise ValueError(f"quantile must be in (0, 1]. Got {quantile}")
    snrs = []
    for i in range(images.shape[0]):  # one fit per tile: a tile's SNR ignores the others
        x = images[i : i + 1].to(torch.float64)
        m = mask[i : i + 1] != 0
        snrs.append(native_snr(x, m, estimate_noise(x, m, quant_step=1.0)))
    snr = torch.cat(snrs)
    finite = snr[torch.isfinite(snr) & (snr > 0)]
    if finite.numel() == 0:
        raise ValueError("no tile has a finite, positive native SNR")
    high = max(REFERENCE_SNR, float(round(float(torch.quantile(finite, quantile)))))
    logger.info(
        "train SNR fit: %d tiles, native SNR median %.1f, %g%% quantile %.1f -> range %g-%g",
        finite.numel(),
        float(finite.median()),
        100 * quantile,
        float(torch.quantile(finite, quantile)),
        REFERENCE_SNR,
        high,
    )
    return (REFERENCE_SNR, high), snr

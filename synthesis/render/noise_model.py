"""The background noise of real images: a parametric model, its fit, and samples from it.

A mask-to-image GAN trained on real images reproduces their background noise; the denoiser
(:mod:`synthesis.render.denoise`) is trained to remove it on pairs whose noise comes from this
model. Where the authors (Zhong, Liu & Yang, ISBI 2021) learn the noise with a second pix2pix
("noise GAN", from nearly empty masks to real backgrounds), this module fits a parametric
model to each real image by the method of moments and samples from the fitted set. Measured on
BBBC038 (``benchmarks/RESULTS.md``), the background "noise" of real images is a sum of

* white noise whose variance grows with intensity, ``var = a x + b`` (shot + read noise),
  plus the 8-bit quantisation of the files, ``q**2 / 12``; and
* a spatially correlated field (lag-1 correlation 0.4-0.8: autofluorescence, out-of-focus
  light, resampling), modelled as white noise filtered by a Gaussian of ``corr_sigma_px``
  and scaled to ``corr_std``.

Three background moments (Immerkaer's Laplacian estimator :func:`immerkaer_sigma`, the
variance and the lag-1 covariance of the background after :func:`detrended_background`)
identify the white variance, the correlated variance and its correlation length exactly for
this model (:func:`fit_noise`); the foreground gives the intensity slope ``a``. Unlike a noise
GAN, the fit trains in milliseconds, can be checked against its own samples
(``tests/test_denoise.py`` recovers known parameters), and gives the denoiser's training noise
a stated distribution. :func:`sample_noise` adds it to clean images.

The Gaussian field helpers here (:func:`blur`, :func:`unit_variance`) and the per-row choice
:func:`pick_index` also serve the clean targets (:mod:`synthesis.render.clean_model`).

All intensities here are in the normalised units of :func:`synthesis.models.pix2pix.normalise_pair`
(foreground mean 0.4, range [0, 1]).

Streams: :data:`streams.NOISE_WHITE` (white noise), :data:`streams.NOISE_CORR` (correlated
noise), :data:`streams.NOISE_CHOICE` (choice of a fitted noise per row).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from synthesis import rng
from synthesis.checks import check_images, check_mask, check_seeds
from synthesis.filters.gaussian import gaussian_blur, gaussian_taps
from synthesis.render.morphology import (
    BG_MARGIN_PX,
    FG_MARGIN_PX,
    dilate,
    erode,
    interior,
    masked_mean,
)
from synthesis.rng import streams

__all__ = [
    "DETREND_SIGMA_PX",
    "NoiseModel",
    "blur",
    "detrended_background",
    "fit_noise",
    "immerkaer_sigma",
    "noise_fit_ok",
    "pick_index",
    "sample_noise",
    "unit_variance",
]


#: Immerkaer's 3x3 operator: zero response to planes, ``sum(N**2) = 36``.
_IMMERKAER = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])
#: Gaussian sigma (px) of the smooth trend removed before measuring background fluctuations.
DETREND_SIGMA_PX: float = 8.0
#: Correlation lengths searched by :func:`fit_noise` (Gaussian sigma, px).
_CORR_GRID = torch.linspace(0.5, 6.0, 111, dtype=torch.float64)


# --------------------------------------------------------------------------- filters
def _gaussian_kernel_1d(sigma: Tensor, radius: int) -> Tensor:
    """``(B, 2 radius + 1)`` normalised Gaussian taps, float64, sigma floored at 1e-3 px."""
    return gaussian_taps(sigma.to(torch.float64), radius, sigma_floor=1e-3)


def unit_variance(field: Tensor, sigma: Tensor) -> Tensor:
    """White noise blurred by :func:`blur` at ``sigma`` (``(B,)`` or one value), scaled
    to unit variance: a separable kernel's ``||G||_2 = ||g||_2**2``, computed from the taps
    the blur used (radius ``ceil(4 sigma)``, capped by the image)."""
    h, w = field.shape[-2:]
    radius = min(int(math.ceil(4.0 * float(sigma.max()))), h - 1, w - 1)
    norm = (_gaussian_kernel_1d(sigma, radius) ** 2).sum(1)
    return field / norm.to(field.device).view(-1, 1, 1, 1)


def blur(x: Tensor, sigma: float | Tensor) -> Tensor:
    """:func:`synthesis.filters.gaussian.gaussian_blur` (float32 kernels) for float64 data."""
    return gaussian_blur(x.to(torch.float32), sigma).to(x.dtype)


# --------------------------------------------------------------------------- measurements
def immerkaer_sigma(images: Tensor, region: Tensor | None = None) -> Tensor:
    """White-noise standard deviation per image (Immerkaer, CVIU 1996), ``(B,)``.

    ``sigma = sqrt(pi / 2) / 6 * mean |N * x|`` with ``N`` the 3x3 operator that cancels
    planes, averaged over pixels whose 3x3 neighbourhood lies in ``region``. Smooth structure
    barely contributes; spatially correlated noise contributes less than its variance (see
    :func:`fit_noise`, which accounts for that).

    Args:
        images: ``(B, 1, H, W)`` float.
        region: optional ``(B, 1, H, W)`` bool; the whole image by default.

    Returns:
        ``(B,)`` float64 (NaN where the region has no 3x3 interior).
    """
    resp = _immerkaer_response(images)
    valid = interior(region, images)
    n = valid.flatten(1).sum(1)
    mean_abs = (resp.abs() * valid).flatten(1).sum(1) / n.clamp_min(1)
    sigma = math.sqrt(math.pi / 2) / 6.0 * mean_abs
    return torch.where(n > 0, sigma, torch.full_like(sigma, float("nan")))


def _immerkaer_response(images: Tensor) -> Tensor:
    kern = _IMMERKAER.to(images.device, torch.float64)[None, None]
    return F.conv2d(F.pad(images.to(torch.float64), (1, 1, 1, 1), mode="reflect"), kern)


def detrended_background(x: Tensor, bg: Tensor) -> Tensor:
    """Background fluctuations: ``x`` less its smooth trend, zero-mean over ``bg``, 0 elsewhere.

    The trend is the background-only average under a Gaussian of :data:`DETREND_SIGMA_PX`
    (``blur(x bg) / blur(bg)``), so objects do not leak into it. Used by :func:`fit_noise` and
    :func:`synthesis.render.denoise.residual_noise`.

    Args:
        x: ``(B, 1, H, W)`` float64 images.
        bg: ``(B, 1, H, W)`` bool background region.

    Returns:
        ``(B, 1, H, W)`` float64 residual, 0 outside ``bg``.
    """
    bgf = bg.to(torch.float64)
    trend = blur(x * bgf, DETREND_SIGMA_PX) / blur(bgf, DETREND_SIGMA_PX).clamp_min(1e-6)
    r = (x - trend) * bgf
    return (r - masked_mean(r, bg)[:, None, None, None]) * bgf


# --------------------------------------------------------------------------- noise model
@dataclass(frozen=True)
class NoiseModel:
    """Per-image fits of the background noise model (normalised units), each ``(N,)``.

    ``var_white(x) = white_a x + white_b``; the correlated field has standard deviation
    ``corr_std`` and Gaussian correlation sigma ``corr_sigma_px``; ``quant_step`` is the grey
    level of the source files (0 = not quantised).
    """

    white_a: Tensor
    white_b: Tensor
    corr_std: Tensor
    corr_sigma_px: Tensor
    quant_step: Tensor

    def __post_init__(self) -> None:
        n = self.white_a.shape[0]
        for name in ("white_b", "corr_std", "corr_sigma_px", "quant_step"):
            if getattr(self, name).shape != (n,):
                raise ValueError(
                    f"NoiseModel fields must all have shape ({n},). Got {name} of shape "
                    f"{tuple(getattr(self, name).shape)}"
                )

    def to_dict(self) -> dict[str, list[float]]:
        return {k: [float(v) for v in getattr(self, k)] for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NoiseModel:
        return cls(**{k: torch.tensor(d[k], dtype=torch.float64) for k in cls.__dataclass_fields__})

    def summary(self) -> dict[str, float]:
        """Medians of the fitted parameters (for logs and model cards)."""
        return {k: float(getattr(self, k).median()) for k in self.__dataclass_fields__}


def _corr_tables(device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """For each sigma of the grid: (Immerkaer gain g, lag-1 correlation rho, sigma).

    ``g = var(N * f) / var(f)`` and ``rho`` of white noise ``f`` filtered by the same
    discrete, truncated Gaussian :func:`sample_noise` uses, computed from its taps.
    """
    grid = _CORR_GRID.to(device)
    radius = int(math.ceil(4.0 * float(grid.max())))
    k = _gaussian_kernel_1d(grid, radius)  # (S, K)
    kk = (k**2).sum(1)
    lag1 = (k[:, 1:] * k[:, :-1]).sum(1) / kk
    lag2 = (k[:, 2:] * k[:, :-2]).sum(1) / kk
    # Separable autocorrelation r(dy, dx) = r1(dy) r1(dx); N is the outer product of
    # (1, -2, 1) with itself, so var(N * f) / var(f) = [sum_ij n_i n_j r1(i - j)]**2.
    n = torch.tensor([1.0, -2.0, 1.0], dtype=torch.float64, device=device)
    r = torch.stack([torch.ones_like(lag1), lag1, lag2], 1)  # r1(0), r1(1), r1(2)
    d = torch.tensor([[0, 1, 2], [1, 0, 1], [2, 1, 0]], device=device)
    one_d = (n[None, :, None] * n[None, None, :] * r[:, d]).sum((1, 2))
    return one_d**2, lag1, grid


#: Interior pixels of background and of eroded foreground :func:`fit_noise` needs per image.
_MIN_FIT_PIXELS = 16


def noise_fit_ok(mask: Tensor) -> Tensor:
    """``(B,)`` bool: which masks leave :func:`fit_noise` enough background and foreground."""
    mask = mask != 0
    bg = ~dilate(mask, BG_MARGIN_PX)
    fg = erode(mask, FG_MARGIN_PX)
    ok = torch.ones(mask.shape[0], dtype=torch.bool, device=mask.device)
    for region in (bg, fg):
        ok &= interior(region, mask).flatten(1).sum(1) >= _MIN_FIT_PIXELS
    return ok


def fit_noise(images: Tensor, mask: Tensor, quant_step: float | Tensor = 0.0) -> NoiseModel:
    """Fit the background noise model to each image by the method of moments.

    Background (outside the mask dilated by :data:`BG_MARGIN_PX`), after removing a smooth
    trend (Gaussian of :data:`DETREND_SIGMA_PX`): total variance ``T``, lag-1 covariance
    ``C1`` (horizontal and vertical) and Immerkaer variance ``I``. For white variance ``w``
    and a correlated field of variance ``v`` and sigma ``s``: ``T = w + v``,
    ``C1 = v rho(s)``, ``I = w + v g(s) / 36``; ``s`` is found on a grid and ``w, v`` solved
    exactly. Inside objects (eroded by :data:`FG_MARGIN_PX`) Immerkaer's estimate less the
    correlated part gives the white variance at the foreground level, hence the slope ``a``.
    Quantisation variance ``q**2 / 12`` is removed from the white part (it is re-added when
    sampling).

    Args:
        images: ``(B, 1, H, W)`` normalised images (:func:`synthesis.models.pix2pix.normalise_pair`).
        mask: ``(B, 1, H, W)`` bool foreground.
        quant_step: grey level of the source files in the same units (scalar or ``(B,)``).

    Returns:
        :class:`NoiseModel` with one entry per image (float64).

    Raises:
        ValueError: bad shapes, or a mask leaving no background or foreground to measure.
    """
    images = check_images(images, "images")
    mask = check_mask(mask, images)
    b = images.shape[0]
    x = images.to(torch.float64)
    q = torch.as_tensor(quant_step, dtype=torch.float64, device=x.device).reshape(-1).expand(b)
    bg = ~dilate(mask, BG_MARGIN_PX)
    fg = erode(mask, FG_MARGIN_PX)
    if not bool(noise_fit_ok(mask).all()):
        raise ValueError(
            f"fit_noise needs at least {_MIN_FIT_PIXELS} interior pixels of background and of "
            "eroded foreground per image (see noise_fit_ok). Got fewer"
        )
    r = detrended_background(x, bg)
    n_bg = bg.flatten(1).sum(1)
    total = (r**2).flatten(1).sum(1) / n_bg
    pair_h = bg[..., :, 1:] & bg[..., :, :-1]
    pair_v = bg[..., 1:, :] & bg[..., :-1, :]
    c1 = (
        (r[..., :, 1:] * r[..., :, :-1] * pair_h).flatten(1).sum(1)
        + (r[..., 1:, :] * r[..., :-1, :] * pair_v).flatten(1).sum(1)
    ) / (pair_h.flatten(1).sum(1) + pair_v.flatten(1).sum(1)).clamp_min(1)
    imm = immerkaer_sigma(x, bg) ** 2
    g, rho, grid = _corr_tables(x.device)
    # For each candidate sigma: v from (T, I), then the mismatch of the lag-1 covariance.
    v = (total[:, None] - imm[:, None]) / (1.0 - g[None, :] / 36.0)
    v = v.clamp(min=0.0)
    v = torch.minimum(v, total[:, None])
    err = (v * rho[None, :] - c1[:, None]).abs()
    best = err.argmin(1)
    corr_var = v.gather(1, best[:, None])[:, 0]
    sigma_c = grid[best]
    g_best = g[best]
    quant_var = q**2 / 12.0
    white_bg = (total - corr_var - quant_var).clamp_min(0.0)
    imm_fg = immerkaer_sigma(x, fg) ** 2
    white_fg = (imm_fg - corr_var * g_best / 36.0 - quant_var).clamp_min(0.0)
    m_bg = masked_mean(x, bg)
    m_fg = masked_mean(x, fg)
    slope = ((white_fg - white_bg) / (m_fg - m_bg).clamp_min(1e-6)).clamp_min(0.0)
    offset = (white_bg - slope * m_bg).clamp_min(0.0)
    return NoiseModel(
        white_a=slope.cpu(),
        white_b=offset.cpu(),
        corr_std=corr_var.sqrt().cpu(),
        corr_sigma_px=sigma_c.cpu(),
        quant_step=q.cpu().clone(),
    )


def pick_index(seeds: Tensor, n: int) -> Tensor:
    """A uniform index in ``[0, n)`` per row (stream :data:`streams.NOISE_CHOICE`)."""
    u = rng.uniform(seeds, (1,), streams.NOISE_CHOICE)[:, 0]
    return (u.to(torch.float64) * n).floor().clamp(max=n - 1).long()


def sample_noise(
    clean: Tensor, seeds: Tensor | int, model: NoiseModel
) -> tuple[Tensor, dict[str, Tensor]]:
    """Add modelled noise to clean images: sample, then apply.

    Each row picks one fitted image's parameters (uniformly, from its seed) and gets
    ``clean + sqrt(a clean + b) n1 + corr_std (G_s * n2) / ||G_s||``, rounded to its
    ``quant_step`` and clipped to ``[0, 1]``. ``n1, n2`` are N(0, 1) from the row's seed.

    Args:
        clean: ``(B, 1, H, W)`` float in [0, 1].
        seeds: int or ``(B,)`` int64 per-row seeds.
        model: a :class:`NoiseModel` (one or more fits).

    Returns:
        ``(noisy, params)``: ``(B, 1, H, W)`` float32 and the per-row parameters used
        (``(B,)`` tensors: ``index`` and the five model fields).
    """
    clean = check_images(clean, "clean")
    b, _, h, w = clean.shape
    seeds = check_seeds(seeds, b, clean.device)
    idx = pick_index(seeds, model.white_a.shape[0]).cpu()
    p = {k: getattr(model, k)[idx].to(clean.device) for k in model.__dataclass_fields__}
    n1 = rng.normal(seeds, (1, h, w), streams.NOISE_WHITE)
    n2 = rng.normal(seeds, (1, h, w), streams.NOISE_CORR)
    x = clean.to(torch.float64)
    var = p["white_a"][:, None, None, None] * x + p["white_b"][:, None, None, None]
    noisy = x + var.clamp_min(0).sqrt() * n1
    corr = unit_variance(blur(n2.to(torch.float64), p["corr_sigma_px"]), p["corr_sigma_px"])
    noisy = noisy + p["corr_std"][:, None, None, None] * corr
    step = p["quant_step"][:, None, None, None]
    noisy = torch.where(step > 0, torch.round(noisy / step.clamp_min(1e-12)) * step, noisy)
    params = {"index": idx.to(clean.device), **p}
    return noisy.clamp(0.0, 1.0).to(torch.float32), params

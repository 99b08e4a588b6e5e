"""Denoising of generated images, after the authors' scheme, with a fitted noise model.

A mask-to-image GAN trained on real images reproduces their background noise. That noise is
not part of the benchmark's camera model, so it would add to the noise the corruptions set and
the realised SNR would fall below the target. The authors (Zhong, Liu & Yang, ISBI 2021)
remove it with a denoiser trained on pairs made from masks: clean targets (object
intensities drawn from a gamma distribution fitted to real foreground, then blurred) plus
realistic noise from a noise model, here learned from the real images.

Where the authors learn the noise with a second pix2pix ("noise GAN", from nearly empty masks
to real backgrounds), this module fits a parametric model to each real image by the method
of moments and samples from the fitted set. Measured on BBBC038 (``benchmarks/RESULTS.md``),
the background "noise" of real images is a sum of

* white noise whose variance grows with intensity, ``var = a x + b`` (shot + read noise),
  plus the 8-bit quantisation of the files, ``q**2 / 12``; and
* a spatially correlated field (lag-1 correlation 0.4-0.8: autofluorescence, out-of-focus
  light, resampling), modelled as white noise filtered by a Gaussian of ``corr_sigma_px``
  and scaled to ``corr_std``.

Three background moments (Immerkaer's Laplacian estimator, the variance and the lag-1
covariance of the detrended background) identify the white variance, the correlated variance
and its correlation length exactly for this model (:func:`fit_noise`); the foreground gives
the intensity slope ``a``. Unlike a noise GAN, the fit trains in milliseconds, can be checked
against its own samples (``tests/test_denoise.py`` recovers known parameters), and gives the
denoiser's training noise a stated distribution.

Clean targets (:func:`sample_clean`): per-object intensities from the gamma fit (method of
moments on real per-object means, :func:`fit_clean_model`), a smooth multiplicative texture,
a flat background drawn from the real background levels, and a Gaussian blur. The denoiser
(a :class:`synthesis.models.pix2pix.UNetGenerator` trained noisy -> clean by
:mod:`synthesis.models.gan_training`) is applied with :func:`denoise`; :func:`residual_noise` measures
what is left, as the fraction of the foreground/background contrast that would add to the
camera noise.

All intensities here are in the normalised units of :func:`synthesis.models.pix2pix.normalise_pair`
(foreground mean 0.4, range [0, 1]).

Streams: 281 (object intensities), 282 (texture), 283 (white noise), 284 (correlated noise),
285 (choice of a fitted noise / background level per row).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from synthesis import rng
from synthesis.checks import check_images, check_mask, check_seeds
from synthesis.corruptions.psf import gaussian_blur, gaussian_taps
from synthesis.rng import streams

__all__ = [
    "CleanModel",
    "NoiseModel",
    "denoise",
    "fit_clean_model",
    "fit_noise",
    "gamma",
    "immerkaer_sigma",
    "label_components",
    "noise_fit_ok",
    "residual_noise",
    "sample_clean",
    "sample_noise",
]

logger = logging.getLogger(__name__)


#: Immerkaer's 3x3 operator: zero response to planes, ``sum(N**2) = 36``.
_IMMERKAER = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])
#: Pixels between the mask and the background region measured (blurred object edges).
BG_MARGIN_PX: int = 3
#: Pixels removed from the foreground edge before measuring inside objects.
FG_MARGIN_PX: int = 2
#: Gaussian sigma (px) of the smooth trend removed before measuring background fluctuations.
DETREND_SIGMA_PX: float = 8.0
#: Correlation lengths searched by :func:`fit_noise` (Gaussian sigma, px).
_CORR_GRID = torch.linspace(0.5, 6.0, 111, dtype=torch.float64)
#: Gamma draws are Marsaglia-Tsang proposals; P(all rejected) < 0.05**8 per value.
_GAMMA_TRIES = 8


# --------------------------------------------------------------------------- filters
def _gaussian_kernel_1d(sigma: Tensor, radius: int) -> Tensor:
    """``(B, 2 radius + 1)`` normalised Gaussian taps, float64, sigma floored at 1e-3 px."""
    return gaussian_taps(sigma.to(torch.float64), radius, sigma_floor=1e-3)


def _unit_variance(field: Tensor, sigma: Tensor) -> Tensor:
    """White noise blurred by :func:`_blur` at ``sigma`` (``(B,)`` or one value), scaled
    to unit variance: a separable kernel's ``||G||_2 = ||g||_2**2``, computed from the taps
    the blur used (radius ``ceil(4 sigma)``, capped by the image)."""
    h, w = field.shape[-2:]
    radius = min(int(math.ceil(4.0 * float(sigma.max()))), h - 1, w - 1)
    norm = (_gaussian_kernel_1d(sigma, radius) ** 2).sum(1)
    return field / norm.to(field.device).view(-1, 1, 1, 1)


def _blur(x: Tensor, sigma: float | Tensor) -> Tensor:
    """:func:`synthesis.corruptions.psf.gaussian_blur` (float32 kernels) for float64 data."""
    return gaussian_blur(x.to(torch.float32), sigma).to(x.dtype)


def _dilate(mask: Tensor, r: int) -> Tensor:
    return F.max_pool2d(mask.float(), 2 * r + 1, stride=1, padding=r) > 0 if r > 0 else mask


def _erode(mask: Tensor, r: int) -> Tensor:
    return ~_dilate(~mask, r) if r > 0 else mask


def _masked_mean(x: Tensor, region: Tensor) -> Tensor:
    n = region.flatten(1).sum(1).clamp_min(1)
    return (x * region).flatten(1).sum(1) / n


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
    valid = _interior(region, images)
    n = valid.flatten(1).sum(1)
    mean_abs = (resp.abs() * valid).flatten(1).sum(1) / n.clamp_min(1)
    sigma = math.sqrt(math.pi / 2) / 6.0 * mean_abs
    return torch.where(n > 0, sigma, torch.full_like(sigma, float("nan")))


def _immerkaer_response(images: Tensor) -> Tensor:
    kern = _IMMERKAER.to(images.device, torch.float64)[None, None]
    return F.conv2d(F.pad(images.to(torch.float64), (1, 1, 1, 1), mode="reflect"), kern)


def _interior(region: Tensor | None, images: Tensor) -> Tensor:
    """Pixels whose 3x3 neighbourhood lies in ``region`` and not on the image border."""
    if region is None:
        region = torch.ones_like(images, dtype=torch.bool)
    inner = _erode(region, 1)
    inner[..., 0, :] = False
    inner[..., -1, :] = False
    inner[..., :, 0] = False
    inner[..., :, -1] = False
    return inner


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
    bg = ~_dilate(mask, BG_MARGIN_PX)
    fg = _erode(mask, FG_MARGIN_PX)
    ok = torch.ones(mask.shape[0], dtype=torch.bool, device=mask.device)
    for region in (bg, fg):
        ok &= _interior(region, mask).flatten(1).sum(1) >= _MIN_FIT_PIXELS
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
    bg = ~_dilate(mask, BG_MARGIN_PX)
    fg = _erode(mask, FG_MARGIN_PX)
    if not bool(noise_fit_ok(mask).all()):
        raise ValueError(
            f"fit_noise needs at least {_MIN_FIT_PIXELS} interior pixels of background and of "
            "eroded foreground per image (see noise_fit_ok). Got fewer"
        )
    bgf = bg.to(torch.float64)
    trend = _blur(x * bgf, DETREND_SIGMA_PX) / _blur(bgf, DETREND_SIGMA_PX).clamp_min(1e-6)
    r = (x - trend) * bgf
    r = (r - _masked_mean(r, bg)[:, None, None, None]) * bgf
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
    m_bg = _masked_mean(x, bg)
    m_fg = _masked_mean(x, fg)
    slope = ((white_fg - white_bg) / (m_fg - m_bg).clamp_min(1e-6)).clamp_min(0.0)
    offset = (white_bg - slope * m_bg).clamp_min(0.0)
    return NoiseModel(
        white_a=slope.cpu(),
        white_b=offset.cpu(),
        corr_std=corr_var.sqrt().cpu(),
        corr_sigma_px=sigma_c.cpu(),
        quant_step=q.cpu().clone(),
    )


def _pick(seeds: Tensor, n: int) -> Tensor:
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
    idx = _pick(seeds, model.white_a.shape[0]).cpu()
    p = {k: getattr(model, k)[idx].to(clean.device) for k in model.__dataclass_fields__}
    n1 = rng.normal(seeds, (1, h, w), streams.NOISE_WHITE)
    n2 = rng.normal(seeds, (1, h, w), streams.NOISE_CORR)
    x = clean.to(torch.float64)
    var = p["white_a"][:, None, None, None] * x + p["white_b"][:, None, None, None]
    noisy = x + var.clamp_min(0).sqrt() * n1
    corr = _unit_variance(_blur(n2.to(torch.float64), p["corr_sigma_px"]), p["corr_sigma_px"])
    noisy = noisy + p["corr_std"][:, None, None, None] * corr
    step = p["quant_step"][:, None, None, None]
    noisy = torch.where(step > 0, torch.round(noisy / step.clamp_min(1e-12)) * step, noisy)
    params = {"index": idx.to(clean.device), **p}
    return noisy.clamp(0.0, 1.0).to(torch.float32), params


# --------------------------------------------------------------------------- clean targets
def label_components(mask: Tensor) -> Tensor:
    """8-connected components: each foreground pixel gets ``1 +`` the largest flat index of its
    component, background 0. ``(B, 1, H, W)`` bool -> ``(B, 1, H, W)`` int64.

    Labels propagate by 3x3 max-pooling restricted to the mask until nothing changes (as many
    rounds as the longest geodesic radius of a component; convergence is checked every 8).
    """
    if mask.dtype != torch.bool:
        mask = mask != 0
    b, _, h, w = mask.shape
    # float32 holds the indices exactly up to 2**24 pixels (4x faster than float64 here).
    dtype = torch.float32 if h * w < 2**24 else torch.float64
    idx = torch.arange(1, h * w + 1, device=mask.device, dtype=dtype).view(1, 1, h, w)
    lab = torch.where(
        mask, idx.expand(b, 1, h, w), torch.zeros((), dtype=dtype, device=mask.device)
    )
    while True:
        prev = lab
        for _ in range(8):
            lab = F.max_pool2d(lab, 3, stride=1, padding=1).mul_(mask)
        if torch.equal(lab, prev):
            return lab.long()


def _ranks(labels: Tensor) -> Tensor:
    """Per row, labels renumbered 1..L in increasing order (0 stays 0): ``(B, 1, H, W)``.

    A row's ranks depend only on its own labels, so draws indexed by rank do not depend on
    the batch.
    """
    b = labels.shape[0]
    flat = torch.cat(
        [torch.zeros(b, 1, dtype=torch.long, device=labels.device), labels.flatten(1).long()], 1
    )
    span = int(flat.max()) + 1
    offsets = torch.arange(b, device=labels.device) * span
    uniq, inv = torch.unique(flat + offsets[:, None], return_inverse=True)
    first = torch.searchsorted(uniq, offsets)
    return (inv - first[:, None])[:, 1:].reshape(labels.shape)


def gamma(shape_k: Tensor, seeds: Tensor, size: tuple[int, ...], stream: int) -> Tensor:
    """Gamma(shape_k, 1) variates ``(B, *size)`` from per-row seeds (Marsaglia & Tsang 2000).

    ``shape_k`` is ``(B,)``; ``k < 1`` uses ``Gamma(k + 1) U**(1/k)``. Each value takes the
    first of :data:`_GAMMA_TRIES` proposals that is accepted (acceptance > 95% each; if all
    are rejected, which has probability < 1e-10, the mode-free value ``d`` is used). Values are
    pure functions of (seed, stream, position).
    """
    b = seeds.shape[0]
    k = shape_k.to(torch.float64).reshape(b, *([1] * len(size)))
    boost = k < 1
    kk = torch.where(boost, k + 1, k)
    d = kk - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    out = d.expand(b, *size).clone()
    done = torch.zeros(out.shape, dtype=torch.bool, device=out.device)
    for t in range(_GAMMA_TRIES):
        z = rng.normal(seeds, size, stream, sub=2 * t + 1).to(torch.float64)
        u = rng.uniform(seeds, size, stream, sub=2 * t + 2).to(torch.float64)
        v = (1 + c * z) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * z * z + d - d * v + d * torch.log(v.clamp_min(1e-300)))
        take = ok & ~done
        out = torch.where(take, d * v, out)
        done |= take
    u0 = rng.uniform(seeds, size, stream, sub=0).to(torch.float64)
    return torch.where(boost, out * u0 ** (1.0 / k), out)


@dataclass(frozen=True)
class CleanModel:
    """How clean targets are drawn (normalised units).

    Object intensities ~ Gamma(``gamma_shape``, ``gamma_scale``); background levels are drawn
    from ``background_levels`` (the real images' background means); ``texture_rel_std`` is the
    relative standard deviation of a smooth texture (Gaussian of ``texture_sigma_px``) inside
    objects; the whole image is blurred by ``blur_sigma_px``.
    """

    gamma_shape: float
    gamma_scale: float
    background_levels: tuple[float, ...]
    texture_rel_std: float = 0.15
    texture_sigma_px: float = 2.0
    blur_sigma_px: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CleanModel:
        d = dict(d)
        d["background_levels"] = tuple(float(v) for v in d["background_levels"])
        return cls(**d)


def _object_means(images: Tensor, labels: Tensor) -> Tensor:
    """Mean intensity of every labelled object of the batch, 1-D float64."""
    b = images.shape[0]
    flat_lab = labels.flatten(1)
    offset = (torch.arange(b, device=labels.device) * (flat_lab.shape[1] + 1))[:, None]
    key = torch.where(flat_lab > 0, flat_lab + offset, torch.zeros_like(flat_lab)).flatten()
    uniq, inv = torch.unique(key, return_inverse=True)
    sums = torch.zeros(uniq.shape[0], dtype=torch.float64, device=images.device)
    cnt = torch.zeros_like(sums)
    sums.index_add_(0, inv, images.flatten().to(torch.float64))
    cnt.index_add_(0, inv, torch.ones_like(images.flatten(), dtype=torch.float64))
    keep = uniq > 0
    return (sums / cnt)[keep]


def fit_clean_model(
    images: Tensor, mask: Tensor, labels: Tensor | None = None, **settings: float
) -> CleanModel:
    """Fit the clean-target model to real normalised images (method of moments).

    Args:
        images: ``(B, 1, H, W)`` normalised real images.
        mask: ``(B, 1, H, W)`` bool foreground.
        labels: optional ``(B, 1, H, W)`` instance labels (0 = background); connected
            components of the mask otherwise.
        **settings: overrides of the other :class:`CleanModel` fields.

    Returns:
        The fitted :class:`CleanModel`.
    """
    images = check_images(images, "images")
    mask = check_mask(mask, images)
    if labels is None:
        labels = label_components(mask)
    means = _object_means(images, torch.where(mask, labels.long(), 0))
    if means.numel() < 2:
        raise ValueError(f"fit_clean_model needs at least 2 objects. Got {means.numel()}")
    mu, var = float(means.mean()), float(means.var())
    shape = mu * mu / max(var, 1e-12)
    bg = _masked_mean(images.to(torch.float64), ~_dilate(mask, BG_MARGIN_PX))
    return CleanModel(
        gamma_shape=shape,
        gamma_scale=mu / shape,
        background_levels=tuple(float(v) for v in bg.cpu()),
        **settings,
    )


def sample_clean(
    mask: Tensor, seeds: Tensor | int, model: CleanModel, labels: Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clean targets from masks: sample, then apply.

    Args:
        mask: ``(B, 1, H, W)`` bool.
        seeds: int or ``(B,)`` int64 per-row seeds.
        model: the fitted :class:`CleanModel`.
        labels: optional instance labels; connected components otherwise. Objects are
            numbered by increasing label within their row and object ``j`` takes the ``j``-th
            gamma draw of the row's seed, so a row does not depend on its batch.

    Returns:
        ``(clean, params)``: ``(B, 1, H, W)`` float32 in [0, 1], and ``{"background": (B,)}``.
    """
    if not isinstance(mask, Tensor) or mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be a (B, 1, H, W) tensor. Got {getattr(mask, 'shape', mask)}")
    mask = mask != 0
    b, _, h, w = mask.shape
    seeds = check_seeds(seeds, b, mask.device)
    if labels is None:
        labels = label_components(mask)
    ranks = _ranks(torch.where(mask, labels.long(), 0))
    shape_k = torch.full((b,), model.gamma_shape, dtype=torch.float64, device=mask.device)
    count = max(int(ranks.max()), 1)
    draws = gamma(shape_k, seeds, (count,), streams.CLEAN_INTENSITY) * model.gamma_scale
    level = draws.gather(1, (ranks.flatten(1) - 1).clamp_min(0)).view(b, 1, h, w)
    tex = _blur(
        rng.normal(seeds, (1, h, w), streams.CLEAN_TEXTURE).to(torch.float64),
        model.texture_sigma_px,
    )
    tex = _unit_variance(tex, torch.tensor([model.texture_sigma_px]))
    levels = torch.tensor(model.background_levels, dtype=torch.float64, device=mask.device)
    bg = levels[_pick(seeds, len(model.background_levels))]
    obj = (level * (1.0 + model.texture_rel_std * tex)).clamp_min(0.0)
    x = torch.where(mask, torch.maximum(obj, bg[:, None, None, None]), bg[:, None, None, None])
    x = _blur(x, model.blur_sigma_px)
    return x.clamp(0.0, 1.0).to(torch.float32), {"background": bg}


# --------------------------------------------------------------------------- apply
@torch.no_grad()
def denoise(images: Tensor, net: nn.Module, *, batch_size: int = 16) -> Tensor:
    """Apply a trained denoiser to normalised images (``[0, 1]``), in eval mode.

    Args:
        images: ``(B, 1, H, W)`` float in [0, 1].
        net: a :class:`synthesis.models.pix2pix.UNetGenerator` with one input channel, trained
            noisy -> clean (output in ``[-1, 1]``).
        batch_size: rows per forward pass (memory bound; results do not depend on it up to
            float rounding).

    Returns:
        ``(B, 1, H, W)`` float32 in [0, 1].
    """
    images = check_images(images, "images")
    was_training = net.training
    net.eval()
    try:
        out = [
            ((net(chunk * 2.0 - 1.0).float() + 1.0) * 0.5).clamp(0.0, 1.0)
            for chunk in images.split(batch_size)
        ]
    finally:
        net.train(was_training)
    return torch.cat(out)


def residual_noise(images: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """What a noise-free image must not have: background fluctuations, relative to contrast.

    Args:
        images: ``(B, 1, H, W)`` float (any linear scale).
        mask: ``(B, 1, H, W)`` bool foreground.

    Returns:
        ``(B,)`` float64 tensors: ``contrast`` (mean foreground - mean background),
        ``background``, ``white_sigma`` (Immerkaer, background), ``total_sigma`` (std of the
        detrended background), their ratios to the contrast ``rel_white`` and ``rel_total``,
        and ``snr8_excess``: the relative noise added at the reference SNR 8 if the total
        fluctuation stayed in the image, ``sqrt(1 + (8 rel_total)**2) - 1`` (with the camera
        noise scaled to the contrast, the leftover adds ``(SNR rel)**2`` to the relative
        variance).
    """
    images = check_images(images, "images", nonnegative=False)
    mask = check_mask(mask, images)
    x = images.to(torch.float64)
    bg = ~_dilate(mask, BG_MARGIN_PX)
    bgf = bg.to(torch.float64)
    trend = _blur(x * bgf, DETREND_SIGMA_PX) / _blur(bgf, DETREND_SIGMA_PX).clamp_min(1e-6)
    r = (x - trend) * bgf
    r = (r - _masked_mean(r, bg)[:, None, None, None]) * bgf
    total = ((r**2).flatten(1).sum(1) / bg.flatten(1).sum(1).clamp_min(1)).sqrt()
    contrast = _masked_mean(x, mask) - _masked_mean(x, ~mask)
    white = immerkaer_sigma(x, bg)
    rel_total = total / contrast
    return {
        "contrast": contrast,
        "background": _masked_mean(x, bg),
        "white_sigma": white,
        "total_sigma": total,
        "rel_white": white / contrast,
        "rel_total": rel_total,
        "snr8_excess": torch.sqrt(1.0 + (8.0 * rel_total) ** 2) - 1.0,
    }

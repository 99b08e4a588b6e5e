"""Clean targets of the denoiser's training pairs: a model fitted to real images, and samples.

After the authors' scheme (Zhong, Liu & Yang, ISBI 2021), the denoiser
(:mod:`synthesis.render.denoise`) learns from pairs made from masks: a clean target drawn here,
and the same target with noise from :mod:`synthesis.render.noise_model`.

Clean targets (:func:`sample_clean`): per-object intensities from a gamma distribution fitted
by the method of moments to real per-object means (:func:`fit_clean_model`), a smooth
multiplicative texture, a flat background drawn from the real background levels, and a
Gaussian blur.

All intensities here are in the normalised units of :func:`synthesis.models.pix2pix.normalise_pair`
(foreground mean 0.4, range [0, 1]).

Streams: :data:`streams.CLEAN_INTENSITY` (object intensities, :func:`synthesis.rng.gamma`),
:data:`streams.CLEAN_TEXTURE` (texture), :data:`streams.NOISE_CHOICE` (background level per
row, :func:`synthesis.render.noise_model.pick_index`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from synthesis import rng
from synthesis.checks import check_images, check_mask, check_seeds
from synthesis.render.morphology import (
    BG_MARGIN_PX,
    dilate,
    label_components,
    masked_mean,
    object_means,
    rank_labels,
)
from synthesis.render.noise_model import blur, pick_index, unit_variance
from synthesis.rng import streams

__all__ = ["CleanModel", "fit_clean_model", "sample_clean"]


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
    means = object_means(images, torch.where(mask, labels.long(), 0))
    if means.numel() < 2:
        raise ValueError(f"fit_clean_model needs at least 2 objects. Got {means.numel()}")
    mu, var = float(means.mean()), float(means.var())
    shape = mu * mu / max(var, 1e-12)
    bg = masked_mean(images.to(torch.float64), ~dilate(mask, BG_MARGIN_PX))
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
    ranks = rank_labels(torch.where(mask, labels.long(), 0))
    shape_k = torch.full((b,), model.gamma_shape, dtype=torch.float64, device=mask.device)
    count = max(int(ranks.max()), 1)
    draws = rng.gamma(shape_k, seeds, (count,), streams.CLEAN_INTENSITY) * model.gamma_scale
    level = draws.gather(1, (ranks.flatten(1) - 1).clamp_min(0)).view(b, 1, h, w)
    tex = blur(
        rng.normal(seeds, (1, h, w), streams.CLEAN_TEXTURE).to(torch.float64),
        model.texture_sigma_px,
    )
    tex = unit_variance(tex, torch.tensor([model.texture_sigma_px]))
    levels = torch.tensor(model.background_levels, dtype=torch.float64, device=mask.device)
    bg = levels[pick_index(seeds, len(model.background_levels))]
    obj = (level * (1.0 + model.texture_rel_std * tex)).clamp_min(0.0)
    x = torch.where(mask, torch.maximum(obj, bg[:, None, None, None]), bg[:, None, None, None])
    x = blur(x, model.blur_sigma_px)
    return x.clamp(0.0, 1.0).to(torch.float32), {"background": bg}

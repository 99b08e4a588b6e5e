"""Denoising of generated images, after the authors' scheme, with a fitted noise model.

A mask-to-image GAN trained on real images reproduces their background noise. That noise is
not part of the benchmark's camera model, so it would add to the noise the corruptions set and
the realised SNR would fall below the target. The authors (Zhong, Liu & Yang, ISBI 2021)
remove it with a denoiser trained on pairs made from masks: clean targets (object
intensities drawn from a gamma distribution fitted to real foreground, then blurred) plus
realistic noise from a noise model, here learned from the real images. The pieces:

- :mod:`synthesis.render.noise_model`: the background noise of real images, fitted by the
  method of moments (where the authors train a second, "noise" GAN), and samples from it;
- :mod:`synthesis.render.clean_model`: the clean targets, fitted and sampled;
- :mod:`synthesis.render.morphology`: the masks and labels both measure through;
- this module: :func:`fit_models` fits both models to real training pairs; the denoiser (a
  :class:`synthesis.models.pix2pix.UNetGenerator` trained noisy -> clean by
  :mod:`synthesis.models.gan_training`) is applied with :func:`denoise`; :func:`residual_noise`
  measures what is left, as the fraction of the foreground/background contrast that would add
  to the camera noise.

All intensities here are in the normalised units of :func:`synthesis.models.pix2pix.normalise_pair`
(foreground mean 0.4, range [0, 1]).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from synthesis.checks import check_images, check_mask
from synthesis.render.clean_model import CleanModel, fit_clean_model
from synthesis.render.morphology import BG_MARGIN_PX, dilate, masked_mean
from synthesis.render.noise_model import (
    NoiseModel,
    detrended_background,
    fit_noise,
    immerkaer_sigma,
    noise_fit_ok,
)

if TYPE_CHECKING:
    from synthesis.models.gan_training import PairSet

__all__ = ["FIT_IMAGES", "denoise", "fit_models", "residual_noise"]

#: Real images used to fit the denoiser's noise and clean-target models.
FIT_IMAGES: int = 64


# --------------------------------------------------------------------------- fit
def fit_models(train_set: PairSet, quant: list[float]) -> tuple[NoiseModel, CleanModel]:
    """Fit the noise model (one fit per image) and the clean-target model (pooled objects)
    on up to :data:`FIT_IMAGES` training images, batched by image size.

    Args:
        train_set: normalised real pairs (:class:`synthesis.models.gan_training.PairSet`).
        quant: each image's grey level in normalised units (its files' quantisation step).

    Returns:
        ``(noise model, clean model)``.

    Raises:
        ValueError: no image with enough background and foreground to fit the noise model.
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for i in range(min(len(train_set), FIT_IMAGES)):
        groups.setdefault(tuple(train_set.masks[i].shape), []).append(i)
    fits, images, masks, labels = [], [], [], []
    # Source tiles share one size: usually a single batch (a loop over sizes, not images).
    for idx in groups.values():
        m = torch.stack([train_set.masks[i] for i in idx])[:, None]
        x = torch.stack([train_set.images[i] for i in idx])[:, None]
        ok = noise_fit_ok(m)
        if not bool(ok.any()):
            continue
        q = torch.tensor([quant[i] for i in idx], dtype=torch.float64)
        fits.append(fit_noise(x[ok], m[ok], q[ok]))
        images.append(x[ok])
        masks.append(m[ok])
        if train_set.labels is not None:
            labels.append(torch.stack([train_set.labels[i] for i in idx])[:, None][ok])
    if not fits:
        raise ValueError("no image had enough background and foreground to fit the noise model")
    noise = NoiseModel(
        **{k: torch.cat([getattr(f, k) for f in fits]) for k in NoiseModel.__dataclass_fields__}
    )
    if len(images) == 1:
        clean = fit_clean_model(images[0], masks[0], labels[0] if labels else None)
    else:  # several sizes: pool per-object means and background levels over the groups
        parts = [
            fit_clean_model(x, m, lab if labels else None)
            for x, m, lab in zip(images, masks, labels or [None] * len(images), strict=True)
        ]
        mu_i = np.array([c.gamma_shape * c.gamma_scale for c in parts])
        var_i = np.array([c.gamma_shape * c.gamma_scale**2 for c in parts])
        mu = float(mu_i.mean())
        var = float((var_i + mu_i**2).mean() - mu**2)
        shape = mu * mu / max(var, 1e-12)
        bgs = tuple(v for c in parts for v in c.background_levels)
        clean = CleanModel(gamma_shape=shape, gamma_scale=mu / shape, background_levels=bgs)
    return noise, clean


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
        detrended background, :func:`synthesis.render.noise_model.detrended_background`),
        their ratios to the contrast ``rel_white`` and ``rel_total``, and ``snr8_excess``: the
        relative noise added at the reference SNR 8 if the total fluctuation stayed in the
        image, ``sqrt(1 + (8 rel_total)**2) - 1`` (with the camera noise scaled to the
        contrast, the leftover adds ``(SNR rel)**2`` to the relative variance).
    """
    images = check_images(images, "images", nonnegative=False)
    mask = check_mask(mask, images)
    x = images.to(torch.float64)
    bg = ~dilate(mask, BG_MARGIN_PX)
    r = detrended_background(x, bg)
    total = ((r**2).flatten(1).sum(1) / bg.flatten(1).sum(1).clamp_min(1)).sqrt()
    contrast = masked_mean(x, mask) - masked_mean(x, ~mask)
    white = immerkaer_sigma(x, bg)
    rel_total = total / contrast
    return {
        "contrast": contrast,
        "background": masked_mean(x, bg),
        "white_sigma": white,
        "total_sigma": total,
        "rel_white": white / contrast,
        "rel_total": rel_total,
        "snr8_excess": torch.sqrt(1.0 + (8.0 * rel_total) ** 2) - 1.0,
    }

"""Controlled corruptions of real images: the native-noise estimator against known
Poisson-Gaussian noise, the exact-SNR noise splits and the blur splits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from synthesis.corruptions.real import (
    add_noise_to_snr,
    blur_real,
    estimate_noise,
    native_snr,
    noise_retained,
)


def _scene(b: int, seed: int, size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise-free 8-bit-range fluorescence-like tiles: soft-edged blobs of 20-170 grey
    levels on a 5-15 background (the range of the BBBC038 tiles), and their masks."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    out = torch.zeros(b, 1, size, size, dtype=torch.float64)
    mask = torch.zeros(b, 1, size, size, dtype=torch.bool)
    for i in range(b):
        img = torch.full((size, size), 5 + 10 * torch.rand(1, generator=g).item())
        img = img.double()
        for _ in range(12):
            cy, cx = (torch.rand(2, generator=g) * size).tolist()
            r = 8 + 20 * torch.rand(1, generator=g).item()
            amp = 20 + 150 * torch.rand(1, generator=g).item()
            d = ((yy - cy) ** 2 + (xx - cx) ** 2).double().sqrt()
            img = img + amp * torch.sigmoid((r - d) / 1.5)
            mask[i, 0] |= d < r
        out[i, 0] = img
    return out, mask


def _poisson_gaussian(clean: torch.Tensor, a: float, var_g: float, seed: int) -> torch.Tensor:
    """``a * Poisson(x / a) + N(0, var_g)``, rounded to integers: variance ``a x + var_g
    + 1/12``."""
    g = torch.Generator().manual_seed(seed)
    shot = a * torch.poisson(clean / a, generator=g)
    read = math.sqrt(var_g) * torch.randn(clean.shape, generator=g, dtype=torch.float64)
    return torch.round(shot + read).clamp(0, 255)


def _fg_mean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    fg = m.flatten(1).double()
    return (x.flatten(1) * fg).sum(1) / fg.sum(1)


# The range BBBC038 covers (fitted on its 113 test tiles: a 0-0.14, b up to ~0.5, with
# native SNR 5-180) and beyond it, up to shot noise of one grey level per photon.
@pytest.mark.parametrize("a", [0.02, 0.2, 1.0])
@pytest.mark.parametrize("var_g", [0.25, 1.0, 4.0])
def test_estimator_recovers_known_noise(a: float, var_g: float):
    """Tolerance: the fitted variance at each tile's foreground mean (what the SNR uses)
    within 12% of the truth; the gain ``a`` within 25% (5 tiles, seeded)."""
    clean, mask = _scene(5, seed=0)
    noisy = _poisson_gaussian(clean, a, var_g, seed=1)
    fit = estimate_noise(noisy, mask)
    mu = _fg_mean(clean, mask)
    truth = a * mu + var_g + 1 / 12
    rel = fit.variance(mu) / truth - 1
    assert rel.abs().max() < 0.12, rel.tolist()
    assert ((fit.a - a).abs() <= 0.25 * a + 0.01).all(), fit.a.tolist()
    assert (fit.samples > 10_000).all()


def test_native_snr_is_the_camera_equation():
    clean, mask = _scene(4, seed=2)
    noisy = _poisson_gaussian(clean, 0.2, 1.0, seed=3)
    fit = estimate_noise(noisy, mask)
    fg, bg = mask.flatten(1).double(), (~mask).flatten(1).double()
    s = (noisy.flatten(1) * fg).sum(1) / fg.sum(1) - (noisy.flatten(1) * bg).sum(1) / bg.sum(1)
    mu = _fg_mean(noisy, mask)
    want = s / (fit.a * mu + fit.b).sqrt()
    assert torch.allclose(native_snr(noisy, mask, fit), want)
    true_snr = s / (0.2 * _fg_mean(clean, mask) + 1.0 + 1 / 12).sqrt()
    assert ((native_snr(noisy, mask, fit) / true_snr - 1).abs() < 0.06).all()


@pytest.mark.parametrize("snr", [1, 2, 3, 5, 8])
def test_noise_splits_reach_the_target_snr(snr: float):
    """Realised SNR within 5% of the target on every kept tile, measured two ways: from
    what was stored (as each row records it) and against the *true* native noise."""
    clean, mask = _scene(6, seed=4)
    noisy = _poisson_gaussian(clean, 0.05, 0.5, seed=5)
    fit = estimate_noise(noisy, mask)
    out, p = add_noise_to_snr(noisy, mask, fit, snr, torch.arange(6) + 100)
    kept = p["kept"]
    assert kept.all()  # these tiles have native SNR ~20-60
    assert ((p["snr_measured"] / snr - 1).abs() < 0.05).all(), p["snr_measured"].tolist()
    # Truth: the contrast of the stored image over the true total noise at the fg mean.
    mu = _fg_mean(clean, mask)
    fg, bg = mask.flatten(1).double(), (~mask).flatten(1).double()
    s = (out.flatten(1) * fg).sum(1) / fg.sum(1) - (out.flatten(1) * bg).sum(1) / bg.sum(1)
    native = 0.05 * mu + 0.5 + 1 / 12
    added = p["added_scale"] * fit.variance(mu)  # what was added, from the fitted model
    total = native + added + 1 / 12  # + the final rounding
    assert ((s / total.sqrt() / snr - 1).abs() < 0.05).all()
    # Integers on the data's grid, offset so that nothing is clipped at 0.
    assert torch.equal(out, out.round()) and out.min() > 0
    assert (p["offset"] > 0).all()


def test_tiles_already_below_the_target_are_skipped_unchanged():
    clean, mask = _scene(2, seed=6)
    noisy = _poisson_gaussian(clean, 1.0, 4.0, seed=7)
    fit = estimate_noise(noisy, mask)
    target = float(native_snr(noisy, mask, fit).max()) * 1.5
    out, p = add_noise_to_snr(noisy, mask, fit, target, torch.arange(2))
    assert not p["kept"].any() and torch.equal(out, noisy)


def test_noise_split_is_reproducible_and_batch_invariant():
    clean, mask = _scene(3, seed=8)
    noisy = _poisson_gaussian(clean, 0.1, 1.0, seed=9)
    fit = estimate_noise(noisy, mask)
    seeds = torch.tensor([11, 12, 13])
    full, _ = add_noise_to_snr(noisy, mask, fit, 2, seeds)
    one_fit = estimate_noise(noisy[1:2], mask[1:2])
    one, _ = add_noise_to_snr(noisy[1:2], mask[1:2], one_fit, 2, seeds[1:2])
    assert torch.equal(full[1:2], one)


def test_noise_retained_matches_white_noise_through_the_psf():
    """A white field blurred by the level's PSF keeps the predicted variance fraction."""
    from synthesis.corruptions import psf

    g = torch.Generator().manual_seed(0)
    n = torch.randn(8, 1, 256, 256, generator=g, dtype=torch.float64)
    for family, blur in (("sib", psf.sib), ("svb", psf.svb)):
        for level in (1, 3):
            rho = noise_retained(family, level, 256, 256)
            var = blur(n, level).var(dim=0, correction=1)[0]
            inner = (slice(32, -32), slice(32, -32))  # away from the mirrored border
            ratio = var[inner].mean() / rho[inner].mean()
            assert abs(float(ratio) - 1) < 0.06, (family, level, float(ratio))


@pytest.mark.parametrize("family", ["sib", "svb"])
def test_blur_splits_restore_the_native_noise_level(family: str):
    """After the blur and the restored noise, the total noise variance at a flat level is
    the native one (measured on a flat image, where blur changes no signal)."""
    flat = torch.full((4, 1, 256, 256), 60.0, dtype=torch.float64)
    noisy = _poisson_gaussian(flat, 0.2, 1.0, seed=10)
    fit = estimate_noise(noisy)
    out, p = blur_real(noisy, fit, family, 3, torch.arange(4))
    native = float(noisy[..., 32:-32, 32:-32].var())
    after = float(out[..., 32:-32, 32:-32].var())
    assert abs(after / native - 1) < 0.05, (native, after)
    assert float(p["noise_retained"][0]) < 0.2


def test_bbbc038_tiles(bbbc038_dir):
    """On real nuclei: a fit for every test tile, native SNRs in a plausible range, and the
    noise splits on target (median and 95th percentile of |error| within 5%)."""
    from synthesis.groundtruth.sources import open_source

    src = open_source(str(bbbc038_dir), "nucleus", seed=0, counts={"test": 24})
    items = src.load(src.ids("test"))
    x = torch.from_numpy(np.stack([it.image.astype(np.float64) for it in items]))[:, None]
    m = torch.from_numpy(np.stack([it.mask != 0 for it in items]))[:, None]
    fit = estimate_noise(x, m)
    assert (fit.samples > 1000).all() and torch.isfinite(fit.a).all()
    snr = native_snr(x, m, fit)
    assert (snr > 2).all() and float(snr.median()) > 8
    out, p = add_noise_to_snr(x, m, fit, 3, torch.arange(len(items)))
    err = (p["snr_measured"][p["kept"]] / 3 - 1).abs()
    assert float(err.median()) < 0.05 and float(err.quantile(0.95)) < 0.05

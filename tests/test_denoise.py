"""Noise model fits against known truth, clean targets, the denoiser and its model fitting.

(The gamma draws of the clean targets are tested with the other streams, tests/test_rng.py.)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from synthesis.models.gan_training import (
    DENOISER_OVERRIDES,
    PRESETS,
    Pix2PixTrainer,
    with_overrides,
)
from synthesis.render import clean_model as cm
from synthesis.render import denoise as dn
from synthesis.render import morphology as mo
from synthesis.render import noise_model as nm

#: Tiny models run fastest on one thread (conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def _discs(b: int, size: int, seed: int, count: int = 4, rmax: int | None = None) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = torch.zeros(b, 1, size, size, dtype=torch.bool)
    for i in range(b):
        for _ in range(count):
            cy, cx = torch.randint(6, size - 6, (2,), generator=gen).tolist()
            r = int(torch.randint(3, rmax or max(4, size // 8), (1,), generator=gen))
            masks[i, 0] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return masks


def _model(**kw) -> nm.NoiseModel:
    base = dict(white_a=0.0, white_b=0.0, corr_std=0.0, corr_sigma_px=1.0, quant_step=0.0)
    base.update(kw)
    return nm.NoiseModel(
        **{k: torch.tensor([float(v)], dtype=torch.float64) for k, v in base.items()}
    )


def test_immerkaer_on_white_noise_over_a_ramp():
    """Gaussian noise sigma 0.05 on a linear ramp: the estimate is within 3% (256x256 px;
    the estimator's relative standard error is ~0.5% here), the ramp contributes nothing."""
    h = w = 256
    ramp = torch.linspace(0, 1, w).expand(h, w)[None, None]
    noise = torch.randn(1, 1, h, w, generator=torch.Generator().manual_seed(0)) * 0.05
    assert float(nm.immerkaer_sigma(ramp)[0]) < 1e-6
    assert float(nm.immerkaer_sigma(ramp + noise)[0]) == pytest.approx(0.05, rel=0.03)


def test_sample_noise_variance_matches_the_model():
    """Flat image 0.2, var = a x + b + corr_std^2 + q^2/12: sample variance within 3%
    (4 x 128^2 values of a field correlated over ~1 px: relative standard error ~1.5%)."""
    m = _model(white_a=0.01, white_b=1e-4, corr_std=0.03, corr_sigma_px=1.5, quant_step=0.01)
    clean = torch.full((4, 1, 128, 128), 0.2)
    noisy, p = nm.sample_noise(clean, torch.arange(4), m)
    expected = 0.01 * 0.2 + 1e-4 + 0.03**2 + 0.01**2 / 12
    assert float((noisy - clean).double().var()) == pytest.approx(expected, rel=0.03)
    assert float((noisy - clean).double().mean()) == pytest.approx(0.0, abs=2e-3)
    assert torch.equal(p["index"], torch.zeros(4, dtype=torch.long))
    # Rows do not depend on their batch (up to the float rounding of the grouped blur).
    alone, _ = nm.sample_noise(clean[2:3], torch.tensor([2]), m)
    torch.testing.assert_close(alone, noisy[2:3], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "truth",
    [
        dict(white_a=0.002, white_b=1e-4, corr_std=0.02, corr_sigma_px=1.0),
        dict(white_a=0.0, white_b=2e-4, corr_std=0.03, corr_sigma_px=0.7),
        dict(white_a=0.004, white_b=0.0, corr_std=0.0, corr_sigma_px=1.0),
    ],
)
def test_fit_noise_recovers_known_parameters(truth):
    """Discs at 0.4 on a 0.1 background with modelled noise: the method-of-moments fit
    recovers what the data identify. Tolerances (from the spread over 6 seeds of 4 x 128^2
    images, worst case 16% on the white variances): white variance at the background and
    foreground levels within 20%, corr_std within 10% (3e-3 absolute when it is 0),
    correlation sigma within 0.15 px."""
    masks = _discs(4, 128, seed=3, count=5)
    clean = torch.where(masks, 0.4, 0.1).float()
    noisy, _ = nm.sample_noise(clean, torch.arange(4) + 10, _model(**truth))
    med = nm.fit_noise(noisy, masks).summary()
    for level in (0.1, 0.4):
        var = med["white_a"] * level + med["white_b"]
        assert var == pytest.approx(truth["white_a"] * level + truth["white_b"], rel=0.2), med
    assert med["corr_std"] == pytest.approx(truth["corr_std"], rel=0.1, abs=3e-3), med
    if truth["corr_std"] > 0:
        assert med["corr_sigma_px"] == pytest.approx(truth["corr_sigma_px"], abs=0.15), med


def test_fit_noise_needs_background():
    full = torch.ones(1, 1, 32, 32, dtype=torch.bool)
    full[0, 0, 0, 0] = False
    with pytest.raises(ValueError, match="interior pixels of background"):
        nm.fit_noise(torch.rand(1, 1, 32, 32), full)


def test_label_components_matches_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    masks = _discs(3, 64, seed=5, count=6)
    masks[0, 0, 10:12, 30:50] = True  # a thin bar joining discs
    lab = mo.label_components(masks)
    for i in range(3):
        _, n = ndimage.label(masks[i, 0].numpy(), structure=np.ones((3, 3)))
        assert lab[i].unique().numel() - 1 == n
    assert bool(((lab > 0) == masks).all())


def test_sample_clean_follows_the_model():
    """Objects take gamma intensities (mean k theta within 10% over ~200 objects), the
    background one of the listed levels; an object's level does not depend on its batch."""
    model = cm.CleanModel(
        gamma_shape=16.0,
        gamma_scale=0.025,
        background_levels=(0.05,),
        texture_rel_std=0.0,
        blur_sigma_px=0.5,
    )
    masks = _discs(16, 96, seed=6, count=14)
    clean, p = cm.sample_clean(masks, torch.arange(16), model)
    assert clean.shape == masks.shape and clean.dtype == torch.float32
    assert torch.allclose(p["background"], torch.tensor(0.05, dtype=torch.float64))
    lab = mo.label_components(masks)
    means = mo.object_means(clean, lab)
    assert means.numel() > 100
    assert float(means.mean()) == pytest.approx(16 * 0.025, rel=0.1)
    far = ~mo.dilate(masks, 3)
    assert float(clean[far].mean()) == pytest.approx(0.05, abs=1e-4)
    # Equal up to float rounding: the grouped convolution of the blur may block differently.
    alone, _ = cm.sample_clean(masks[3:4], torch.tensor([3]), model)
    torch.testing.assert_close(alone, clean[3:4], rtol=0, atol=1e-6)


def test_fit_clean_model_recovers_gamma():
    """Unblurred objects with Gamma(9, 0.04) levels: the moment fit over > 200 objects gives
    the mean within 7% (3 standard errors: CV 1/3 / sqrt(200) = 2.4%) and the shape within 35%
    (the standard error of a variance ratio over 200 values is ~11%)."""
    model = cm.CleanModel(
        gamma_shape=9.0,
        gamma_scale=0.04,
        background_levels=(0.1,),
        texture_rel_std=0.0,
        blur_sigma_px=0.01,
    )
    masks = _discs(40, 96, seed=8, count=10)
    clean, _ = cm.sample_clean(masks, torch.arange(40), model)
    fitted = cm.fit_clean_model(clean, masks)
    assert mo.object_means(clean, mo.label_components(masks)).numel() > 200
    assert fitted.gamma_shape * fitted.gamma_scale == pytest.approx(0.36, rel=0.07)
    assert fitted.gamma_shape == pytest.approx(9.0, rel=0.35)
    assert np.median(fitted.background_levels) == pytest.approx(0.1, abs=1e-4)


def test_residual_noise_measures_added_noise():
    masks = _discs(2, 128, seed=9)
    clean = torch.where(masks, 0.5, 0.1).float()
    r0 = dn.residual_noise(clean, masks)
    assert float(r0["rel_total"].max()) < 1e-3 and float(r0["contrast"][0]) == pytest.approx(
        0.4, rel=1e-3
    )
    noisy = clean + 0.02 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    r = dn.residual_noise(noisy, masks)
    assert float(r["rel_white"].mean()) == pytest.approx(0.05, rel=0.05)
    assert float(r["rel_total"].mean()) == pytest.approx(0.05, rel=0.05)
    assert float(r["snr8_excess"].mean()) == pytest.approx(math.sqrt(1 + 0.4**2) - 1, rel=0.1)


def test_denoiser_reduces_background_variance():
    """A tiny denoiser trained 60 steps (L1, lr 2e-3, 32x32 crops of modelled pairs) on the
    pipeline's own pairs: on unseen 64x64 noisy images the background variance falls > 4x
    (measured ~12x), the noise relative to the contrast (what adds to the camera noise) falls
    > 2x, and the L1 error to the clean image falls."""
    noise = _model(white_a=0.01, white_b=4e-4, corr_std=0.02, corr_sigma_px=1.0)
    clean_model = cm.CleanModel(gamma_shape=20.0, gamma_scale=0.02, background_levels=(0.05, 0.1))
    s = with_overrides(
        PRESETS["tiny"],
        **DENOISER_OVERRIDES,
        steps=60,
        gan_weight=0.0,
        ngf=8,
        batch_size=4,
        lr=2e-3,
    )
    trainer = Pix2PixTrainer(s, "denoiser-test", 1)
    for step in range(s.steps):
        m = _discs(4, 32, seed=100 + step, count=3, rmax=7)
        seeds = torch.arange(4) + 10 * step
        c, _ = cm.sample_clean(m, seeds, clean_model)
        n, _ = nm.sample_noise(c, seeds, noise)
        trainer.train_step(n * 2 - 1, c * 2 - 1)
    m = _discs(2, 64, seed=999, rmax=12)
    seeds = torch.tensor([7, 8])
    c, _ = cm.sample_clean(m, seeds, clean_model)
    n, _ = nm.sample_noise(c, seeds, noise)
    d = dn.denoise(n, trainer.G)
    before, after = dn.residual_noise(n, m), dn.residual_noise(d, m)
    assert bool((after["total_sigma"] ** 2 < before["total_sigma"] ** 2 / 4).all()), (before, after)
    assert bool((after["rel_total"] < before["rel_total"] / 2).all()), (before, after)
    assert float((d - c).abs().mean()) < float((n - c).abs().mean())


def test_fit_models_pools_image_sizes():
    """fit_models on pairs of two sizes (two batches): one noise fit per image, and a clean
    model pooled over both groups: every image's background level (0.1, within 3e-3: the
    noise's mean over a background), and the mean object level of Gamma(9, 0.04), 0.36, within
    15% (~4 standard errors: ~70 objects in two groups, sd 0.12, pooled SE ~4%)."""
    from synthesis.models.gan_training import PairSet

    truth = _model(white_a=0.002, white_b=1e-4, corr_std=0.02, corr_sigma_px=1.0)
    model = cm.CleanModel(
        gamma_shape=9.0,
        gamma_scale=0.04,
        background_levels=(0.1,),
        texture_rel_std=0.0,
        blur_sigma_px=0.01,
    )
    masks, images = [], []
    for b, size, seed in ((3, 128, 11), (3, 96, 12)):
        m = _discs(b, size, seed=seed, count=16, rmax=10)
        c, _ = cm.sample_clean(m, torch.arange(b) + seed, model)
        n, _ = nm.sample_noise(c, torch.arange(b) + seed, truth)
        masks += list(m[:, 0])
        images += list(n[:, 0])
    noise, clean = dn.fit_models(PairSet(masks, images), [0.0] * 6)
    assert noise.white_a.shape == (6,)
    assert len(clean.background_levels) == 6
    assert np.median(clean.background_levels) == pytest.approx(0.1, abs=3e-3)
    assert clean.gamma_shape * clean.gamma_scale == pytest.approx(0.36, rel=0.15)
    full = torch.ones(32, 32, dtype=torch.bool)
    with pytest.raises(ValueError, match="enough background and foreground"):
        dn.fit_models(PairSet([full], [torch.rand(32, 32)]), [0.0])

"""Physics renderer: statistics against theory, contrast, replay, batch independence, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from synthesis.filters import gaussian
from synthesis.groundtruth.masks import generate_masks
from synthesis.render.physics import (
    PARAM_NAMES,
    RENDER_SETTINGS,
    _gamma_wilson_hilferty,
    _unit_field,
    _wide_blur,
    render,
    render_with_params,
    sample_render_params,
)
from synthesis.rng import streams


def _square_mask(b: int = 2, size: int = 64) -> torch.Tensor:
    m = torch.zeros(b, 1, size, size, dtype=torch.bool)
    m[:, :, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = True
    return m


def _flat_params(**over: float) -> dict[str, float]:
    """Parameters with every optional effect off (no texture spread except the gamma)."""
    p = {
        "gamma_shape": 6.9,
        "gamma_scale": 100.0,
        "texture_sigma_px": 1.5,
        "coarse_sigma_px": 10.0,
        "coarse_weight": 0.3,
        "instance_log_sd": 0.0,
        "rim_dimming": 0.0,
        "rim_sigma_px": 1.0,
        "background_fraction": 0.05,
        "background_variation": 0.0,
        "background_sigma_px": 40.0,
        "haze_fraction": 0.0,
        "haze_sigma_px": 10.0,
        "psf_sigma_px": 1e-3,
    }
    p.update(over)
    return p


# ----------------------------------------------------------------------------- physics


def test_wilson_hilferty_gives_the_gamma_distribution():
    # Mitochondria foreground fit of the authors: shape 6.9, scale 100. From 2^20 normals:
    # mean k theta and variance k theta^2 within 1 % / 3 % (sampling sd ~0.04 % / 0.2 %; the
    # approximation's own error is < 0.5 %); quantiles 1..99 % within 2 % of scipy's.
    z = torch.from_numpy(np.random.default_rng(0).standard_normal(1 << 20)).float()
    x = _gamma_wilson_hilferty(z, torch.tensor(6.9), torch.tensor(100.0)).double().numpy()
    assert x.mean() == pytest.approx(690.0, rel=0.01)
    assert x.var() == pytest.approx(6.9 * 100.0**2, rel=0.03)
    q = [0.01, 0.1, 0.5, 0.9, 0.99]
    np.testing.assert_allclose(np.quantile(x, q), stats.gamma.ppf(q, 6.9, scale=100.0), rtol=0.02)


def test_texture_field_unit_variance_and_gaussian_correlation():
    # White noise filtered by a Gaussian of sd s has autocorrelation exp(-d^2 / (4 s^2)).
    # 8 fields of 256^2 at s = 2 px hold ~8 * 256^2 / (4 pi s^2) ~ 10^4 independent values:
    # the variance is known to ~2 %; tolerance 5 %. Correlation at lag s: exp(-1/4) +- 0.05.
    s = 2.0
    f = _unit_field(torch.arange(8), streams.TEXTURE_FINE, (256, 256), torch.tensor(s))
    assert f.shape == (8, 1, 256, 256)
    assert float(f.var()) == pytest.approx(1.0, rel=0.05)
    assert abs(float(f.mean())) < 0.05
    lag = int(s)
    corr = float((f[..., lag:] * f[..., :-lag]).mean() / f.var())
    assert corr == pytest.approx(math.exp(-(lag**2) / (4 * s * s)), abs=0.05)


def test_half_resolution_haze_matches_a_full_resolution_blur():
    # Haze is blurred at half resolution where sigma >= 6 px; against the full-resolution
    # blur of the same sigma its error is < 1.5 % of the peak, and the flux is kept to 0.5 %
    # (the pattern is far from the edges).
    x = torch.zeros(3, 1, 128, 128)
    x[:, :, 60:68, 40:90] = 1.0
    sigma = torch.tensor([3.0, 6.0, 12.0])
    full = gaussian.gaussian_blur(x, sigma)
    half = _wide_blur(x, sigma)
    assert torch.equal(half[0], full[0])  # below 6 px: the full-resolution blur itself
    assert float((half - full).abs().max()) < 0.015 * float(full[1:].amax())
    assert torch.allclose(half.sum((1, 2, 3)), x.sum((1, 2, 3)), rtol=5e-3)


def test_coarse_grid_fields_keep_unit_variance_and_correlation():
    # Smooth fields are made on a coarser grid and upsampled: at sigma = 12 px (grid 8x
    # coarser) the variance and the correlation at lag sigma (exp(-1/4)) hold to 10 % / 0.06
    # over 16 fields (~16 * 256^2 / (4 pi 144) ~ 580 independent values: sd of var ~6 %).
    s = 12.0
    f = _unit_field(torch.arange(16), streams.TEXTURE_FINE, (256, 256), torch.tensor(s))
    assert float(f.var()) == pytest.approx(1.0, rel=0.10)
    lag = int(s)
    corr = float((f[..., lag:] * f[..., :-lag]).mean() / f.var())
    assert corr == pytest.approx(math.exp(-0.25), abs=0.06)


def test_flat_render_levels_match_the_parameters():
    # No PSF, haze or background variation: deep inside the square the image is the gamma
    # texture + background, outside exactly the background level 0.05 * k theta.
    m = _square_mask(4, 256)
    img = render_with_params(m, torch.arange(4), _flat_params(coarse_weight=0.0))
    bg_level = 0.05 * 690.0
    inner = img[:, :, 72:184, 72:184]
    outer = img[:, :, :40, :]
    assert torch.allclose(outer, torch.full_like(outer, bg_level), rtol=1e-5)
    # 4 x 112^2 values correlated over 4 pi s^2 = 28 px^2: ~1800 independent values, so the
    # mean is known to 263 / sqrt(1800) = 0.9 %; tolerance 3 %.
    assert float(inner.mean()) == pytest.approx(690.0 + bg_level, rel=0.03)
    # The variance is that of the gamma, k theta^2 (sd of the estimate ~3.5 %; tolerance 12 %).
    assert float(inner.var()) == pytest.approx(6.9 * 100.0**2, rel=0.12)


def test_psf_spreads_an_edge_like_a_gaussian():
    # An edge through a Gaussian PSF of sd s is an erf profile: 16 % / 84 % at -s / +s.
    m = torch.zeros(1, 1, 64, 64, dtype=torch.bool)
    m[..., 32:] = True
    p = _flat_params(gamma_shape=1e6, gamma_scale=1e-3, background_fraction=0.0, psf_sigma_px=2.0)
    p["background_fraction"] = 1e-9  # keep the background strictly positive
    row = render_with_params(m, torch.tensor([1]), p)[0, 0, 32].double()
    level = float(row[50:].mean())
    # Pixel 32 starts at x = 32; pixel centres sit at x + 0.5 in continuous coordinates.
    x = torch.arange(64.0) - 31.5
    expected = level * 0.5 * (1 + torch.erf(x / (2.0 * math.sqrt(2))))
    assert torch.allclose(row[20:44], expected[20:44].double(), atol=0.01 * level)


# ----------------------------------------------------------------------------- contract


@pytest.mark.parametrize("structure", ["er", "mito", "nucleus"])
def test_procedural_masks_render_with_clear_contrast(structure):
    masks = generate_masks(structure, torch.arange(6))
    out = render(masks.mask, torch.arange(6), structure, instances=masks.instances)
    img = out.image
    assert img.shape == masks.mask.shape and img.dtype == torch.float32
    assert bool((img > 0).all()) and bool(torch.isfinite(img).all())
    for i in range(6):
        fg = float(img[i][masks.mask[i]].mean())
        bg = float(img[i][~masks.mask[i]].mean())
        # SNR needs c = fg - bg > 0 and beta = bg > 0 with bg dim: fg >= 2 bg in every row
        # (measured: ER ~3-5x, mitochondria and nuclei ~5-15x).
        assert bg > 0 and fg >= 2 * bg, (i, fg, bg)
    assert len(out.params) == 6
    for p in out.params:
        json.dumps(p)
        assert set(PARAM_NAMES) <= set(p) and p["structure"] == structure


def test_mito_foreground_follows_the_authors_gamma_fit():
    # Foreground pixels of rendered mitochondria: the mean is k theta minus the PSF's spill at
    # the edges of 3-7 px tubes (measured ~0.8 k theta), the CV about the gamma's 1/sqrt(k)
    # = 0.38 (measured ~0.35-0.45). Tolerances: mean / k theta in [0.6, 1.1], CV in [0.25, 0.6].
    masks = generate_masks("mito", torch.arange(4))
    out = render(masks.mask, torch.arange(4), "mito")
    for i, p in enumerate(out.params):
        fg = out.image[i][masks.mask[i]].double()
        bg = float(out.image[i][~masks.mask[i]].mean())
        signal = fg - bg
        assert 0.6 <= float(signal.mean()) / (p["gamma_shape"] * p["gamma_scale"]) <= 1.1
        assert 0.25 <= float(signal.std() / signal.mean()) <= 0.6


def test_sampled_params_lie_in_the_table_ranges():
    p = sample_render_params(torch.arange(64), "nucleus")
    table = RENDER_SETTINGS["nucleus"]
    for name in PARAM_NAMES:
        lo, hi = getattr(table, name)
        assert bool((p[name] >= lo - 1e-4).all()) and bool((p[name] <= hi + 1e-4).all()), name
    # Uniform draws: 64 values span most of each non-degenerate range.
    lo, hi = table.gamma_shape
    assert float(p["gamma_shape"].max() - p["gamma_shape"].min()) > 0.8 * (hi - lo)


def test_replay_from_stored_params_is_exact():
    masks = generate_masks("nucleus", torch.tensor([3, 4]))
    out = render(masks.mask, torch.tensor([30, 40]), "nucleus", instances=masks.instances)
    stored = json.loads(json.dumps(out.params))
    again = render_with_params(
        masks.mask, torch.tensor([30, 40]), stored, instances=masks.instances
    )
    assert torch.equal(again, out.image)


def test_row_depends_only_on_its_seed_and_mask():
    masks = generate_masks("nucleus", torch.tensor([1, 2, 3]))
    batch = render(masks.mask, torch.tensor([7, 8, 9]), "nucleus", instances=masks.instances)
    alone = render(masks.mask[2:], torch.tensor([9]), "nucleus", instances=masks.instances[2:])
    assert batch.params[2] == alone.params[0]
    # Same arithmetic; only the convolution's summation order may differ with the batch.
    torch.testing.assert_close(batch.image[2:], alone.image, rtol=1e-5, atol=1e-3)
    other = render(masks.mask, torch.tensor([7, 8, 10]), "nucleus", instances=masks.instances)
    assert not torch.allclose(other.image[2], batch.image[2])


def test_instances_vary_brightness_between_nuclei():
    masks = generate_masks("nucleus", torch.tensor([5]))
    with_inst = render(masks.mask, torch.tensor([1]), "nucleus", instances=masks.instances)
    inst = masks.instances[0, 0]
    means = [float(with_inst.image[0, 0][inst == j].mean()) for j in range(1, int(inst.max()) + 1)]
    assert len(means) >= 3
    assert np.std(np.log(means)) > 0.05  # log-sd of the gains is 0.15-0.45


def test_images_are_finite_where_a_uniform_rounds_to_one():
    # For this seed rng.normal(stream 251) holds an inf (a float32 uniform rounded to 1.0).
    seed = torch.tensor([674459878199425333])
    out = render(_square_mask(1, 256), seed, "nucleus")
    assert bool(torch.isfinite(out.image).all())


def test_non_contiguous_and_float_mask():
    m = _square_mask(2, 64)
    base = render(m, torch.tensor([1, 2]), "mito").image
    wide = torch.zeros(2, 1, 64, 128, dtype=torch.float32)
    wide[..., ::2] = m.float()
    view = wide[..., ::2]
    assert not view.is_contiguous()
    torch.testing.assert_close(render(view, torch.tensor([1, 2]), "mito").image, base)


@pytest.mark.parametrize(
    ("mask", "kwargs", "exc", "match"),
    [
        (torch.zeros(2, 64, 64, dtype=torch.bool), {}, ValueError, r"shape \(B, 1, H, W\)"),
        (torch.full((2, 1, 64, 64), 2.0), {}, ValueError, "binary"),
        (torch.zeros(2, 1, 64, 64, dtype=torch.bool), {}, ValueError, "no foreground"),
        (_square_mask(2), {"structure": "golgi"}, ValueError, "structure must be one of"),
        (_square_mask(2), {"seeds": torch.tensor([1.0, 2.0])}, TypeError, "integers"),
        (
            _square_mask(2),
            {"instances": torch.zeros(2, 1, 64, 64)},
            TypeError,
            "integer labels",
        ),
        ("not a tensor", {}, TypeError, "torch.Tensor"),
    ],
)
def test_bad_inputs(mask, kwargs, exc, match):
    args = {"seeds": torch.tensor([1, 2]), "structure": "nucleus"} | kwargs
    with pytest.raises(exc, match=match):
        render(mask, args["seeds"], args["structure"], instances=args.get("instances"))


def test_bad_params():
    m = _square_mask(2)
    p = _flat_params()
    del p["psf_sigma_px"]
    with pytest.raises(ValueError, match="psf_sigma_px"):
        render_with_params(m, torch.tensor([1, 2]), p)
    with pytest.raises(ValueError, match=r"must be > 0"):
        render_with_params(m, torch.tensor([1, 2]), _flat_params(gamma_shape=0.0))
    with pytest.raises(ValueError, match=r"one dict per row"):
        render_with_params(m, torch.tensor([1, 2]), [_flat_params()])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    masks = generate_masks("nucleus", torch.tensor([1, 2]))
    cpu = render(masks.mask, torch.tensor([1, 2]), "nucleus", instances=masks.instances)
    gpu = render(
        masks.mask.cuda(), torch.tensor([1, 2]).cuda(), "nucleus", instances=masks.instances.cuda()
    )
    assert gpu.image.is_cuda
    torch.testing.assert_close(gpu.image.cpu(), cpu.image, rtol=1e-4, atol=1e-2)


def test_naive_renderer_is_mask_plus_blur():
    """The realism baseline: NAIVE_SCALE x the mask blurred by NAIVE_PSF_PX, nothing else."""
    from synthesis.filters.gaussian import gaussian_blur
    from synthesis.render.naive import NAIVE_PSF_PX, NAIVE_SCALE
    from synthesis.render.naive import render as naive

    m = torch.zeros(2, 1, 64, 64, dtype=torch.bool)
    m[0, :, 10:30, 12:40] = True
    m[1, :, 40:60, 5:20] = True
    out = naive(m, torch.tensor([1, 2]), "nucleus")
    assert torch.equal(out.image, gaussian_blur(m.float(), NAIVE_PSF_PX) * NAIVE_SCALE)
    assert out.params[0] == {"renderer": "naive", "psf_sigma_px": 1.5, "scale": 1000.0}
    inside, outside = out.image[0, 0, 20, 25], out.image[0, 0, 50, 50]
    assert float(inside) == pytest.approx(NAIVE_SCALE, rel=1e-4) and float(outside) == 0.0

"""The renderer fit: background statistics against known images, their invariance to gain
and offset, and a fit that recovers the ranges that made its target."""

from __future__ import annotations

import pytest
import torch

from synthesis.render.fit import (
    STATISTICS,
    background_statistics,
    fit_background,
    fit_train_snr,
    statistics_distance,
)
from synthesis.render.physics import RENDER_SETTINGS, render


def _discs(n: int, size: int = 128, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    cy, cx = (20 + torch.rand(n, 3, 1, 1, generator=g) * (size - 40) for _ in range(2))
    r = 6 + torch.rand(n, 3, 1, 1, generator=g) * 6
    return (((yy - cy) ** 2 + (xx - cx) ** 2) < r**2).any(1, keepdim=True)


def test_statistics_of_a_known_image():
    # Dark level 10, foreground 10 + 200, a far bright patch of 10 + 30 on 25 % of the tile.
    x = torch.full((1, 1, 128, 128), 10.0, dtype=torch.float64)
    m = torch.zeros_like(x, dtype=torch.bool)
    m[..., 10:30, 10:30] = True
    x[m] = 210.0
    x[..., 64:, 64:] = 40.0
    s = background_statistics(x, m)[0]
    assert s.shape == (len(STATISTICS),)
    assert float(s[0]) == pytest.approx(0.0, abs=1e-6)  # median: the dark level
    assert float(s[1]) == pytest.approx(30 / 200, rel=0.01)  # p95 and p99: the patch
    assert float(s[2]) == pytest.approx(30 / 200, rel=0.01)
    # The halo (1-6 px outside the square) is dark except for the foreground smoothed into it.
    assert 0 < float(s[3]) < 0.3


def test_statistics_do_not_depend_on_gain_or_offset():
    m = _discs(4)
    y = render(m, torch.arange(4), "nucleus").image.double()
    a = background_statistics(y, m)
    b = background_statistics(3.7 * y + 123.0, m)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_statistics_need_foreground_and_far_background():
    x = torch.ones(1, 1, 32, 32)
    m = torch.ones_like(x, dtype=torch.bool)
    m[..., 0, 0] = False  # background, but none far from the foreground
    with pytest.raises(ValueError, match="tile 0"):
        background_statistics(x, m)


def test_fit_recovers_the_ranges_that_made_the_target():
    truth = {"background_fraction": (0.02, 0.10), "background_variation": (0.8, 1.6)}
    grid = {
        "background_fraction": [(0.005, 0.05), (0.02, 0.10)],
        "background_variation": [(0.1, 0.5), (0.8, 1.6)],
        "haze_fraction": [RENDER_SETTINGS["nucleus"].haze_fraction],
    }
    from dataclasses import replace

    m = _discs(48, seed=1)
    target = replace(RENDER_SETTINGS["nucleus"], **truth)
    # The "real" tiles: other seeds than the fit's renders.
    real = render(m, 1000 + torch.arange(48), "nucleus", settings=target).image
    fit = fit_background(real, m, grid=grid, seed=0)
    assert fit.table[0][0] == truth | {"haze_fraction": grid["haze_fraction"][0]}
    assert fit.settings.background_variation == truth["background_variation"]
    assert fit.distance < 0.75 * fit.table[1][1]
    assert statistics_distance(fit.real, fit.real) == 0.0


def test_train_snr_fit_reads_the_native_snr_of_noisy_tiles():
    """Tiles noised by the camera at known SNRs 10, 12, ..., 48: each native SNR is read
    within 12 % (a blind fit on one 128 x 128 tile), their median error is under 3 %, and the range runs from the reference SNR to the 95 % quantile of the
    readings, rounded; a quantile out of (0, 1] is refused."""
    from synthesis.corruptions.noise import add_noise
    from synthesis.levels import REFERENCE_SNR

    targets = torch.arange(10.0, 50.0, 2.0)
    n = targets.shape[0]
    mask = torch.zeros(n, 1, 128, 128, dtype=torch.bool)
    mask[:, :, 32:96, 20:60] = True
    mask[:, :, 40:70, 80:110] = True
    clean = torch.where(mask, 1000.0, 50.0)
    adu = add_noise(clean, mask, targets, torch.arange(n) + 5).adu.float()
    (low, high), snr = fit_train_snr(adu, mask)
    assert torch.allclose(snr.float(), targets, rtol=0.12), snr
    assert float((snr.float() / targets - 1).abs().median()) < 0.03, snr
    assert low == REFERENCE_SNR
    assert high == round(float(torch.quantile(snr, 0.95)))
    assert abs(high - float(torch.quantile(targets, 0.95))) <= 0.12 * 47
    with pytest.raises(ValueError, match="quantile"):
        fit_train_snr(adu, mask, quantile=0.0)

"""Realism measures (synthesis/realism.py): the five paired distances on inputs whose values
are known by hand, the rank helpers against scipy, and the domain score at both ends (same
distribution: near 0.5; clearly different: near 1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from synthesis import realism as rz

#: Small enough for a test that runs in about a second per call on 2 cores.
SMALL = rz.DomainSettings(crop=32, steps=80, batch=16)


def _disc(n: int = 32, r: float = 9.0) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    return (yy - n / 2 + 0.5) ** 2 + (xx - n / 2 + 0.5) ** 2 <= r * r


def test_normalise_levels_removes_gain_and_offset():
    fg = _disc()
    x = torch.where(fg, 50.0, 10.0).double() + torch.linspace(0, 1, 32 * 32).reshape(32, 32)
    y = rz.normalise_levels(x, fg)
    assert y.dtype == torch.float64
    assert float(y[fg].mean()) == pytest.approx(1.0, abs=1e-12)
    assert float(torch.quantile(y[~fg], 0.005)) == pytest.approx(0.0, abs=1e-12)
    assert torch.allclose(rz.normalise_levels(3.0 * x + 100.0, fg), y, atol=1e-12)
    with pytest.raises(ValueError, match="foreground and background"):
        rz.normalise_levels(x, torch.zeros_like(fg))


def test_identical_or_affinely_related_images_are_at_distance_zero():
    g = torch.Generator().manual_seed(0)
    fg = _disc()
    x = torch.where(fg, 40.0, 8.0) + torch.rand(32, 32, generator=g, dtype=torch.float64)
    d = rz.distances(rz.normalise_levels(x, fg), rz.normalise_levels(x, fg), fg)
    assert list(d) == list(rz.DISTANCES) and all(v == 0.0 for v in d.values())
    # A batch of affine copies (another gain and offset) is the same image once normalised.
    masks = torch.stack([fg, fg])[:, None]
    real = torch.stack([x, x.flip(0)])[:, None]
    m = rz.mean_distances(real, 2.5 * real + 7.0, torch.stack([fg, fg.flip(0)])[:, None])
    assert m["tiles"] == 2 and all(m[k] < 1e-12 for k in rz.DISTANCES)
    # A tile without background is left out of the mean; none left is an error.
    full = masks.clone()
    full[1] = True
    assert rz.mean_distances(real, real, full)["tiles"] == 1
    with pytest.raises(ValueError, match="no tile"):
        rz.mean_distances(real, real, torch.ones_like(masks))


def test_distances_of_a_raised_background_by_hand():
    """Real: foreground 1, background 0. Rendered: the same foreground, background 0.2,
    i.e. ``0.8 real + 0.2``. By hand: W1 over all pixels 0.2 x background share, W1 over
    the foreground 0, background/foreground ratio 0.2, foreground CV 0, and every power
    spectrum radius scaled by 0.8^2: |log10 0.64|."""
    fg = _disc()
    real = fg.double()
    syn = 0.8 * real + 0.2
    d = rz.distances(real, syn, fg)
    bg_share = float((~fg).double().mean())
    assert d["hist_w1_all"] == pytest.approx(0.2 * bg_share, rel=1e-12)
    assert d["hist_w1_fg"] == 0.0 and d["fg_cv"] == 0.0
    assert d["bg_fg_ratio"] == pytest.approx(0.2, rel=1e-12)
    assert d["raps_log10"] == pytest.approx(abs(math.log10(0.64)), rel=1e-9)
    # The foreground CV: a foreground of 0.5 and 1.5 in a checkerboard (mean 1) has sd 0.5.
    sq = torch.zeros(32, 32, dtype=torch.bool)
    sq[8:16, 8:16] = True
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    checker = torch.where((yy + xx) % 2 == 0, 0.5, 1.5).double()
    flat, textured = sq.double(), torch.where(sq, checker, 0.0)
    assert rz.distances(flat, textured, sq)["fg_cv"] == pytest.approx(0.5, rel=1e-12)
    with pytest.raises(ValueError, match="square"):
        rz.raps(torch.zeros(16, 32))


def test_raps_of_a_single_frequency():
    """A cosine of 5 cycles per image puts all its power at radius 5."""
    n = 32
    x = torch.cos(2 * math.pi * 5 * torch.arange(n, dtype=torch.float64) / n).expand(n, n)
    p = rz.raps(x)
    assert p.shape == (n // 2 - 1,)
    assert int(p.argmax()) == 5 - 1 and float(p.sum() - p[4]) < 1e-12 * float(p[4])


def test_ranks_auc_and_spearman_against_scipy():
    assert rz.average_ranks([3, 1, 3, 2]).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert rz.rank_auc([2, 3], [0, 1]) == 1.0 and rz.rank_auc([0, 1], [2, 3]) == 0.0
    assert rz.rank_auc([1, 1], [1, 1]) == 0.5
    assert rz.spearman([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)
    assert rz.spearman([1, 2, 3], [3, 2, 1]) == -1.0
    assert rz.spearman([1, 2, 3], [5, 5, 5]) is None and rz.spearman([1], [2]) is None
    with pytest.raises(ValueError, match="same length"):
        rz.spearman([1, 2], [1])
    rs = np.random.default_rng(0)
    for _ in range(5):
        x = rs.integers(0, 6, 17).astype(float)  # with ties
        y = x + rs.integers(0, 4, 17)
        assert rz.spearman(x.tolist(), y.tolist()) == pytest.approx(stats.spearmanr(x, y)[0])
        pos, neg = rs.normal(0.3, 1, 20), rs.normal(0, 1, 30)
        u = stats.mannwhitneyu(pos, neg).statistic
        assert rz.rank_auc(pos, neg) == pytest.approx(u / (20 * 30))


def _blobs(n: int, seed: int, texture: float = 0.0, size: int = 64) -> torch.Tensor:
    """``n`` images of six smooth Gaussian blobs (sd 5 px) plus weak white noise (sd 0.05);
    with ``texture``, each pixel is multiplied by ``1 + texture x`` a standard normal."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    x = torch.zeros(n, 1, size, size)
    for i in range(n):
        for cy, cx in torch.rand(6, 2, generator=g) * size:
            x[i, 0] += torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 5.0**2))
    x = 100 + 50 * x + 0.05 * 50 * torch.randn(x.shape, generator=g)
    if texture:
        x = x * (1 + texture * torch.randn(x.shape, generator=g))
    return x


def test_domain_score_same_distribution_near_half_different_near_one():
    """64 vs 64 images of 64x64 (32 per class per fold): two samples of one distribution
    score < 0.65 (a chance AUC's sd over the two folds is about 0.05), smooth blobs against
    the same kind of blobs with strong multiplicative texture > 0.95."""
    a, b, textured = _blobs(64, 1), _blobs(64, 2), _blobs(64, 3, texture=0.3)
    state = torch.get_rng_state()
    same = rz.domain_score(a, b, seed=0, settings=SMALL)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    different = rz.domain_score(a, textured, seed=0, settings=SMALL)
    assert same["auc"] < 0.65, same
    assert different["auc"] > 0.95, different
    assert len(same["auc_folds"]) == 2 and same["auc"] == pytest.approx(sum(same["auc_folds"]) / 2)
    assert same["real"] == same["synthetic"] == 64 and same["settings"]["steps"] == SMALL.steps
    # Deterministic for a seed, whatever the process' thread count; gain/offset-free.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        again = rz.domain_score(3.0 * a + 9.0, textured, seed=0, settings=SMALL)
    finally:
        torch.set_num_threads(before)
    assert again["auc_folds"] == pytest.approx(different["auc_folds"], abs=1e-6)


def test_domain_score_checks_its_inputs():
    x = torch.zeros(4, 1, 32, 32)
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        rz.domain_score(x[:, 0], x, seed=0, settings=SMALL)
    with pytest.raises(ValueError, match="at least 2"):
        rz.domain_score(x[:1], x, seed=0, settings=SMALL)
    with pytest.raises(ValueError, match="share H, W"):
        rz.domain_score(x, torch.zeros(4, 1, 32, 16), seed=0, settings=SMALL)
    with pytest.raises(TypeError, match="floating-point"):
        rz.domain_score(x.long(), x, seed=0, settings=SMALL)


def test_realism_measures_gives_all_of_them():
    from synthesis.models.unet import UNet

    a, b = _blobs(8, 1), _blobs(8, 3, texture=0.3)
    masks = a > a.mean()
    small = rz.DomainSettings(crop=32, steps=5)
    r = rz.realism_measures(a, b, masks, seed=1, settings=small)
    assert list(r["measures"]) == [m for m in rz.MEASURES if m != "feature_fd"]
    assert r["tiles"] == 8 and r["features"] is None
    assert r["measures"]["domain_auc"] == r["domain"]["auc"]
    assert all(math.isfinite(v) and v >= 0 for v in r["measures"].values())
    net = UNet(base_channels=4, depth=2, seed=0)
    r = rz.realism_measures(a, b, masks, seed=1, settings=small, network=net)
    assert list(r["measures"]) == list(rz.MEASURES)
    assert r["measures"]["feature_fd"] == r["features"]["fd"] > 0


def test_frechet_distance_of_gaussians_matches_theory():
    """Between N(m1, S1) and N(m2, S2): |m1 - m2|^2 + tr(S1 + S2 - 2 (S1 S2)^1/2). For
    diagonal covariances diag(1, 4) and diag(9, 1), means 0 and (1, 2): 5 + (1 + 4 + 9 + 1)
    - 2 (3 + 2) = 10; within 5% for 200 000 samples."""
    g = torch.Generator().manual_seed(3)
    n = 200_000
    a = torch.randn(n, 2, generator=g, dtype=torch.float64) * torch.tensor([1.0, 2.0])
    b = torch.randn(n, 2, generator=g, dtype=torch.float64) * torch.tensor([3.0, 1.0])
    b = b + torch.tensor([1.0, 2.0])
    assert rz.frechet_distance(a, b) == pytest.approx(10.0, rel=0.05)
    # A rotation of both (the distance is invariant to it) gives the same value.
    rot = torch.tensor([[0.6, -0.8], [0.8, 0.6]], dtype=torch.float64)
    assert rz.frechet_distance(a @ rot, b @ rot) == pytest.approx(rz.frechet_distance(a, b))
    with pytest.raises(ValueError, match="share D"):
        rz.frechet_distance(a, b[:, :1])
    with pytest.raises(ValueError, match="N >= 2"):
        rz.frechet_distance(a[:1], b)


def test_feature_distance_is_zero_for_the_same_images_and_grows_with_a_change():
    """The same images: 0 up to round-off (the same pixels of the same features); images that differ in
    texture: > 0, and more for a larger change. Seeded (same value twice); the network's
    mode is restored; it sees z-scored images, so a gain and offset change nothing."""
    from synthesis.models.unet import UNet

    net = UNet(base_channels=4, depth=2, seed=0).train()
    a = _blobs(6, 1)
    masks = a > a.mean()
    same = rz.feature_distance(net, a, a, masks, seed=0)
    assert net.training
    assert same["fd"] < 1e-9 and same["pixels"]["foreground"] > 100
    assert rz.feature_distance(net, a, 3 * a + 7, masks, seed=0)["fd"] < 1e-6
    small = rz.feature_distance(net, a, _blobs(6, 1, texture=0.1), masks, seed=0)
    large = rz.feature_distance(net, a, _blobs(6, 1, texture=0.6), masks, seed=0)
    assert 0 < small["fd"] < large["fd"]
    assert rz.feature_distance(net, a, _blobs(6, 1, texture=0.1), masks, seed=0) == small
    assert small["fd"] == pytest.approx((small["fd_foreground"] + small["fd_background"]) / 2)
    with pytest.raises(ValueError, match="one shape"):
        rz.feature_distance(net, a, a, masks[:3], seed=0)
    with pytest.raises(ValueError, match="foreground"):
        rz.feature_distance(net, a, a, torch.zeros_like(masks), seed=0)

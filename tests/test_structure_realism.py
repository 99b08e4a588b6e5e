"""Mask-free realism measures of filamentous structures (synthesis.structure_realism)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from synthesis.structure_realism import (
    QUANTILE_LEVELS,
    compare_reports,
    empty_window_share,
    foreground_fraction,
    intensity_histograms,
    power_spectrum,
    skeleton_topology,
    skeleton_widths,
    structure_report,
)


def bar(width: int, n: int = 64) -> np.ndarray:
    m = np.zeros((n, n), bool)
    m[30 : 30 + width, 5 : n - 5] = True
    return m


def oblique_tube(width: float, angle: float, n: int = 96) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n].astype(float) - n / 2
    across = np.abs(-yy * np.cos(angle) + xx * np.sin(angle))
    along = np.abs(yy * np.sin(angle) + xx * np.cos(angle))
    return (across <= width / 2) & (along < n / 3)


def cross(n: int = 64) -> np.ndarray:
    m = np.zeros((n, n), bool)
    m[30:35, 5:60] = True
    m[5:60, 30:35] = True
    return m


def ring(n: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n]
    r = np.hypot(yy - n / 2, xx - n / 2)
    return (r >= 15) & (r <= 19)


def image_of(mask: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.where(mask, 400.0, 100.0) + rng.normal(0, 10, mask.shape)


# ----------------------------------------------------------------------------- widths


def test_bar_of_width_5_has_median_width_5():
    assert abs(np.median(skeleton_widths(bar(5))) - 5) <= 1


@pytest.mark.parametrize("angle", [0.3, 0.8, 1.2])
def test_oblique_tube_of_width_5_has_median_width_5(angle):
    assert abs(np.median(skeleton_widths(oblique_tube(5, angle))) - 5) <= 1


def test_widths_grow_with_the_bar_and_accept_torch():
    w3 = np.median(skeleton_widths(torch.from_numpy(bar(3))))
    w9 = np.median(skeleton_widths(bar(9).astype(np.uint8)))
    assert w9 - w3 == pytest.approx(6, abs=1)
    assert skeleton_widths(np.zeros((8, 8), bool)).size == 0


# ----------------------------------------------------------------------------- topology


def test_cross_has_one_branch_point_and_four_end_points():
    t = skeleton_topology(cross())
    assert (t["branch_points"], t["end_points"], t["puncta"]) == (1, 4, 0)
    assert len(t["segment_lengths"]) == 4
    assert np.all(t["segment_lengths"] > 20)
    assert t["branch_points_per_100px"] == pytest.approx(100 / t["skeleton_px"])


def test_ring_has_no_end_points():
    t = skeleton_topology(ring())
    assert (t["branch_points"], t["end_points"]) == (0, 0)
    assert len(t["segment_lengths"]) == 1
    assert t["segment_lengths"][0] == pytest.approx(2 * np.pi * 17, rel=0.1)


def test_bar_dot_and_empty():
    t = skeleton_topology(bar(5))
    assert (t["branch_points"], t["end_points"]) == (0, 2)
    m = bar(5)
    m[2, 2] = True  # an isolated pixel: a punctum, not two end points
    t = skeleton_topology(m)
    assert (t["end_points"], t["puncta"], len(t["segment_lengths"])) == (2, 1, 1)
    t = skeleton_topology(np.zeros((16, 16), bool))
    assert t["skeleton_px"] == 0 and np.isnan(t["end_points_per_100px"])


# ----------------------------------------------------------------------------- clustering


def test_empty_window_share_of_one_corner_blob():
    m = np.zeros((256, 256), bool)
    m[10:30, 10:30] = True
    assert empty_window_share(m, 64) == 15 / 16
    assert empty_window_share(np.ones((256, 256), bool)) == 0.0
    assert empty_window_share(np.zeros((200, 130), bool)) == 1.0  # 3 x 2 whole windows
    with pytest.raises(ValueError, match="larger"):
        empty_window_share(m, 512)


def test_foreground_fraction():
    assert foreground_fraction(bar(4)) == pytest.approx(4 * 54 / 64**2)
    with pytest.raises(ValueError, match="binary"):
        foreground_fraction(np.full((4, 4), 2))


# ----------------------------------------------------------------------------- intensity


def test_histograms_are_free_of_offset_and_gain():
    m = cross()
    x = image_of(m)
    a = intensity_histograms(x, m)
    b = intensity_histograms(7.0 * x + 500.0, m)
    c = intensity_histograms(torch.from_numpy(x - 90.0), torch.from_numpy(m))
    for other in (b, c):
        for key in ("fg_quantiles", "bg_quantiles", "fg_hist", "bg_hist"):
            np.testing.assert_allclose(other[key], a[key], atol=1e-9)
        assert other["bg_fg_ratio"] == pytest.approx(a["bg_fg_ratio"])
    assert sum(a["fg_hist"]) == pytest.approx(1) and len(a["edges"]) == len(a["fg_hist"]) + 1
    assert a["fg_percentiles"][2] == pytest.approx(1, abs=0.05)  # foreground mean is 1


def test_power_spectrum_of_white_noise_is_flat_at_its_variance():
    rng = np.random.default_rng(3)
    m = np.zeros((128, 160), bool)
    m[::2] = True
    x = 10 + rng.normal(0, 1, m.shape)
    s = power_spectrum(x, m)
    assert len(s["frequency"]) == len(s["psd"]) == 63
    y = x - np.percentile(x[~m], 0.5)
    var = np.var(y[:, 16:144] / y[m].mean())
    assert np.median(s["psd"]) == pytest.approx(var, rel=0.15)


# ----------------------------------------------------------------------------- reports


def test_report_is_json_and_compares_to_zero_with_itself():
    m = cross(128)
    r = structure_report(image_of(m), m, window=32)
    text = json.dumps(r, allow_nan=False)
    assert json.loads(text) == r
    assert len(r["width"]["quantiles"]) == len(QUANTILE_LEVELS)
    assert r["topology"]["branch_points"] == 1 and r["empty_window_share"] > 0
    d = compare_reports(r, r)
    assert all(v == 0 for v in d.values() if v is not None)
    assert d["width_w1"] == 0 and d["spectrum_log10"] == 0


def test_compare_sees_wider_tubes():
    thin, wide = bar(3, 128), bar(9, 128)
    d = compare_reports(
        structure_report(image_of(thin), thin), structure_report(image_of(wide, 1), wide)
    )
    assert d["width_median"] == pytest.approx(6, abs=1)
    assert d["width_w1"] == pytest.approx(6, abs=1.5)
    assert d["foreground_fraction"] == pytest.approx(6 * 118 / 128**2)
    assert d["end_points_per_100px"] is not None and "native_snr_log10" not in d


def test_report_with_native_noise():
    rng = np.random.default_rng(2)
    m = np.zeros((96, 96), bool)
    m[10:30, 5:90] = True
    m[50:80, 5:90] = True
    x = rng.poisson(np.where(m, 400.0, 100.0)).astype(np.float64)  # Poisson: var = x
    r = structure_report(x, m, noise=True)
    a, b = r["noise"]["a"], r["noise"]["b"]
    assert r["noise"]["samples"] > 0
    assert a * 100 + b == pytest.approx(100, rel=0.2)
    assert a * 400 + b == pytest.approx(400, rel=0.15)
    assert r["noise"]["native_snr"] == pytest.approx(300 / np.sqrt(400), rel=0.1)
    assert "noise" not in structure_report(x, m)
    assert compare_reports(r, r)["native_snr_log10"] == 0


@pytest.mark.parametrize(
    ("image", "mask", "match"),
    [
        (np.ones((8, 8)), np.zeros((8, 8), bool), "foreground and background"),
        (np.ones((8, 8)), np.ones((8, 9), bool), "shape"),
        (np.full((8, 8), np.nan), np.eye(8, dtype=bool), "finite"),
        (np.ones((2, 8, 8)), np.eye(8, dtype=bool), "2-D"),
    ],
)
def test_bad_inputs_raise(image, mask, match):
    with pytest.raises(ValueError, match=match):
        intensity_histograms(image, mask)

"""Tests of synthesis.corruptions.noise: SNR-exact Poisson-Gaussian and Gaussian camera noise.

Physics is tested against theory with seeded samples; every tolerance is stated as a multiple
of the standard error (SE) of the statistic, computed for the test's pixel counts.
"""

from __future__ import annotations

import math

import pytest
import torch

from synthesis.corruptions import noise
from synthesis.levels import SNR_LEVELS, Camera

H = W = 512  # 262k pixels per image: SNR measured to ~0.5% (see test_realised_snr...)


def _scene(
    batch: int, background: float, seed: int = 0, size: int = H
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bars on a flat background, textured foreground (means: fg ~1.15, bg ``background``)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, 1, size, size, dtype=torch.bool)
    mask[:, :, 3::8, :] = True  # thin lines
    mask[:, :, size // 5 : size // 2, size // 5 : size * 4 // 5] = True  # a block
    clean = torch.full((batch, 1, size, size), background)
    texture = 1.0 + 0.3 * torch.rand(batch, 1, size, size, generator=g)
    clean = torch.where(mask, texture, clean)
    return clean, mask


# --- the SNR definition ------------------------------------------------------------------


@pytest.mark.parametrize("model", noise.NOISE_MODELS)
def test_parameters_solve_the_camera_equation_exactly(model):
    clean, mask = _scene(6, 0.2, size=64)
    cam = Camera(read_noise_e=2.0, e_per_adu=0.5)
    snr = torch.tensor([float(s) for s in SNR_LEVELS])
    p = noise.noise_parameters(clean, mask, snr, camera=cam, model=model)
    assert set(p) == set(noise.PARAM_KEYS)
    assert all(v.shape == (6,) for v in p.values())
    s, b = p["signal_e"].double(), p["background_e"].double()
    var_e = 2.0**2 + 0.5**2 / 12  # read noise + quantisation
    torch.testing.assert_close(s / torch.sqrt(s + b + var_e), snr.double(), rtol=1e-6, atol=0)
    if model == "gaussian":
        total = p["noise_sigma_e"].double() ** 2 + 0.5**2 / 12
        torch.testing.assert_close(s / torch.sqrt(total), snr.double(), rtol=1e-6, atol=0)
    else:
        assert bool(torch.isnan(p["noise_sigma_e"]).all())
    fg = mask.flatten(1).double()
    x = clean.flatten(1).double()
    c = (x * fg).sum(1) / fg.sum(1) - (x * (1 - fg)).sum(1) / (1 - fg).sum(1)
    torch.testing.assert_close(s, p["k_e_per_unit"].double() * c, rtol=1e-6, atol=0)


@pytest.mark.parametrize("read_noise", [0.0, 1.5, 5.0])
@pytest.mark.parametrize("background", [0.0, 0.2])
def test_realised_snr_within_3_percent_of_target(read_noise, background):
    """All six levels at once (one batch mixes SNRs), from the stored uint16-range image.

    SE of the measured SNR: noise RMS from n_fg = 74k pixels, 1/sqrt(2 n_fg) = 0.25%; signal
    mean difference at SNR 1, sqrt(1/n_fg + 1/n_bg) = 0.43%: about 0.5% in all, so 3% is
    6 SE. The default camera offset (10 e-) clips read noise of 5 e- below 2 sigma in dark
    pixels (a logged warning); that bias is ~1%, inside the bound.
    """
    clean, mask = _scene(6, background)
    snr = torch.tensor([float(s) for s in SNR_LEVELS])
    res = noise.add_noise(
        clean, mask, snr, torch.arange(6) + 10, camera=Camera(read_noise_e=read_noise)
    )
    measured = res.params["snr_measured"]
    assert measured.shape == (6,)
    assert float(((measured / snr) - 1).abs().max()) < 0.03, measured.tolist()
    assert res.adu.dtype == torch.int32 and res.adu.shape == clean.shape


def test_gaussian_model_snr_and_signal_independence():
    clean, mask = _scene(6, 0.2)
    snr = torch.tensor([float(s) for s in SNR_LEVELS])
    res = noise.add_noise(clean, mask, snr, torch.arange(6), model="gaussian")
    measured = res.params["snr_measured"]
    assert float(((measured / snr) - 1).abs().max()) < 0.03, measured.tolist()
    # Same variance on foreground and background (signal-independent): SE of each variance
    # ratio ~ sqrt(2/n_fg + 2/n_bg) = 0.6%; bound 5 SE.
    e = noise.electrons_from_adu(res.adu, res.params)
    resid = e - clean.double() * res.params["k_e_per_unit"].double().view(-1, 1, 1, 1)
    var_fg = torch.stack([r[m].var() for r, m in zip(resid, mask, strict=True)])
    var_bg = torch.stack([r[~m].var() for r, m in zip(resid, mask, strict=True)])
    assert float(((var_fg / var_bg) - 1).abs().max()) < 0.03
    want = (res.params["signal_e"].double() / snr.double()) ** 2  # total noise (S/SNR)^2
    assert float(((var_bg / want) - 1).abs().max()) < 0.03


# --- camera physics ----------------------------------------------------------------------


@pytest.mark.parametrize("mean_e", [0.5, 3.0, 20.0, 200.0, 5000.0])
def test_flat_field_mean_and_variance_match_poisson_gaussian_theory(mean_e):
    n = 256 * 256 * 4
    clean = torch.full((4, 1, 256, 256), 2.0)
    read, gain, offset = 1.5, 0.1, 100.0
    params = {
        "k_e_per_unit": torch.tensor(mean_e / 2.0),
        "read_noise_e": torch.tensor(read),
        "offset_adu": torch.tensor(offset),
        "e_per_adu": torch.tensor(gain),
    }
    adu, _ = noise.apply_noise(clean, params, torch.tensor([1, 2, 3, 4]))
    e = noise.electrons_from_adu(adu, {"offset_adu": offset, "e_per_adu": gain}).flatten()
    var = mean_e + read**2 + gain**2 / 12  # Poisson + read + rounding
    # SE of the mean sqrt(var/n); of the variance sqrt((kappa4 + 2 var^2)/n) with the Poisson
    # fourth cumulant kappa4 = mean_e (the uniform rounding's is negligible). Bounds 5 SE.
    assert abs(float(e.mean()) - mean_e) < 5 * math.sqrt(var / n)
    assert abs(float(e.var()) - var) < 5 * math.sqrt((mean_e + 2 * var * var) / n)


def test_low_counts_are_poisson_not_gaussian():
    # Read noise 0 and 10 ADU per e-: ADU values map back to integer electron counts, and the
    # zero-count fraction is exp(-0.7) = 0.497 (a Gaussian approximation would give ~0.21
    # below 0.5 e-). SE sqrt(p(1-p)/n) = 1e-3 at n = 262k; bound 5 SE.
    clean = torch.full((1, 1, 512, 512), 1.0)
    params = {"k_e_per_unit": 0.7, "read_noise_e": 0.0, "offset_adu": 100.0, "e_per_adu": 0.1}
    adu, _ = noise.apply_noise(clean, params, torch.tensor([5]))
    e = noise.electrons_from_adu(adu, params)
    assert torch.equal(e.round(), e.round(decimals=6))
    counts = e.round()
    assert bool((counts == (e * 1e6).round() / 1e6).all())
    assert abs(float((counts == 0).double().mean()) - math.exp(-0.7)) < 5 * 1e-3


def test_adu_is_rounded_offset_and_clipped():
    clean = torch.tensor([0.0, 1.0, 50.0, 1e4]).view(1, 1, 2, 2)
    params = {"k_e_per_unit": 100.0, "read_noise_e": 0.0, "offset_adu": 100.0, "e_per_adu": 0.5}
    params["adc_max_adu"] = torch.tensor(4095.0)
    adu, _ = noise.apply_noise(clean, params, torch.tensor([0]))
    assert adu.dtype == torch.int32
    assert int(adu[0, 0, 0, 0]) == 100  # dark pixel: the offset (Poisson(0) = 0)
    assert int(adu[0, 0, 1, 1]) == 4095  # clipped at the ADC maximum
    e = (adu.double() - 100) * 0.5
    assert float(e[0, 0, 0, 1]) == pytest.approx(100, abs=5 * 10)  # Poisson(100): within 5 sd


# --- reproducibility ---------------------------------------------------------------------


def test_batch_equals_per_item_loop_and_replays_from_params():
    clean, mask = _scene(4, 0.1, size=128)
    snr = torch.tensor([1.0, 8.0, 3.0, 8.0])
    seeds = torch.tensor([11, 12, 13, 14])
    res = noise.add_noise(clean, mask, snr, seeds)
    for i in range(4):
        one = noise.add_noise(clean[i : i + 1], mask[i : i + 1], snr[i], seeds[i : i + 1])
        assert torch.equal(one.adu, res.adu[i : i + 1])
        for key, value in one.params.items():  # bit for bit: stored rows must not depend on
            # their batch (the model's noise_sigma_e is NaN for poisson_gaussian)
            assert torch.equal(value.nan_to_num(-1.0), res.params[key][i : i + 1].nan_to_num(-1.0))
    adu, measured = noise.apply_noise(clean, res.params, seeds, mask=mask)
    assert torch.equal(adu, res.adu)
    assert torch.equal(measured, res.params["snr_measured"])
    _, fidelity = noise.apply_noise(clean, res.params, seeds)  # the builder's call (no mask)
    for i in range(4):
        one = {k: v[i : i + 1] for k, v in res.params.items()}
        assert torch.equal(
            noise.apply_noise(clean[i : i + 1], one, seeds[i : i + 1])[1], fidelity[i : i + 1]
        )
    again = noise.add_noise(clean, mask, snr, seeds)
    assert torch.equal(again.adu, res.adu)
    other = noise.add_noise(clean, mask, snr, seeds + 100)
    assert not torch.equal(other.adu, res.adu)


def test_camera_images_scale_the_gain_above_the_reference_and_keep_rows_independent():
    """Rows at SNR 8, 20, 75 and 3 in one batch: each row is the bytes of that row alone,
    on ``Camera.for_snr(its SNR)``; the realised SNR is within 3 % of its target (128 x 128
    scenes); at SNR 75 the image stays far below the ADC's top where the fixed gain would
    saturate it; a batch at one SNR <= 8 is :func:`add_noise` on the whole batch."""
    clean, mask = _scene(4, 0.1, size=128)
    clean = clean * 1000
    snr = torch.tensor([8.0, 20.0, 75.0, 3.0])
    seeds = torch.tensor([21, 22, 23, 24])
    res = noise.camera_images(clean, mask, snr, seeds)
    for i in range(4):
        cam = Camera().for_snr(float(snr[i]))
        one = noise.add_noise(
            clean[i : i + 1], mask[i : i + 1], snr[i : i + 1], seeds[i : i + 1], camera=cam
        )
        assert torch.equal(one.adu, res.adu[i : i + 1]), i
        assert float(res.params["e_per_adu"][i]) == pytest.approx(cam.e_per_adu, rel=1e-6)
    measured = res.params["snr_measured"]
    assert torch.allclose(measured, snr, rtol=0.03), measured
    assert int(res.adu[2].max()) < 0.2 * Camera().adc_max_adu
    fixed = noise.add_noise(clean[2:3], mask[2:3], 75.0, seeds[2:3])
    assert int(fixed.adu.max()) == Camera().adc_max_adu  # what the scaled gain avoids
    same = noise.camera_images(clean, mask, 8.0, seeds)
    plain = noise.add_noise(clean, mask, 8.0, seeds)
    assert torch.equal(same.adu, plain.adu)
    blurred = clean * 0.5  # optics change the image, not the exposure solved on clean
    opt = noise.camera_images(clean, mask, snr, seeds, optics=blurred)
    assert torch.equal(opt.params["k_e_per_unit"], res.params["k_e_per_unit"])
    assert not torch.equal(opt.adu, res.adu)


def test_apply_noise_without_mask_reports_noise_fidelity():
    clean, mask = _scene(2, 0.2)
    snr = torch.tensor([2.0, 8.0])
    p = noise.noise_parameters(clean, mask, snr)
    adu, fidelity = noise.apply_noise(clean, p, torch.tensor([1, 2]))
    # Target x expected/realised noise RMS over all 262k pixels: SE ~0.14%; bound 2%.
    assert float(((fidelity / snr) - 1).abs().max()) < 0.02
    adu_m, measured = noise.apply_noise(clean, p, torch.tensor([1, 2]), mask=mask)
    assert torch.equal(adu, adu_m)
    torch.testing.assert_close(measured, noise.measure_snr(adu, clean, mask, p))


def test_measure_snr_on_constructed_electrons():
    # Electrons k x +- 2 on the foreground (alternating), exactly k x on the background:
    # S_hat = k (mean_fg x - bg) = 10 * 1 = 10, noise = 2, SNR = 5.
    clean = torch.full((1, 1, 4, 4), 1.0)
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask[..., :2, :] = True
    clean[mask] = 2.0
    k, gain, offset = 10.0, 0.5, 100.0
    e = clean * k
    e[..., :2, :] += torch.tensor([2.0, -2.0, 2.0, -2.0])
    adu = (offset + e / gain).round().to(torch.int32)
    p = {"k_e_per_unit": k, "offset_adu": offset, "e_per_adu": gain}
    assert float(noise.measure_snr(adu, clean, mask, p)[0]) == pytest.approx(5.0, rel=1e-6)


# --- errors --------------------------------------------------------------------------------


def test_bad_input_raises_clear_errors():
    clean, mask = _scene(2, 0.2, size=32)
    with pytest.raises(ValueError, match=r"shape \(B, 1, H, W\). Got \(2, 32, 32\)"):
        noise.noise_parameters(clean[:, 0], mask, 2.0)
    with pytest.raises(TypeError, match="floating-point tensor. Got dtype torch.int64"):
        noise.noise_parameters(clean.long(), mask, 2.0)
    with pytest.raises(ValueError, match="non-negative"):
        noise.noise_parameters(clean - 1, mask, 2.0)
    with pytest.raises(ValueError, match="finite"):
        noise.noise_parameters(clean * float("nan"), mask, 2.0)
    with pytest.raises(ValueError, match=r"snr must be > 0. Got \[0.0, 2.0\]"):
        noise.noise_parameters(clean, mask, torch.tensor([0.0, 2.0]))
    with pytest.raises(ValueError, match="snr must be > 0"):
        noise.noise_parameters(clean, mask, -1.0)
    empty = mask.clone()
    empty[1] = False
    with pytest.raises(ValueError, match=r"no foreground in sample\(s\) \[1\]"):
        noise.noise_parameters(clean, empty, 2.0)
    with pytest.raises(ValueError, match="no background"):
        noise.noise_parameters(clean, torch.ones_like(mask), 2.0)
    with pytest.raises(ValueError, match="must have the image shape"):
        noise.noise_parameters(clean, mask[:, :, :16], 2.0)
    with pytest.raises(ValueError, match="brighter on the mask foreground"):
        noise.noise_parameters(1.5 - clean, mask, 2.0)
    with pytest.raises(ValueError, match="model must be one of"):
        noise.noise_parameters(clean, mask, 2.0, model="salt")
    with pytest.raises(ValueError, match="e_per_adu > 0"):
        noise.noise_parameters(clean, mask, 2.0, camera=Camera(e_per_adu=0.0))
    p = noise.noise_parameters(clean, mask, 2.0)
    with pytest.raises(ValueError, match=r"seeds must be an int or have shape \(2,\)"):
        noise.apply_noise(clean, p, torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match="seeds must be integers"):
        noise.apply_noise(clean, p, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"params lacks \['noise_sigma_e'\]"):
        noise.apply_noise(
            clean, {k: v for k, v in p.items() if k != "noise_sigma_e"}, 1, model="gaussian"
        )
    with pytest.raises(ValueError, match="k_e_per_unit must be > 0"):
        noise.apply_noise(clean, {**p, "k_e_per_unit": torch.tensor(-1.0)}, 1)


def test_overflowing_rates_raise_the_poisson_error():
    clean, _ = _scene(1, 0.2, size=16)
    params = {"k_e_per_unit": 1e38, "read_noise_e": 1.0, "offset_adu": 100.0, "e_per_adu": 1.0}
    with pytest.raises(ValueError, match="rate must be finite and >= 0"):
        noise.apply_noise(clean * 1e3, params, 1)


# --- compiled CPU steps (the same bits as the torch ops) ---------------------------------


def test_compiled_adu_is_the_torch_ops_bit_for_bit():
    from synthesis.corruptions import noise_sums

    g = torch.Generator().manual_seed(3)
    b, n = 5, 4096
    normal = torch.randn(b, n, generator=g)
    normal[:, :8] = torch.tensor([0.5, -0.5, 1.5, 2.5, -0.0, 0.0, 1e9, -1e9])  # ties, clips
    scale = torch.tensor([1.5, 0.0, 1.0, 3.0, 2.0])
    add = torch.rand(b, n, generator=g) * 200 - 20
    gain = torch.tensor([0.1, 1.0, 0.5, 2.0, 0.25])
    offset = torch.tensor([100.0, 0.0, 10.0, 3.0, 50.0])
    adc = torch.tensor([65535.0, 4095.0, 300.0, 65535.0, 1000.0])
    out = noise_sums.adu_rows(*(t.numpy() for t in (normal, scale, add, gain, offset, adc)))
    e = normal.clone().mul_(scale[:, None]).add_(add)  # the torch code, op for op
    e.div_(gain[:, None]).add_(offset[:, None]).round_().clamp_(min=0.0)
    reference = torch.minimum(e, adc[:, None]).to(torch.int32)
    assert torch.equal(torch.from_numpy(out), reference)


@pytest.mark.parametrize("batch", [1, 4, 7])
def test_compiled_sums_add_in_order_whatever_the_rows_summed_together(batch):
    from synthesis.corruptions import noise_sums

    g = torch.Generator().manual_seed(batch)
    n = 3000
    x = torch.rand(batch, n, generator=g) * 50
    x[0, :3] = -0.0
    fg = torch.rand(batch, n, generator=g) < 0.4
    adu = (torch.rand(batch, n, generator=g) * 3000).to(torch.int32)
    gain = torch.rand(batch, generator=g) * 0.5 + 0.05
    offset = gain * 100
    n_fg, s_fg, s_all = noise_sums.mask_sums(x.numpy(), fg.numpy())
    sums = noise_sums.snr_sums(adu.numpy(), x.numpy(), fg.numpy(), gain.numpy(), offset.numpy())
    for r in range(batch):  # one value at a time, in column order, in float64
        xs = [float(v) for v in x[r]]
        m = fg[r].tolist()
        e = (adu[r].float() * gain[r] - offset[r]).tolist()  # float32 electrons
        d = (adu[r].float() * gain[r] - offset[r] - x[r]).tolist()
        want = [0.0] * 5
        for c in range(n):
            want[0] += xs[c]
            want[2] += e[c]
            if m[c]:
                want[1] += xs[c]
                want[3] += e[c]
                want[4] += float(torch.tensor(d[c]) * torch.tensor(d[c]))  # float32 square
        assert int(n_fg[r]) == sum(m) == int(sums[r, 0])
        assert (s_all[r], s_fg[r]) == (want[0], want[1])
        assert (sums[r, 2], sums[r, 1], sums[r, 3]) == (want[2], want[3], want[4])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_agrees_with_cpu_statistically():
    clean, mask = _scene(6, 0.2)
    snr = torch.tensor([float(s) for s in SNR_LEVELS])
    cpu = noise.add_noise(clean, mask, snr, torch.arange(6))
    gpu = noise.add_noise(clean.cuda(), mask.cuda(), snr.cuda(), torch.arange(6).cuda())
    assert gpu.adu.device.type == "cuda"
    # Same counters: almost all pixels agree exactly; realised SNRs agree within 1%.
    same = float((gpu.adu.cpu() == cpu.adu).double().mean())
    assert same > 0.999
    torch.testing.assert_close(
        gpu.params["snr_measured"].cpu(), cpu.params["snr_measured"], rtol=0.01, atol=0
    )


@pytest.mark.parametrize("model", ["poisson_gaussian", "gaussian"])
@pytest.mark.parametrize(("batch", "size"), [(1, 8), (5, 33), (21, 64)])
@pytest.mark.parametrize("block_rows", [3, 0])
def test_fused_cpu_passes_give_the_bytes_of_the_step_by_step_path(
    model, batch, size, block_rows, monkeypatch
):
    """``_apply_cpu`` (rates formed in the sampler, ``2u - 1``, ``erfinv``, then one pass for
    noise, ADU and SNR sums) against ``_apply_torch`` (``rng.normal``, ``_to_adu``,
    ``_measure_rows``, step by step), with and without a mask, float32 and float64 images,
    row counts that leave groups of 1 to 3 rows, one block or blocks of 3 rows."""
    if block_rows:
        monkeypatch.setattr(noise, "_FUSED_BLOCK_ELEMS", block_rows * size * size)
    g = torch.Generator().manual_seed(batch * 100 + size)
    mask = torch.rand(batch, 1, size, size, generator=g) < 0.3
    mask[:, :, 0, 0] = True
    mask[:, :, -1, -1] = False
    clean = torch.where(mask, 1 + torch.rand(batch, 1, size, size, generator=g), 0.1)
    seeds = torch.arange(batch) * 977 + 5
    snr = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 8.0, 0.5, 30.0])[torch.arange(batch) % 8]
    for image in (clean, clean.double()):
        params = noise.noise_parameters(image, mask, snr, model=model)
        p = noise._replay_params(params, batch, image.device, model)
        for m in (mask, None):
            fused = noise._apply_cpu(image, p, seeds, m, model)
            steps = noise._apply_torch(image, p, seeds, m, model)
            assert torch.equal(fused[0], steps[0])
            assert torch.equal(fused[1], steps[1])

"""Tests of synthesis.rng: the hash, uniform/normal moments, exact Poisson, gamma, batch
invariance.

Statistical tests are seeded, so they are deterministic; each tolerance is stated beside it,
as a multiple of the standard error of the statistic (so a wrong distribution fails while a
right one passes with margin).
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from synthesis import rng
from synthesis.rng import counter, poisson_sampler

STREAM = 7  # streams 0-99 are reserved for these tests


# --- hash -------------------------------------------------------------------------------


def test_hash_equals_pure_python_reference():
    x = rng.random_bits(torch.tensor([11]), (1,), stream=3)  # any int32 values
    vals = torch.cat([torch.arange(-2000, 2000, dtype=torch.int32), x.flatten()])
    vals = torch.cat([vals, torch.tensor([2**31 - 1, -(2**31)], dtype=torch.int32)])
    got = counter._h32(vals).tolist()
    want = [counter._as_i32(counter._h32_py(int(v))) for v in vals.tolist()]
    assert got == want


def test_random_bits_equal_two_rounds_of_reference_hash():
    seeds = torch.tensor([0, 5, 2**62 + 12345])
    bits = rng.random_bits(seeds, (50,), stream=STREAM, sub=2)
    for r, seed in enumerate(seeds.tolist()):
        k1, k2 = (
            int(k[0]) & 0xFFFFFFFF for k in counter._row_keys(torch.tensor([seed]), STREAM, 2)
        )
        want = [counter._as_i32(counter._h32_py(counter._h32_py(i ^ k1) ^ k2)) for i in range(50)]
        assert bits[r].tolist() == want


def test_derive_seed_is_stable_and_63_bit():
    s = rng.derive_seed(0, "mito", "mito-test-00003", "noise")
    assert s == rng.derive_seed(0, "mito", "mito-test-00003", "noise")
    assert 0 <= s < 2**63
    assert s != rng.derive_seed(0, "mito", "mito-test-00004", "noise")
    # Pinned: the value must not change across platforms or versions (sha256 based).
    assert rng.derive_seed("a", 1) == int.from_bytes(
        __import__("hashlib").sha256(b"a/1").digest()[:8], "little"
    ) & (2**63 - 1)


# --- uniform and normal -----------------------------------------------------------------


def test_uniform_moments_and_range():
    u = rng.uniform(torch.arange(4), (250_000,), STREAM).double()
    assert bool(((u > 0) & (u < 1)).all())
    n = u.numel()
    # mean: SE = sqrt(1/12 / n) = 2.9e-4; allow 5 SE. var: SE = sqrt(1/180 / n) ~ 7.5e-5.
    assert abs(float(u.mean()) - 0.5) < 5 * math.sqrt(1 / 12 / n)
    assert abs(float(u.var()) - 1 / 12) < 5 * math.sqrt(1 / 180 / n)
    # Neighbouring values and rows are uncorrelated (SE of a correlation ~ 1/sqrt(n)).
    lag = torch.corrcoef(torch.stack([u[:, 1:].flatten(), u[:, :-1].flatten()]))[0, 1]
    rows = torch.corrcoef(u[:2])[0, 1]
    assert abs(float(lag)) < 5 / math.sqrt(n)
    assert abs(float(rows)) < 5 / math.sqrt(u.shape[1])


def test_normal_moments():
    z = rng.normal(torch.arange(4), (250_000,), STREAM).double().flatten()
    n = z.numel()
    # SE: mean 1/sqrt(n), var sqrt(2/n), skewness sqrt(6/n), excess kurtosis sqrt(24/n).
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float(z.var()) - 1) < 5 * math.sqrt(2 / n)
    assert abs(float(stats.skew(z.numpy()))) < 5 * math.sqrt(6 / n)
    assert abs(float(stats.kurtosis(z.numpy()))) < 5 * math.sqrt(24 / n)


def test_streams_and_subs_give_different_numbers():
    s = torch.tensor([3])
    a = rng.uniform(s, (1000,), STREAM)
    assert not torch.equal(a, rng.uniform(s, (1000,), STREAM + 1))
    assert not torch.equal(a, rng.uniform(s, (1000,), STREAM, sub=1))
    assert torch.equal(a, rng.uniform(s, (1000,), STREAM))


def test_uniform_and_normal_do_not_depend_on_batch():
    seeds = torch.tensor([4, 9, 2**40, 17])
    u = rng.uniform(seeds, (3, 5), STREAM)
    z = rng.normal(seeds, (3, 5), STREAM)
    for i in range(4):
        assert torch.equal(rng.uniform(seeds[i : i + 1], (3, 5), STREAM), u[i : i + 1])
        assert torch.equal(rng.normal(int(seeds[i]), (3, 5), STREAM), z[i : i + 1])


# --- Poisson ------------------------------------------------------------------------------

RATES = (0.0, 0.05, 0.7, 3.0, 9.99, 10.0, 25.0, 150.0, 1.0e4)


@pytest.mark.parametrize("lam", RATES)
def test_poisson_mean_variance_and_pmf(lam):
    n = 200_000
    k = rng.poisson(torch.full((2, n // 2), lam), torch.tensor([1, 2]), STREAM).double()
    assert bool((k == k.round()).all()) and bool((k >= 0).all())
    if lam == 0:
        assert bool((k == 0).all())
        return
    # Mean: SE = sqrt(lam / n). Variance: SE = sqrt((2 lam^2 + lam) / n) (Poisson kurtosis).
    assert abs(float(k.mean()) - lam) < 5 * math.sqrt(lam / n)
    assert abs(float(k.var()) - lam) < 5 * math.sqrt((2 * lam * lam + lam) / n)
    # Chi-square against the exact pmf, bins merged until each expects >= 20 counts.
    values = k.flatten().long()
    lo, hi = int(values.min()), int(values.max())
    counts = torch.bincount(values - lo, minlength=hi - lo + 1).double().numpy()
    ks = torch.arange(lo, hi + 1).numpy()
    expected = stats.poisson.pmf(ks, lam) * n
    expected[0] += stats.poisson.cdf(lo - 1, lam) * n
    expected[-1] += stats.poisson.sf(hi, lam) * n
    obs_b, exp_b, acc_o, acc_e = [], [], 0.0, 0.0
    for o, e in zip(counts, expected, strict=True):
        acc_o, acc_e = acc_o + o, acc_e + e
        if acc_e >= 20:
            obs_b.append(acc_o)
            exp_b.append(acc_e)
            acc_o = acc_e = 0.0
    obs_b[-1] += acc_o
    exp_b[-1] += acc_e
    chi2 = sum((o - e) ** 2 / e for o, e in zip(obs_b, exp_b, strict=True))
    dof = len(obs_b) - 1
    if dof == 0:  # a single bin (tiny rate): the zero-count fraction is the whole test
        return
    # p > 1e-4: a right sampler fails this once in 10^4 seeds; a Gaussian approximation or an
    # off-by-one in the search fails it by orders of magnitude at n = 2e5.
    assert stats.chi2.sf(chi2, dof) > 1e-4, (chi2, dof)


def test_poisson_small_rate_is_not_gaussian():
    # The zero-count fraction at lam = 0.7 is exp(-0.7) = 0.4966; SE = sqrt(p(1-p)/n) ~ 1.6e-3.
    k = rng.poisson(torch.full((1, 100_000), 0.7), 3, STREAM)
    assert abs(float((k == 0).double().mean()) - math.exp(-0.7)) < 5 * 1.6e-3


def _reference_uniform(seed: int, sub: int, idx: int) -> float:
    k1, k2 = (int(k[0]) & 0xFFFFFFFF for k in counter._row_keys(torch.tensor([seed]), STREAM, sub))
    h = counter._h32_py(counter._h32_py(idx ^ k1) ^ k2)
    return (counter._as_i32(h) + 2**31 + 0.5) * 2**-32


def _reference_poisson(lam: float, seed: int, idx: int) -> int:
    """The two samplers written per value in plain Python (the documented algorithm)."""
    if lam < 10:
        u = _reference_uniform(seed, 0, idx)
        p = math.exp(-lam)
        cdf, k = p, 0
        while u > cdf and k < 200:
            k += 1
            p = p * lam * (1.0 / k)
            cdf = cdf + p
        return k
    b = math.sqrt(lam) * 2.53 + 0.931
    a = b * 0.02483 - 0.059
    vr = 0.9277 - 3.6224 / (b - 2)
    r = 0
    while True:
        r += 1
        u = _reference_uniform(seed, 2 * r, idx) - 0.5
        v = _reference_uniform(seed, 2 * r + 1, idx)
        us = 0.5 - abs(u)
        k = math.floor((a * 2 / us + b) * u + lam + 0.43)
        if us >= 0.07 and v <= vr:
            return k
        if k < 0 or (us < 0.013 and v > us):
            continue
        invalpha = 1.1239 + 1.1328 / (b - 3.4)
        lhs = math.log(v) + math.log(invalpha) - math.log(a / (us * us) + b)
        if lhs <= -lam + k * math.log(lam) - math.lgamma(k + 1):
            return k


@pytest.mark.parametrize(
    ("backend", "block", "gather_max"),
    [
        ("torch", 1 << 10, 0.5),
        ("torch", 300, 0.5),
        ("torch", 1 << 17, 0.0),
        ("torch", 1 << 17, 1.1),
        ("compiled", 0, 0.0),
    ],
)
def test_poisson_equals_per_value_reference(monkeypatch, backend, block, gather_max):
    """Both backends give exactly the per-value algorithm.

    torch: the dense, blocked, gathered scheduling with block sizes of whole rows per block,
    rows split into column blocks and everything in one, and the PTRS exact test on all
    proposals (0.0) or on gathered ones only (1.1). Rates mix both samplers within rows
    (both majorities), sit on the threshold, and reach 3e4 (many PTRS rejections over 700
    values, so the compiled kernel's on-the-fly keys of late rounds are used too).
    """
    if backend == "torch":
        monkeypatch.setattr(poisson_sampler, "_BLOCK", block)
        monkeypatch.setattr(poisson_sampler, "_PTRS_GATHER_MAX_FRACTION", gather_max)
    g = torch.Generator().manual_seed(1)
    lam = (torch.rand(5, 700, generator=g) ** 3 * 40).float()
    lam[0] = 0.0
    lam[1, :100] = 9.999
    lam[2] = 3e4
    lam[3, ::7] = 10.0
    lam[4, ::3] = 11.0  # a row where PTRS values are the majority
    seeds = [1, 2, 2**62 + 5, 77, 8]
    out = rng.poisson(lam, torch.tensor(seeds), STREAM, backend=backend)
    ref = [
        [_reference_poisson(float(lam[r, i]), seeds[r], i) for i in range(700)] for r in range(5)
    ]
    # Exact equality: float64 log/exp of torch and math agree to an ulp; a flipped decision
    # would need u within ~1e-16 of a cdf value (probability ~1e-13 over these 3500 values).
    assert out.long().tolist() == ref


@pytest.mark.parametrize("backend", ["torch", "compiled"])
def test_poisson_batch_invariance_and_shape(backend):
    g = torch.Generator().manual_seed(2)
    lam = torch.rand(6, 1, 40, 30, generator=g) * 30
    seeds = torch.tensor([5, 6, 7, 8, 9, 10])

    def draw(rate: torch.Tensor, s: torch.Tensor, stream: int = STREAM) -> torch.Tensor:
        return rng.poisson(rate, s, stream, backend=backend)

    out = draw(lam, seeds)
    assert out.shape == lam.shape and out.dtype == torch.float32
    assert torch.equal(draw(lam[2:5], seeds[2:5]), out[2:5])
    assert torch.equal(draw(lam[[4, 0]], seeds[[4, 0]]), out[[4, 0]])
    assert torch.equal(draw(lam.double(), seeds), out)  # float64 rates
    assert torch.equal(draw(lam.half().float(), seeds), draw(lam.half(), seeds))
    assert torch.equal(draw(lam, seeds), out)
    assert not torch.equal(draw(lam, seeds, STREAM + 1), out)


def test_poisson_backends_agree_bit_for_bit_at_scale(one_thread):
    """The compiled kernel and the torch code on 2.4M values of every regime.

    Inversion (0-10, flat backgrounds of one rate), the threshold, PTRS near 10 (where the
    squeeze settles least) up to 1e5, rows that mix them and rows of one kind; a single
    flipped value would fail (the libm/torch last-bit differences flip one with probability
    ~1e-16 per value). Also run with 2 threads: threads split rows into tiles.
    """
    g = torch.Generator().manual_seed(11)
    n = 1 << 16
    lam = torch.empty(36, n)
    lam[:8] = torch.rand(8, n, generator=g) * 10
    lam[8:12] = torch.rand(4, 1, generator=g) * 10  # one rate per row (a flat background)
    lam[12:16] = 10.0 + torch.rand(4, n, generator=g) * 3
    lam[16:24] = torch.rand(8, n, generator=g) ** 3 * 400
    lam[24:28] = torch.where(torch.rand(4, n, generator=g) < 0.3, 6.2, 78.0)
    lam[28:32] = 10.0 ** (torch.rand(4, n, generator=g) * 5)
    lam[32:] = torch.rand(4, n, generator=g) * 10 + 9.5
    seeds = torch.randint(0, 2**62, (36,), generator=g)
    ref = rng.poisson(lam, seeds, STREAM, backend="torch")
    assert torch.equal(rng.poisson(lam, seeds, STREAM, backend="compiled"), ref)
    torch.set_num_threads(2)
    assert torch.equal(rng.poisson(lam[:5, :1000], seeds[:5], STREAM), ref[:5, :1000])
    assert torch.equal(rng.poisson(lam, seeds, STREAM, backend="compiled"), ref)


def test_poisson_backend_errors():
    with pytest.raises(ValueError, match="backend must be one of"):
        rng.poisson(torch.ones(1, 4), 1, STREAM, backend="numba")
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="runs on the CPU"):
            rng.poisson(torch.ones(1, 4, device="cuda"), 1, STREAM, backend="compiled")


def test_poisson_non_contiguous_input():
    lam = torch.rand(8, 20, generator=torch.Generator().manual_seed(3)).mul(20).t()
    seeds = torch.arange(20)
    assert torch.equal(
        rng.poisson(lam, seeds, STREAM), rng.poisson(lam.contiguous(), seeds, STREAM)
    )


def test_poisson_bad_input():
    with pytest.raises(TypeError, match="floating-point tensor"):
        rng.poisson(torch.ones(2, 3, dtype=torch.int64), torch.tensor([1, 2]), STREAM)
    with pytest.raises(ValueError, match="finite and >= 0"):
        rng.poisson(torch.tensor([[1.0, -1.0]]), 1, STREAM)
    with pytest.raises(ValueError, match="finite and >= 0"):
        rng.poisson(torch.tensor([[1.0, float("nan")]]), 1, STREAM)
    with pytest.raises(ValueError, match="batch dimension"):
        rng.poisson(torch.tensor(1.0), 1, STREAM)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        rng.poisson(torch.ones(2, 3), torch.tensor([1, 2, 3]), STREAM)
    with pytest.raises(TypeError, match="seeds must be integers"):
        rng.poisson(torch.ones(2, 3), torch.tensor([1.0, 2.0]), STREAM)
    with pytest.raises(ValueError, match="seeds must be >= 0"):
        rng.poisson(torch.ones(2, 3), torch.tensor([1, -2]), STREAM)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_poisson_cuda_agrees_with_cpu():
    lam = torch.tensor([0.5, 4.0, 30.0, 2000.0]).repeat_interleave(50_000).reshape(4, 1, -1)
    seeds = torch.tensor([1, 2, 3, 4])
    cpu = rng.poisson(lam, seeds, STREAM).double()
    gpu = rng.poisson(lam.cuda(), seeds.cuda(), STREAM).double().cpu()
    # Same counters, so nearly all values agree bit for bit; GPU transcendentals may flip a
    # rare decision. Means agree within 5 SE of each other.
    assert float((cpu == gpu).double().mean()) > 0.999
    for r, l in enumerate((0.5, 4.0, 30.0, 2000.0)):
        assert abs(float(gpu[r].mean()) - l) < 5 * math.sqrt(l / 50_000)


def test_compiled_uniform_equals_torch_hash_bit_for_bit():
    """CPU ``uniform`` (compiled) gives the bits of the torch hash path other devices run."""
    seeds = torch.tensor([0, 1, 2**62 + 7, 123456789, 2**63 - 1])
    for stream, sub in ((STREAM, 0), (101, 0), (300, 5)):
        torch_path = counter._u24(rng.random_bits(seeds, (3, 70_001), stream, sub=sub))
        assert torch.equal(rng.uniform(seeds, (3, 70_001), stream, sub=sub), torch_path)
    # The largest 24-bit value maps below 1 (the clamp of counter._u24).
    top = counter._u24(torch.tensor([-1], dtype=torch.int32))
    assert float(top) == 1.0 - 2.0**-24


def test_normal_is_finite_for_every_uniform():
    """Every one of the 2**24 uniforms gives a normal within [-5.42, 5.30] sd, so the clamp of
    ``finite_normal`` (+-5.5) changes no value (what its docstring says)."""
    top = torch.arange(1 << 24, dtype=torch.int64) << 8  # the 24 bits _u24 keeps
    bits = torch.where(top >= 2**31, top - 2**32, top).to(torch.int32)
    u = counter._u24(bits)
    z = torch.erfinv(u.mul_(2.0).sub_(1.0)).mul_(math.sqrt(2.0))  # as normal() computes it
    assert float(z.min()) > -5.43 and float(z.max()) < 5.31
    seeds = torch.tensor([3, 4])
    assert torch.equal(rng.finite_normal(seeds, (2, 999), 11), rng.normal(seeds, (2, 999), 11))


def test_gamma_moments_and_batch_invariance():
    """Gamma(k) for k = 0.5, 3, 20 (2e5 draws each): mean k and variance k within 2%/4%."""
    k = torch.tensor([0.5, 3.0, 20.0])
    seeds = torch.tensor([1, 2, 3])
    stream = rng.streams.CLEAN_INTENSITY
    g = rng.gamma(k, seeds, (200_000,), stream=stream)
    assert bool((g > 0).all())
    for i, kk in enumerate(k.tolist()):
        assert float(g[i].mean()) == pytest.approx(kk, rel=0.02)
        assert float(g[i].var()) == pytest.approx(kk, rel=0.04)
    assert torch.equal(rng.gamma(k[1:2], seeds[1:2], (200_000,), stream), g[1:2])


def test_compiled_scaled_poisson_is_poisson_of_the_products():
    """``kernels.poisson_scaled_rows(x, k)`` is ``rng.poisson(x * k)`` bit for bit (rates on
    both sides of 10, zeros, several tiles per row), and refuses overflowing products."""
    from synthesis.rng import kernels

    g = torch.Generator().manual_seed(8)
    x = torch.rand(3, 40_000, generator=g) * 2
    x[:, :5] = 0.0
    k = torch.tensor([0.7, 9.0, 400.0])
    seeds = torch.tensor([4, 2**62 + 1, 99])
    out = kernels.poisson_scaled_rows(x.numpy(), k.numpy(), seeds.numpy(), STREAM)
    assert torch.equal(torch.from_numpy(out), rng.poisson(x * k[:, None], seeds, STREAM))
    x[1, 30_000] = 1e38
    assert kernels.poisson_scaled_rows(x.numpy(), k.numpy(), seeds.numpy(), STREAM) is None
    x[1, 30_000] = math.nan
    assert kernels.poisson_scaled_rows(x.numpy(), k.numpy(), seeds.numpy(), STREAM) is None


def test_compiled_erfinv_argument_gives_normal():
    """``kernels.erfinv_arg_rows`` is ``2u - 1`` of ``rng.uniform``; its ``erfinv`` times
    float32 sqrt(2) is ``rng.normal`` bit for bit."""
    from synthesis.rng import kernels

    seeds = torch.tensor([0, 7, 2**63 - 1])
    for stream, sub in ((STREAM, 0), (300, 5)):
        y = torch.from_numpy(
            kernels.erfinv_arg_rows(seeds.numpy(), 5001, counter._stream_const(stream, sub))
        )
        u = rng.uniform(seeds, (5001,), stream, sub=sub)
        assert torch.equal(y, u.mul(2.0).sub_(1.0))
        z = torch.erfinv(y) * torch.tensor(math.sqrt(2.0), dtype=torch.float32)
        assert torch.equal(z, rng.normal(seeds, (5001,), stream, sub=sub))

"""Attacks: exact budgets in ADU, known gradient directions, strength ordering, errors."""

import dataclasses

import pytest
import torch
from torch import nn

from synthesis import rng
from synthesis.corruptions.attacks import (
    METHODS,
    _objective,
    attack,
    minmax,
    pixel_loss,
    random_start,
)
from synthesis.levels import ATTACKS
from synthesis.metrics import iou, logits_to_mask
from synthesis.models.training import train_segmenter
from synthesis.models.unet import UNet
from synthesis.normalize import zscore
from synthesis.rng import streams
from tests.toy import toy_data

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def test_set():
    adu, mask = toy_data(16, seed=1)
    return adu.to(torch.int32), mask


def _trained(out_channels: int):
    a, m = toy_data(64, seed=0)
    va, vm = toy_data(16, seed=2)
    net = UNet(out_channels=out_channels, base_channels=4, depth=3)
    kw = dict(epochs=12, batch_size=8, lr=1e-2, seed=0)
    result = train_segmenter(net, zscore(a), m, zscore(va), vm, **kw)
    assert result.best_val_iou > 0.8
    return net


@pytest.fixture(scope="module")
def net1():
    return _trained(1)


@pytest.fixture(scope="module")
def net2():
    return _trained(2)


def _score(net, adu, mask):
    with torch.no_grad():
        return iou(logits_to_mask(net(zscore(adu.float()))), mask).mean().item()


def _check_budget(adu, result, eps_grey):
    """The stored perturbation obeys eps exactly, and linf_grey is what it realises."""
    base = adu.to(torch.int64)
    out = result.adu.to(torch.int64)
    assert result.adu.dtype == torch.int32 and result.adu.shape == adu.shape
    assert int(out.min()) >= 0 and int(out.max()) <= 65535
    rng_adu = (base.flatten(1).amax(1) - base.flatten(1).amin(1)).double()
    bound = torch.floor(eps_grey * rng_adu / 255)
    d = (out - base).abs().flatten(1).amax(1).double()
    assert bool((d <= bound).all()) and torch.equal(result.eps_adu.double(), bound)
    linf = d * 255 / rng_adu
    assert bool((result.linf_grey <= eps_grey).all())
    torch.testing.assert_close(result.linf_grey.double(), linf, rtol=1e-6, atol=0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("eps", [1, 8, 32, 2.5])
def test_budget_is_exact_after_rounding(net1, test_set, method, eps):
    adu, mask = test_set
    result = attack(net1, adu, mask, method=method, eps_grey=eps, seeds=torch.arange(16))
    _check_budget(adu, result, eps)
    # Most images use their whole integer budget somewhere.
    assert (result.linf_grey.double() * (result.hi_adu - result.lo_adu) / 255).round().eq(
        result.eps_adu
    ).float().mean() > 0.9


@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_budget_and_clipping_at_the_ends_of_the_adc_range(net1, method):
    # Ranges from 0 to 65535 (one grey level = 257 ADU) and a narrow one (300 ADU, eps 1 =
    # 1.18 ADU: the budget is 1 ADU after flooring, never 2 after rounding).
    adu, mask = toy_data(4, seed=5)
    adu = adu.to(torch.int64)
    adu[0, 0, 0, 0], adu[0, 0, 0, 1] = 0, 65535
    adu[1] = (adu[1] - adu[1].min()).clamp(max=300)
    for eps in (1, 16):
        result = attack(net1, adu, mask, method=method, eps_grey=eps, seeds=torch.arange(4))
        _check_budget(adu, result, eps)
    assert result.lo_adu[0] == 0 and result.hi_adu[0] == 65535


def test_fgsm_moves_every_pixel_by_the_budget_in_the_known_direction():
    # A linear model z = x - 0.5 on the [0, 1] image (no z-score): the BCE gradient
    # sigmoid(z) - y is > 0 on background and < 0 on foreground, so FGSM raises the
    # background and lowers the foreground by exactly floor(eps * range / 255) ADU, except
    # where that would leave [lo, hi].
    net = nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        net.weight.fill_(1.0)
        net.bias.fill_(-0.5)
    adu, mask = toy_data(4, seed=3)
    eps = 4
    result = attack(net, adu, mask, method="fgsm", eps_grey=eps, preprocess=lambda x: x)
    lo = adu.flatten(1).amin(1).view(-1, 1, 1, 1)
    hi = adu.flatten(1).amax(1).view(-1, 1, 1, 1)
    step = torch.floor(eps * (hi - lo) / 255)
    expected = torch.where(mask, adu - step, adu + step)
    expected = torch.minimum(torch.maximum(expected, lo), hi)
    assert torch.equal(result.adu.float(), expected)
    assert net.weight.grad is None  # input gradients only


def test_stronger_attacks_and_larger_budgets_lower_iou_more(net1, test_set):
    adu, mask = test_set
    clean = _score(net1, adu, mask)
    scores = {}
    for method in ("fgsm", "ifgsm", "pgd"):
        for eps in (1, 4, 8, 16):
            r = attack(net1, adu, mask, method=method, eps_grey=eps, seeds=torch.arange(16))
            scores[method, eps] = _score(net1, r.adu, mask)
    for method in ("fgsm", "ifgsm", "pgd"):
        seq = [clean] + [scores[method, e] for e in (1, 4, 8, 16)]
        assert all(b <= a for a, b in zip(seq[:-1], seq[1:], strict=True)), (method, seq)
        assert scores[method, 16] < clean - 0.1
    # At a budget its 10 steps of 2 grey levels can span (2 eps <= 20), PGD is at least as
    # strong as FGSM; so is I-FGSM with its smaller steps (within 0.001 IoU: at eps 4 its
    # 5 steps of 1 level and FGSM's one step of 4 end within 2e-5 of each other here).
    for eps in (4, 8):
        assert scores["pgd", eps] <= scores["fgsm", eps]
        assert scores["ifgsm", eps] <= scores["fgsm", eps] + 1e-3


@pytest.mark.parametrize("method", ["segpgd", "cospgd", "pgd"])
@pytest.mark.parametrize("channels", [1, 2])
def test_segmentation_attacks_on_one_and_two_channel_models(net1, net2, test_set, method, channels):
    net = net1 if channels == 1 else net2
    adu, mask = test_set
    clean = _score(net, adu, mask)
    result = attack(net, adu, mask, method=method, eps_grey=8, seeds=torch.arange(16))
    _check_budget(adu, result, 8)
    assert _score(net, result.adu, mask) < clean - 0.03
    assert result.params["loss"] == ("bce_with_logits" if channels == 1 else "cross_entropy")


def test_segpgd_and_cospgd_weights():
    # Two pixels: the first classified correctly, the second wrongly; per-pixel loss [1, 2].
    logits = torch.tensor([2.0, 1.0]).view(1, 1, 1, 2)  # p(fg) = 0.881, 0.731
    mask = torch.tensor([True, False]).view(1, 1, 1, 2)
    values = torch.tensor([1.0, 2.0]).view(1, 1, 1, 2)

    def loss(lg, m):
        return values

    # SegPGD: lambda = t / (2T) for 0-based t; sum over pixels divided by H W = 2.
    got = _objective("segpgd", logits, mask, loss, 0, 10).item()
    assert got == pytest.approx((1.0 * 1 + 0.0 * 2) / 2)
    got = _objective("segpgd", logits, mask, loss, 5, 10).item()
    assert got == pytest.approx((0.75 * 1 + 0.25 * 2) / 2)
    # CosPGD: cos(p, onehot(y)) = p_y / ||p||, with p = (1 - s, s), s = sigmoid(logit).
    s = torch.sigmoid(torch.tensor([2.0, 1.0]))
    p = torch.stack([1 - s, s])
    cos = torch.stack([p[1, 0], p[0, 1]]) / p.norm(dim=0)
    got = _objective("cospgd", logits, mask, loss, 0, 10).item()
    assert got == pytest.approx(float(cos[0] * 1 + cos[1] * 2), rel=1e-6)
    # Two-channel logits (0, z) give the same weights as one logit z.
    two = torch.cat([torch.zeros_like(logits), logits], dim=1)
    assert _objective("cospgd", two, mask, loss, 0, 10).item() == pytest.approx(got, rel=1e-6)


def test_pixel_loss_values():
    logits = torch.tensor([0.0, 2.0]).view(1, 1, 1, 2)
    mask = torch.tensor([True, False]).view(1, 1, 1, 2)
    expected = torch.tensor([0.6931472, 2.126928]).view(1, 1, 1, 2)  # ln 2, ln(1 + e^2)
    torch.testing.assert_close(pixel_loss(logits, mask), expected)
    two = torch.cat([torch.zeros_like(logits), logits], dim=1)
    torch.testing.assert_close(pixel_loss(two, mask), expected)


def test_random_start_replay_and_batch_independence(net1, test_set):
    adu, mask = test_set
    seeds = torch.arange(100, 116)
    a = attack(net1, adu, mask, method="pgd", eps_grey=8, seeds=seeds)
    b = attack(net1, adu, mask, method="pgd", eps_grey=8, seeds=seeds)
    assert torch.equal(a.adu, b.adu)
    c = attack(net1, adu, mask, method="pgd", eps_grey=8, seeds=seeds + 1)
    assert not torch.equal(a.adu, c.adu)
    # A row does not depend on the batch it is attacked in.
    rows = [
        attack(net1, adu[i : i + 1], mask[i : i + 1], method="pgd", eps_grey=8, seeds=seeds[i])
        for i in (3, 11)
    ]
    assert torch.equal(rows[0].adu, a.adu[3:4]) and torch.equal(rows[1].adu, a.adu[11:12])
    # The start is uniform on [-eps, eps] (mean 0, variance eps^2 / 3 within 3%, 65k values).
    start = random_start(seeds, (1, 64, 64), 0.5)
    assert start.abs().max() <= 0.5
    assert abs(start.mean().item()) < 0.01
    assert start.var().item() == pytest.approx(0.25 / 3, rel=0.03)
    u = rng.uniform(seeds, (1, 64, 64), streams.ATTACK_START)
    torch.testing.assert_close(start, (2 * u - 1) * 0.5)


def test_model_state_is_left_alone(net1, test_set):
    adu, mask = test_set
    net1.train()
    net1.down[0].eval()  # a frozen part stays frozen
    net1.zero_grad(set_to_none=True)
    before = {k: v.clone() for k, v in net1.state_dict().items()}
    attack(net1, adu[:2], mask[:2], method="ifgsm", eps_grey=2)
    assert net1.training and net1.up.training and not net1.down[0].training
    assert not net1.down[0][1].training
    net1.eval()
    assert all(p.grad is None for p in net1.parameters())
    assert all(torch.equal(v, before[k]) for k, v in net1.state_dict().items())


def test_params_follow_the_protocols(net1, test_set):
    adu, mask = test_set
    adu_u16 = adu[:2].to(torch.uint16)
    r = attack(net1, adu_u16, mask[:2], method="ifgsm", eps_grey=8)
    assert (r.params["iterations"], r.params["step_grey"]) == (ATTACKS["ifgsm"].iterations(8), 1.0)
    assert r.params["iterations"] == 10 and r.params["random_start"] is False
    r = attack(net1, adu[:2].float(), mask[:2], method="fgsm", eps_grey=4)
    assert (r.params["iterations"], r.params["step_grey"]) == (1, 4.0)
    r = attack(net1, adu[:2], mask[:2], method="pgd", eps_grey=4, seeds=torch.arange(2))
    assert (r.params["iterations"], r.params["step_grey"], r.params["random_start"]) == (
        10,
        2.0,
        True,
    )
    r = attack(net1, adu[:2], mask[:2], method="segpgd", eps_grey=4, seeds=0, iterations=3)
    assert r.params["iterations"] == 3 and r.params["method"] == "segpgd"


def test_minmax():
    x = torch.tensor([[[[100.0, 150.0, 300.0]]], [[[5.0, 6.0, 7.0]]]])
    s, lo, hi = minmax(x)
    assert s.tolist() == [[[[0.0, 0.25, 1.0]]], [[[0.0, 0.5, 1.0]]]]
    assert lo.tolist() == [100.0, 5.0] and hi.tolist() == [300.0, 7.0]


class _Const(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.conv(x))


def test_errors(net1, test_set):
    adu, mask = test_set
    adu, mask = adu[:2], mask[:2]
    ok = dict(method="fgsm", eps_grey=4)
    with pytest.raises(ValueError, match="method must be one of.*Got 'cw'"):
        attack(net1, adu, mask, method="cw", eps_grey=4)
    with pytest.raises(ValueError, match="eps_grey must be a finite number > 0. Got 0.0"):
        attack(net1, adu, mask, method="fgsm", eps_grey=0)
    with pytest.raises(ValueError, match="iterations must be an int >= 1. Got 0"):
        attack(net1, adu, mask, method="pgd", eps_grey=4, seeds=0, iterations=0)
    with pytest.raises(ValueError, match=r"random point: pass seeds of shape \(2,\). Got None"):
        attack(net1, adu, mask, method="pgd", eps_grey=4)
    with pytest.raises(
        ValueError, match=r"integer ADU values.*Got fractional values such as \d+\.5"
    ):
        attack(net1, adu.float() + 0.5, mask, **ok)
    with pytest.raises(ValueError, match=r"must lie in \[0, 65535\]"):
        attack(net1, adu - 10_000, mask, **ok)
    with pytest.raises(ValueError, match=r"not be constant.*Got constant image\(s\) \[1\]"):
        attack(net1, torch.stack([adu[0], torch.full_like(adu[1], 7)]), mask, **ok)
    with pytest.raises(ValueError, match=r"mask must have the image shape"):
        attack(net1, adu, mask[:1], **ok)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\).*\(B, 2, H, W\).*Got \(\d+, 3, 32, 32\)"):
        attack(_Const(lambda z: z.repeat(1, 3, 1, 1)), adu, mask, **ok)
    with pytest.raises(ValueError, match=r"match the input.*Got \(\d+, 1, 16, 16\)"):
        attack(_Const(lambda z: z[..., ::2, ::2]), adu, mask, **ok)
    with pytest.raises(TypeError, match="Got tuple"):
        attack(_Const(lambda z: (z,)), adu, mask, **ok)
    with pytest.raises(ValueError, match=r"segpgd weights the loss per pixel.*Got \(\d+,\)"):
        attack(
            net1,
            adu,
            mask,
            method="segpgd",
            eps_grey=4,
            seeds=0,
            loss=lambda lg, m: pixel_loss(lg, m).flatten(1).mean(1),
        )
    with pytest.raises(ValueError, match=r"leading batch dimension \d+.*Got torch.Size"):
        attack(net1, adu, mask, loss=lambda lg, m: pixel_loss(lg, m).sum(), **ok)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="outside torch.inference_mode"):
        attack(net1, adu, mask, **ok)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(net1, test_set):
    adu, mask = test_set
    cpu = attack(net1, adu, mask, method="pgd", eps_grey=8, seeds=torch.arange(16))
    gpu_net = UNet(base_channels=4, depth=3).cuda()
    gpu_net.load_state_dict(net1.state_dict())
    gpu = attack(gpu_net, adu.cuda(), mask.cuda(), method="pgd", eps_grey=8, seeds=torch.arange(16))
    assert gpu.adu.is_cuda
    on_cpu = dataclasses.replace(
        gpu, adu=gpu.adu.cpu(), linf_grey=gpu.linf_grey.cpu(), eps_adu=gpu.eps_adu.cpu()
    )
    _check_budget(adu, on_cpu, 8)
    # Same random start; gradient signs may differ only where a gradient is ~0.
    assert (gpu.adu.cpu() == cpu.adu).float().mean() > 0.98


def test_square_attack_stays_within_eps_is_seeded_and_lowers_iou(net1, test_set):
    """The gradient-free Square attack: the stored budget holds exactly, a row's result is
    a function of its seed alone (not of its batch), and it lowers a trained model's IoU."""
    from synthesis.corruptions.attacks import GRADIENT_FREE, square_attack

    assert GRADIENT_FREE == ("square",) and "square" not in METHODS
    adu, mask = test_set[0][:6], test_set[1][:6]
    seeds = torch.arange(100, 106)
    result = attack(net1, adu, mask, method="square", eps_grey=8, seeds=seeds, iterations=60)
    _check_budget(adu, result, 8)
    assert result.params["seed_stream"] == streams.ATTACK_SQUARE == 301
    assert result.params["queries"] == 60 and result.params["method"] == "square"
    again = square_attack(net1, adu[2:4], mask[2:4], eps_grey=8, seeds=seeds[2:4], queries=60)
    assert torch.equal(again.adu, result.adu[2:4])
    other = attack(net1, adu, mask, method="square", eps_grey=8, seeds=seeds + 1, iterations=60)
    assert not torch.equal(other.adu, result.adu)
    # IoU 0.943 clean, 0.938 after the stripes alone (1 query), 0.930 after 60, 0.917 after
    # 200 (PGD at the same budget: 0.861): the random search gains with its queries.
    clean, scored = _score(net1, adu, mask), _score(net1, result.adu, mask)
    stripes = attack(net1, adu, mask, method="square", eps_grey=8, seeds=seeds, iterations=1)
    longer = attack(net1, adu, mask, method="square", eps_grey=8, seeds=seeds, iterations=200)
    assert clean > _score(net1, stripes.adu, mask) > scored > _score(net1, longer.adu, mask)
    assert scored < clean - 0.01


def test_square_attack_rejects_bad_settings(net1, test_set):
    adu, mask = test_set[0][:1], test_set[1][:1]
    with pytest.raises(ValueError, match="seeds"):
        attack(net1, adu, mask, method="square", eps_grey=8)
    with pytest.raises(ValueError, match="queries must be an int >= 1"):
        attack(net1, adu, mask, method="square", eps_grey=8, seeds=torch.arange(1), iterations=0)
    with pytest.raises(ValueError, match="no step_grey"):
        attack(net1, adu, mask, method="square", eps_grey=8, seeds=torch.arange(1), step_grey=1)

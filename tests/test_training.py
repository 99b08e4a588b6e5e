"""normalize, the training losses and train_segmenter on a tiny seeded task."""

import math

import pytest
import torch

from synthesis.metrics import iou, logits_to_mask
from synthesis.models.training import _augment, segmentation_loss, train_segmenter
from synthesis.models.unet import UNet
from synthesis.normalize import zscore
from tests.toy import toy_data

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    a, m = toy_data(48, seed=0)
    va, vm = toy_data(16, seed=1)
    return zscore(a), m, zscore(va), vm


def test_normalize_zero_mean_unit_std_and_affine_invariance():
    x = toy_data(4)[0]
    z = zscore(x)
    assert z.shape == x.shape
    torch.testing.assert_close(z.mean((1, 2, 3)), torch.zeros(4), rtol=0, atol=1e-5)
    torch.testing.assert_close(z.std((1, 2, 3), correction=0), torch.ones(4), rtol=0, atol=1e-5)
    # ADU and min-max scaled images give the model the same input (the attacks rely on it).
    lo = x.amin((1, 2, 3), keepdim=True)
    hi = x.amax((1, 2, 3), keepdim=True)
    torch.testing.assert_close(zscore((x - lo) / (hi - lo)), z, rtol=0, atol=1e-4)
    # Per image: one image's values do not change another's normalisation.
    torch.testing.assert_close(zscore(x[1:2]), z[1:2], rtol=0, atol=1e-6)


def test_normalize_constant_image_and_errors():
    assert torch.equal(zscore(torch.full((1, 1, 4, 4), 7.0)), torch.zeros(1, 1, 4, 4))
    with pytest.raises(TypeError, match="floating-point.*Got torch.int64"):
        zscore(torch.zeros(1, 1, 4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"Got \(4, 4\)"):
        zscore(torch.zeros(4, 4))


@pytest.mark.parametrize("channels", [1, 2])
def test_losses_at_even_odds_match_theory(channels):
    # Logits giving p = 0.5 everywhere: BCE = CE = ln 2 exactly; soft Dice with k of n pixels
    # foreground = 1 - (2 * 0.5 k + 1) / (0.5 n + k + 1).
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask[..., :2, :3] = True  # k = 6, n = 16
    logits = torch.zeros(1, channels, 4, 4)
    dice = 1 - (6 + 1) / (8 + 6 + 1)
    assert segmentation_loss(logits, mask, "bce").item() == pytest.approx(math.log(2), rel=1e-6)
    assert segmentation_loss(logits, mask, "dice").item() == pytest.approx(dice, rel=1e-6)
    assert segmentation_loss(logits, mask).item() == pytest.approx(math.log(2) + dice, rel=1e-6)
    with pytest.raises(ValueError, match="loss must be one of.*Got 'l2'"):
        segmentation_loss(logits, mask, "l2")


def test_augment_keeps_images_and_masks_aligned():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(16, 1, 12, 12, generator=g) < 0.3
    image = mask.float() * 5 + torch.arange(144.0).view(1, 1, 12, 12) * 1e-3
    out_img, out_mask = _augment(image, mask, torch.Generator().manual_seed(4), crop=8)
    assert out_img.shape == (16, 1, 8, 8) and out_mask.shape == (16, 1, 8, 8)
    assert torch.equal(out_img > 2.5, out_mask)
    # Flips move pixels, never change their values: every output is a subset of its input.
    for b in range(16):
        assert set(out_img[b].flatten().tolist()) <= set(image[b].flatten().tolist())
    # With 16 images, some were flipped or transposed (the ramp changed position).
    full, _ = _augment(image, mask, torch.Generator().manual_seed(4), crop=None)
    assert not torch.equal(full, image)


def test_training_learns_and_keeps_the_best_epoch(data):
    ti, tm, vi, vm = data
    net = UNet(base_channels=4, depth=3)
    calls = []
    result = train_segmenter(
        net,
        ti,
        tm,
        vi,
        vm,
        epochs=8,
        batch_size=8,
        lr=1e-2,
        seed=0,
        progress=lambda e, r: calls.append((e, r["val_iou"])),
    )
    ious = [h["val_iou"] for h in result.history]
    assert [e for e, _ in calls] == list(range(1, 9))
    assert result.best_val_iou == max(ious)
    assert result.history[result.best_epoch - 1]["val_iou"] == result.best_val_iou
    # A learnable task (SNR 2 disks): well above the ~0.2 IoU of predicting everything.
    assert result.best_val_iou > 0.8
    # The model is left holding the best weights, in eval mode.
    assert not net.training
    assert all(p.grad is None for p in net.parameters())
    with torch.no_grad():
        pred = logits_to_mask(net(vi))
    inter = (pred & vm).sum().item()
    union = (pred | vm).sum().item()
    assert inter / union == pytest.approx(result.best_val_iou, abs=1e-12)
    assert result.settings["best_epoch"] == result.best_epoch
    assert result.settings["train_images"] == 48 and result.settings["loss"] == "bce_dice"


def test_training_is_deterministic_and_seed_dependent(data):
    ti, tm, vi, vm = data
    kwargs = dict(epochs=2, batch_size=8, lr=1e-2, crop=16)
    a = train_segmenter(UNet(base_channels=4, depth=3), ti, tm, vi, vm, seed=3, **kwargs)
    # A different construction seed does not matter: train_segmenter initialises from `seed`.
    b = train_segmenter(UNet(base_channels=4, depth=3, seed=9), ti, tm, vi, vm, seed=3, **kwargs)
    c = train_segmenter(UNet(base_channels=4, depth=3), ti, tm, vi, vm, seed=4, **kwargs)
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert [h["val_iou"] for h in a.history] == [h["val_iou"] for h in b.history]
    assert not torch.equal(a.state_dict["head.weight"], c.state_dict["head.weight"])


def test_two_channel_model_trains(data):
    ti, tm, vi, vm = data
    net = UNet(out_channels=2, base_channels=4, depth=3)
    result = train_segmenter(net, ti, tm, vi, vm, epochs=4, batch_size=8, lr=1e-2, seed=0)
    assert result.best_val_iou > 0.6
    with torch.no_grad():
        assert iou(logits_to_mask(net(vi)), vm).mean().item() > 0.5


def test_training_errors(data):
    ti, tm, vi, vm = data
    net = UNet(base_channels=2, depth=2)
    ok = dict(epochs=1, batch_size=4, lr=1e-3, seed=0)
    with pytest.raises(ValueError, match=r"train_masks must have the image shape"):
        train_segmenter(net, ti, tm[:4], vi, vm, **ok)
    with pytest.raises(ValueError, match=r"val_images must have shape \(B, 1, H, W\)"):
        train_segmenter(net, ti, tm, vi[:, 0], vm, **ok)
    with pytest.raises(ValueError, match="loss must be one of"):
        train_segmenter(net, ti, tm, vi, vm, loss="focal", **ok)
    with pytest.raises(ValueError, match="epochs must be an int >= 1. Got 0"):
        train_segmenter(net, ti, tm, vi, vm, **{**ok, "epochs": 0})
    with pytest.raises(ValueError, match="lr must be > 0"):
        train_segmenter(net, ti, tm, vi, vm, **{**ok, "lr": 0.0})

    class ThreeClass(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 3, 1)

        def forward(self, x):
            return self.conv(x)

    with pytest.raises(ValueError, match=r"model output must have shape.*Got \(4, 3, 32, 32\)"):
        train_segmenter(ThreeClass(), ti, tm, vi, vm, **ok)

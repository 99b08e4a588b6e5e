"""IoU, Dice, robustness and logits_to_mask against hand-computed answers."""

import math

import pytest
import torch

from synthesis.metrics import (
    SegmentationScores,
    check_logits,
    dice,
    iou,
    logits_to_mask,
    robustness,
)


def _m(rows):
    """A (1, 1, H, W) bool mask from nested 0/1 lists."""
    return torch.tensor(rows, dtype=torch.bool)[None, None]


# Hand-made 3x3 cases: |P|=4, |T|=3, |P&T|=2 -> IoU 2/5, Dice 4/7.
P = _m([[1, 1, 0], [1, 1, 0], [0, 0, 0]])
T = _m([[0, 1, 0], [0, 1, 1], [0, 0, 0]])


def test_iou_and_dice_known_values():
    assert iou(P, T).tolist() == [pytest.approx(2 / 5, abs=1e-15)]
    assert dice(P, T).tolist() == [pytest.approx(4 / 7, abs=1e-15)]
    # Symmetric in prediction and target.
    assert torch.equal(iou(P, T), iou(T, P))
    assert torch.equal(dice(P, T), dice(T, P))


def test_perfect_disjoint_and_empty_cases():
    empty = torch.zeros_like(P)
    assert iou(P, P).item() == 1.0 and dice(P, P).item() == 1.0
    assert iou(P, ~P).item() == 0.0 and dice(P, ~P).item() == 0.0
    # Documented convention: both empty -> 1.0; only one empty -> 0.0.
    assert iou(empty, empty).item() == 1.0 and dice(empty, empty).item() == 1.0
    assert iou(empty, T).item() == 0.0 and dice(P, empty).item() == 0.0


def test_per_image_over_a_batch_and_dice_iou_relation():
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(6, 1, 16, 16, generator=g) < 0.4
    target = torch.rand(6, 1, 16, 16, generator=g) < 0.3
    j = iou(pred, target)
    assert j.shape == (6,)
    for b in range(6):
        inter = (pred[b] & target[b]).sum().item()
        union = (pred[b] | target[b]).sum().item()
        assert j[b].item() == pytest.approx(inter / union, abs=1e-15)
    # Dice = 2 IoU / (1 + IoU) holds exactly per image.
    assert torch.allclose(dice(pred, target), 2 * j / (1 + j), atol=1e-12)


def test_scores_aggregate_and_mean_differ_as_computed_by_hand():
    # Image 1: IoU 2/5 (4 pixels union 5); image 2: a perfect small match (1 pixel).
    small = _m([[0, 0, 0], [0, 0, 0], [0, 0, 1]])
    scores = SegmentationScores()
    scores.update(P, T)
    scores.update(small, small)
    r = scores.compute()
    assert r["iou"] == pytest.approx((2 + 1) / (5 + 1))
    assert r["dice"] == pytest.approx(2 * 3 / (4 + 3 + 1 + 1))
    assert r["iou_mean"] == pytest.approx((2 / 5 + 1) / 2)
    assert r["dice_mean"] == pytest.approx((4 / 7 + 1) / 2)
    assert (r["images"], r["pixels"], r["foreground_pixels"], r["predicted_pixels"]) == (
        2,
        18,
        4,
        5,
    )


def test_scores_do_not_depend_on_batching():
    g = torch.Generator().manual_seed(1)
    pred = torch.rand(10, 1, 8, 8, generator=g) < 0.5
    target = torch.rand(10, 1, 8, 8, generator=g) < 0.5
    one, split = SegmentationScores(), SegmentationScores()
    one.update(pred, target)
    for i in range(0, 10, 3):
        split.update(pred[i : i + 3], target[i : i + 3])
    a, b = one.compute(), split.compute()
    assert a["images"] == b["images"] == 10
    for key in ("iou", "dice", "iou_mean", "dice_mean"):
        assert a[key] == pytest.approx(b[key], abs=1e-12)
    assert a["iou_mean"] == pytest.approx(iou(pred, target).mean().item(), abs=1e-12)


def test_scores_all_empty_reset_and_no_update():
    scores = SegmentationScores()
    empty = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    scores.update(empty, empty)
    assert scores.compute()["iou"] == 1.0 and scores.compute()["dice"] == 1.0
    scores.reset()
    with pytest.raises(ValueError, match="at least one update"):
        scores.compute()


def test_robustness():
    assert robustness(0.45, 0.9) == pytest.approx(50.0)
    assert robustness(torch.tensor(0.9), torch.tensor(0.9)) == pytest.approx(100.0)
    assert robustness(0.0, 0.5) == 0.0
    with pytest.raises(ValueError, match="robustness is undefined"):
        robustness(0.3, 0.0)
    with pytest.raises(ValueError, match=r"iou_split must be an IoU in \[0, 1\]"):
        robustness(1.5, 0.8)
    with pytest.raises(ValueError, match="iou_reference must be an IoU"):
        robustness(0.5, math.nan)


def test_logits_to_mask_one_and_two_channels():
    z = torch.tensor([-3.0, -1e-6, 0.0, 1e-6, 3.0]).view(1, 1, 1, 5)
    # One channel: sigmoid(z) > 0.5 <=> z > 0; exactly 0.5 is background.
    assert logits_to_mask(z).flatten().tolist() == [False, False, False, True, True]
    # Two channels [0, z] are the softmax equivalent of one logit z (tie -> background).
    two = torch.cat([torch.zeros_like(z), z], dim=1)
    assert torch.equal(logits_to_mask(two), logits_to_mask(z))
    assert logits_to_mask(two).shape == (1, 1, 1, 5)


def test_logits_errors():
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\).*\(B, 2, H, W\).*Got \(2, 3, 4, 4\)"):
        logits_to_mask(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"Got \(4, 4\)"):
        logits_to_mask(torch.zeros(4, 4))
    with pytest.raises(TypeError, match="Got tuple"):
        logits_to_mask((torch.zeros(1, 1, 2, 2),))
    with pytest.raises(TypeError, match="floating-point"):
        logits_to_mask(torch.zeros(1, 1, 2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"match the input.*Got \(1, 1, 2, 2\)"):
        check_logits(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 4, 4))


def test_pair_errors():
    with pytest.raises(TypeError, match="bool tensor.*Got dtype torch.int64"):
        iou(P.long(), T)
    with pytest.raises(ValueError, match="same shape"):
        dice(P, T[..., :2])
    with pytest.raises(TypeError, match="Got list"):
        SegmentationScores().update([1], T)

"""Consistency score: IoU of a model's prediction on a degraded image against its own
prediction on the clean image (synthesis.metrics.consistency)."""

from __future__ import annotations

import pytest
import torch

from synthesis.metrics import consistency, iou


def masks(seed: int, shape: tuple[int, ...] = (3, 16, 16)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) > 0.5


def test_identical_predictions_score_one():
    p = masks(0)
    out = consistency(p, p.clone())
    assert out.shape == (3,) and out.dtype == torch.float64
    assert out.tolist() == [1.0, 1.0, 1.0]


def test_disjoint_predictions_score_zero():
    p = masks(1)
    assert consistency(p, ~p).tolist() == [0.0, 0.0, 0.0]


def test_both_empty_score_one_and_one_empty_zero():
    empty = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    full = torch.ones(2, 1, 8, 8, dtype=torch.bool)
    assert consistency(empty, empty).tolist() == [1.0, 1.0]
    assert consistency(empty, full).tolist() == [0.0, 0.0]
    assert consistency(full, empty).tolist() == [0.0, 0.0]


def test_known_partial_overlap():
    degraded = torch.zeros(1, 4, 4, dtype=torch.bool)
    clean = torch.zeros(1, 4, 4, dtype=torch.bool)
    degraded[0, :2, :] = True  # 8 pixels
    clean[0, 1:3, :] = True  # 8 pixels, 4 shared
    assert consistency(degraded, clean).item() == pytest.approx(4 / 12)
    assert consistency(clean, degraded).item() == pytest.approx(4 / 12)  # symmetric


def test_both_layouts_agree_with_iou():
    d, c = masks(2), masks(3)
    flat = consistency(d, c)
    assert torch.equal(consistency(d[:, None], c[:, None]), flat)
    assert torch.equal(flat, iou(d, c))


@pytest.mark.parametrize(
    ("degraded", "clean", "error", "match"),
    [
        (masks(0, (2, 8, 8)), masks(1, (2, 8, 9)), ValueError, "same shape"),
        (masks(0, (2, 8, 8)), masks(1, (3, 8, 8)), ValueError, "same shape"),
        (masks(0, (2, 2, 8, 8)), masks(1, (2, 2, 8, 8)), ValueError, r"\(B, H, W\)"),
        (masks(0, (8, 8)), masks(1, (8, 8)), ValueError, r"\(B, H, W\)"),
        (masks(0).float(), masks(1), TypeError, "bool"),
        ([[True]], masks(1), TypeError, "pred_degraded"),
    ],
)
def test_bad_inputs_raise(degraded, clean, error, match):
    with pytest.raises(error, match=match):
        consistency(degraded, clean)

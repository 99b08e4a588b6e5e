"""Structure metrics (synthesis.structure_metrics): topology, objects, boundaries, the worst
case over attacks and the mCE-style relative error, on hand-made cases and against direct
(slow) implementations or the reference libraries (scikit-image, SciPy, MONAI)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment
from skimage.measure import euler_number
from skimage.measure import label as sk_label

from synthesis import structure_metrics as sm
from synthesis.metrics import iou


def pixel_iou(p: np.ndarray, g: np.ndarray) -> float:
    return float(iou(torch.from_numpy(p)[None], torch.from_numpy(g)[None])[0])


def disc(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    y, x = np.ogrid[: shape[0], : shape[1]]
    return (y - cy) ** 2 + (x - cx) ** 2 <= r * r


def random_masks(seed: int, n: int = 6, size: int = 64, sigma: float = 2.5) -> np.ndarray:
    """Blobs with holes, branches and several components: smoothed noise thresholded."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        f = ndi.gaussian_filter(rng.standard_normal((size, size)), sigma)
        out.append(f > np.quantile(f, rng.uniform(0.5, 0.8)))
    return np.stack(out)


# ----------------------------------------------------------------------------- topology

#: The issue's tubule: 5 px wide, 200 px long, on a 256 px image, cut by a 2 px gap.
TUBULE = np.zeros((256, 256), bool)
TUBULE[126:131, 28:228] = True


def test_a_cut_tubule_changes_beta0_by_one_and_iou_barely():
    cut = TUBULE.copy()
    cut[:, 127:129] = False
    c = sm.topology_counts(cut, TUBULE)
    assert (c.beta0_pred, c.beta0_target, c.beta0_error, c.beta1_error) == (2, 1, 1, 0)
    assert 1 - pixel_iou(cut, TUBULE) < 0.05  # 0.010: 10 of 1000 pixels
    # clDice weights the centreline by length, not connectivity: one 2 px gap removes 2 of
    # its ~197 skeleton pixels, so it moves less than IoU (0.005). The Betti error is the
    # score that sees a single cut; clDice sees what the next test shows.
    assert c.cldice == pytest.approx(0.99490, abs=1e-4)
    assert 1 - c.cldice < 0.05


def test_cldice_sees_missed_thin_tubules_that_iou_barely_counts():
    """A thick body with four 2 px tubules: missing the tubules costs < 0.05 IoU (their area
    is small) but > 0.3 clDice (their centrelines are most of the skeleton)."""
    g = np.zeros((256, 256), bool)
    g[70:190, 70:190] = True  # 14 400 px
    for y in (20, 40, 210, 230):
        g[y : y + 2, 120:200] = True  # 4 x 160 px
    p = g.copy()
    p[:60] = p[200:] = False
    c = sm.topology_counts(p, g)
    assert 1 - pixel_iou(p, g) < 0.05
    assert 1 - c.cldice > 0.3
    assert c.beta0_error == 4
    assert sm.cldice(p, g) == c.cldice


def test_a_ring_has_one_loop_and_filling_it_is_a_beta1_error():
    ring = disc((64, 64), 32, 32, 20) & ~disc((64, 64), 32, 32, 12)
    assert sm.betti_numbers(ring) == (1, 1)
    filled = disc((64, 64), 32, 32, 20)
    c = sm.topology_counts(filled, ring)
    assert (c.beta1_pred, c.beta1_target, c.beta1_error, c.beta0_error) == (0, 1, 1, 0)
    # a ring open to the image border is no loop (the plane outside is background)
    assert sm.betti_numbers(ring[:, :20])[1] == 0


def test_betti_numbers_are_the_8_4_pair_of_the_euler_number():
    """β0 = skimage's 8-connected label count; β0 - β1 = the 8-connected Euler number."""
    for m in random_masks(1, n=10):
        b0, b1 = sm.betti_numbers(m)
        assert b0 == sk_label(m, connectivity=2).max()
        assert b0 - b1 == euler_number(m, connectivity=2)
    # a diagonal step is 8-connected: one component; a 4-connected hole between diagonals
    checker = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], bool)
    assert sm.betti_numbers(checker) == (1, 1)


def slow_cldice(p: np.ndarray, g: np.ndarray) -> float:
    """clDice by loops over the skeleton pixels (skimage's Zhang skeleton)."""
    from skimage.morphology import skeletonize

    sp, sg = skeletonize(p, method="zhang"), skeletonize(g, method="zhang")
    n_sp = n_sp_in = n_sg = n_sg_in = 0
    for y, x in zip(*np.nonzero(sp), strict=True):
        n_sp += 1
        n_sp_in += bool(g[y, x])
    for y, x in zip(*np.nonzero(sg), strict=True):
        n_sg += 1
        n_sg_in += bool(p[y, x])
    if n_sp == 0 and n_sg == 0:
        return 1.0
    if n_sp == 0 or n_sg == 0:
        return 0.0
    tprec, tsens = n_sp_in / n_sp, n_sg_in / n_sg
    return 0.0 if tprec + tsens == 0 else 2 * tprec * tsens / (tprec + tsens)


def test_cldice_matches_a_direct_implementation_on_random_masks():
    g, p = random_masks(2), random_masks(3)
    for a, b in zip(p, g, strict=True):
        assert sm.cldice(a, b) == pytest.approx(slow_cldice(a, b), abs=1e-12)
        assert sm.cldice(b, b) == 1.0


def test_cldice_conventions():
    empty = np.zeros((16, 16), bool)
    some = disc((16, 16), 8, 8, 4)
    assert sm.cldice(empty, empty) == 1.0
    assert sm.cldice(some, empty) == 0.0 and sm.cldice(empty, some) == 0.0
    c = sm.topology_counts(empty, empty)
    assert (c.beta0_error, c.beta1_error, c.cldice) == (0, 0, 1.0)


def test_topology_scores_pool_counts_and_sum_across_states():
    g, p = random_masks(4), random_masks(5)
    whole = sm.TopologyScores()
    whole.update(torch.from_numpy(p)[:, None], torch.from_numpy(g)[:, None])
    r = whole.compute()
    counts = [sm.topology_counts(a, b) for a, b in zip(p, g, strict=True)]
    sums = np.sum([list(c[:4]) for c in counts], axis=0)
    assert r["cldice"] == sm.cldice_of_counts(*sums)
    assert r["cldice_mean"] == pytest.approx(np.mean([c.cldice for c in counts]), abs=1e-12)
    assert r["beta0_error"] == np.mean([c.beta0_error for c in counts])
    assert r["beta1_error"] == np.mean([c.beta1_error for c in counts])
    # two ranks' states summed give the one-process scores
    a, b = sm.TopologyScores(), sm.TopologyScores()
    a.update(p[:2], g[:2])
    b.update(p[2:], g[2:])
    merged = sm.TopologyScores.from_state(list(np.add(a.state(), b.state()))).compute()
    for k, v in r.items():
        assert merged[k] == (pytest.approx(v, abs=1e-12) if isinstance(v, float) else v), k
    with pytest.raises(ValueError, match="at least one update"):
        sm.TopologyScores().compute()


# ----------------------------------------------------------------------------- objects


def two_touching_discs() -> np.ndarray:
    """Labels 1 and 2: equal discs (r 20) in adjacent columns, one 8-connected mask."""
    t = np.zeros((256, 256), np.int64)
    t[disc(t.shape, 128, 100, 20)] = 1
    t[disc(t.shape, 128, 141, 20)] = 2
    assert ndi.label(t > 0, structure=np.ones((3, 3)))[1] == 1
    return t


def test_two_touching_discs_merged_into_one_object_lose_ap_but_no_iou():
    t = two_touching_discs()
    merged = sm.object_counts(t > 0, t)  # the exact semantic mask: one component
    assert pixel_iou(t > 0, t > 0) == 1.0  # IoU sees nothing wrong
    # each disc has IoU exactly 0.5 with the merged object: not > 0.5, no match
    np.testing.assert_allclose(sm.iou_matrix(t, t > 0), [[0.5], [0.5]])
    assert (merged.n_true, merged.n_pred, merged.tp[0]) == (2, 1, 0)
    assert merged.ap_per_threshold[0] == 0.0 and merged.ap == 0.0
    assert merged.f1 == 0.0 and merged.pq == 0.0
    # a prediction that keeps a 1 px line between them: both found, IoU barely lower
    split = t > 0
    split[:, 120] = False
    found = sm.object_counts(split, t)
    assert found.tp[0] == 2 and found.ap_per_threshold[0] == 1.0 and found.f1 == 1.0
    assert 1 - pixel_iou(split, t > 0) < 0.05
    # integer predictions are instance labels, used as they are
    assert sm.object_counts(t, t).ap == 1.0 and sm.object_counts(t, t).pq == 1.0


def slow_iou(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    ti = [v for v in np.unique(t) if v]
    pi = [v for v in np.unique(p) if v]
    out = np.zeros((len(ti), len(pi)))
    for a, u in enumerate(ti):
        for b, v in enumerate(pi):
            inter = np.sum((t == u) & (p == v))
            out[a, b] = inter / np.sum((t == u) | (p == v))
    return out


def random_labels(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """True instance labels (gaps in the numbering) and a perturbed prediction's labels."""
    rng = np.random.default_rng(seed)
    t = np.zeros((96, 96), np.int64)
    for k in range(12):
        cy, cx, r = rng.uniform(8, 88), rng.uniform(8, 88), rng.uniform(3, 9)
        t[disc(t.shape, cy, cx, r)] = 3 * k + 5
    shift = ndi.shift(t, (rng.integers(-2, 3), rng.integers(-2, 3)), order=0)
    p = np.where(rng.random(t.shape) < 0.03, 0, shift)
    p = sk_label(p > 0, connectivity=2) if seed % 2 else p
    return t, p


def test_iou_matrix_matches_pairwise_masks():
    for seed in range(4):
        t, p = random_labels(seed)
        np.testing.assert_allclose(sm.iou_matrix(t, p), slow_iou(t, p), rtol=0, atol=1e-15)


def test_ap_and_pq_match_a_direct_computation():
    """TP by a maximum one-to-one assignment (scipy) on the pairwise IoU; AP per threshold as
    TP / (TP + FP + FN); PQ as the sum of matched IoUs over TP + FP/2 + FN/2."""
    for seed in range(6):
        t, p = random_labels(seed)
        m = slow_iou(t, p)
        c = sm.object_counts(p, t)
        for k, th in enumerate(sm.AP_THRESHOLDS):
            rows, cols = linear_sum_assignment(-(m > th).astype(float))
            tp = int(sum(m[r, q] > th for r, q in zip(rows, cols, strict=True)))
            assert c.tp[k] == tp, (seed, th)
            assert len(sm.match_instances(m, th)) == tp
            assert c.ap_per_threshold[k] == pytest.approx(tp / (m.shape[0] + m.shape[1] - tp))
        matched = [m[r, q] for r, q in zip(*np.nonzero(m > 0.5), strict=True)]
        fp, fn = m.shape[1] - len(matched), m.shape[0] - len(matched)
        want = sum(matched) / (len(matched) + fp / 2 + fn / 2)
        assert c.pq == pytest.approx(want, abs=1e-12)
        pq = sm.panoptic_quality(c.tp[0], c.n_true, c.n_pred, c.iou_sum)
        assert pq["pq"] == pytest.approx(pq["sq"] * pq["rq"], abs=1e-12)
        assert pq["rq"] == c.f1


def test_matching_below_one_half_maximises_matches():
    m = np.array([[0.45, 0.40], [0.42, 0.0]])  # greedy on the best IoU would match once
    assert sorted(sm.match_instances(m, 0.3)) == [(0, 1), (1, 0)]
    assert sm.match_instances(m, 0.5) == []


def test_object_conventions_and_split_scores():
    empty = np.zeros((1, 16, 16), np.int64)
    one = empty.copy()
    one[0, 4:8, 4:8] = 1
    s = sm.ObjectScores()
    s.update(empty > 0, empty)  # nothing true, nothing predicted: AP = F1 = PQ = 1
    s.update(one > 0, empty)  # a false positive
    s.update(empty > 0, one)  # a false negative
    s.update(one > 0, one)  # a perfect match
    r = s.compute()
    assert r["ap"] == r["ap_50"] == 0.5
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 1)
    assert r["f1"] == 0.5 and r["pq"] == 0.5 and r["sq"] == 1.0 and r["rq"] == 0.5
    assert r["f1_mean"] == r["pq_mean"] == 0.5
    # the split's F1 and PQ from summed counts equal one rank's; AP sums of per-image values
    a, b = sm.ObjectScores(), sm.ObjectScores()
    for acc, (pp, tt) in zip(
        (a, a, b, b), [(empty, empty), (one, empty), (empty, one), (one, one)], strict=True
    ):
        acc.update(pp > 0, tt)
    assert sm.ObjectScores.from_state(list(np.add(a.state(), b.state()))).compute() == r
    with pytest.raises(TypeError, match="bool .* or integer"):
        sm.object_counts(one[0].astype(float), one[0])


# ----------------------------------------------------------------------------- boundaries


def scipy_hd95_nsd(p: np.ndarray, g: np.ndarray, tol: float) -> tuple[float, float]:
    """HD95 and NSD from SciPy: boundaries by a 4-connected erosion (outside = background),
    distances by the exact Euclidean distance transform, linear percentiles."""
    ep, eg = p ^ ndi.binary_erosion(p), g ^ ndi.binary_erosion(g)
    d_pg = ndi.distance_transform_edt(~eg)[ep]
    d_gp = ndi.distance_transform_edt(~ep)[eg]
    hd = max(np.percentile(d_pg, 95), np.percentile(d_gp, 95))
    nsd = (np.sum(d_pg <= tol) + np.sum(d_gp <= tol)) / (d_pg.size + d_gp.size)
    return float(hd), float(nsd)


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
def test_a_boundary_shifted_by_k_moves_hd95_by_k(k: int):
    g = disc((256, 256), 128, 128, 40)[None]
    p = np.roll(g, k, axis=2)
    hd, nsd = sm.boundary_scores(p, g, tolerance=k)
    assert abs(hd[0] - k) <= 0.5
    assert nsd[0] == 1.0  # tolerance >= shift
    _, below = sm.boundary_scores(p, g, tolerance=k - 0.5)
    assert below[0] < 1.0
    hd0, nsd0 = sm.boundary_scores(g, g)
    assert (hd0[0], nsd0[0]) == (0.0, 1.0)


def test_boundaries_match_scipy_and_monais_public_functions():
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    g, p = random_masks(6, size=96), random_masks(7, size=96)
    hd, nsd = sm.boundary_scores(torch.from_numpy(p)[:, None], torch.from_numpy(g)[:, None], 1.5)
    for i in range(len(g)):
        want_hd, want_nsd = scipy_hd95_nsd(p[i], g[i], 1.5)
        assert hd[i] == pytest.approx(want_hd, abs=1e-4)  # MONAI works in float32
        assert nsd[i] == pytest.approx(want_nsd, abs=1e-12)
    yp, yg = torch.from_numpy(p[:, None]).float(), torch.from_numpy(g[:, None]).float()
    monai_hd = compute_hausdorff_distance(yp, yg, include_background=True, percentile=95)
    monai_nsd = compute_surface_dice(yp, yg, [1.5], include_background=True)
    np.testing.assert_array_equal(hd, monai_hd[:, 0].double().numpy())
    np.testing.assert_allclose(nsd, monai_nsd[:, 0].double().numpy(), rtol=1e-6)


def test_boundary_conventions_for_empty_masks():
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    empty = np.zeros((1, 30, 40), bool)
    some = empty.copy()
    some[0, 5:10, 5:10] = True
    # MONAI's own: NaN HD95 when either is empty, NaN NSD when both are (warnings hidden)
    with pytest.warns(UserWarning):
        z = torch.zeros(1, 1, 8, 8)
        assert math.isnan(
            float(compute_hausdorff_distance(z, z, include_background=True, percentile=95))
        )
        assert math.isnan(float(compute_surface_dice(z, z, [1.0], include_background=True)))
    hd, nsd = sm.boundary_scores(
        np.concatenate([empty, some, empty]), np.concatenate([empty, empty, some])
    )
    assert hd.tolist() == [0.0, 50.0, 50.0]  # the diagonal of 30 x 40
    assert nsd.tolist() == [1.0, 0.0, 0.0]
    s = sm.BoundaryScores(tolerance=1)
    s.update(np.concatenate([empty, some]), np.concatenate([empty, empty]))
    assert s.compute() == {
        "hd95": 25.0,
        "nsd": 0.5,
        "nsd_tolerance_px": 1,
        "one_empty": 1,
        "images": 2,
    }
    assert sm.BoundaryScores.from_state(s.state(), 1).compute() == s.compute()
    with pytest.raises(ValueError, match="tolerance"):
        sm.boundary_scores(some, some, tolerance=-1)
    with pytest.raises(ValueError, match="binary"):
        sm.boundary_scores(some * 2, some)


# ----------------------------------------------------------------------------- worst case


def test_worst_case_is_at_most_every_attack_image_by_image():
    rng = np.random.default_rng(8)
    ids = [f"img{i}" for i in range(50)]
    scores = {
        a: {i: float(rng.choice([0.2, 0.5, rng.random()])) for i in ids}
        for a in ("fgsm", "pgd", "segpgd", "square")
    }
    w = sm.worst_case(scores)
    for a, per in scores.items():
        assert all(w.score[i] <= per[i] for i in ids), a
    assert all(w.score[i] == scores[w.attack[i]][i] for i in ids)
    assert sum(w.counts.values()) == len(ids) and list(w.counts) == list(scores)
    assert w.mean == pytest.approx(np.mean(list(w.score.values())))
    # ties go to the first attack of the order
    tie = {"fgsm": {"a": 0.5}, "pgd": {"a": 0.5}}
    assert sm.worst_case(tie).attack == {"a": "fgsm"}
    assert sm.worst_case(tie, order=["pgd", "fgsm"]).attack == {"a": "pgd"}
    # distances: the worst is the largest
    hd = sm.worst_case({"fgsm": {"a": 3.0}, "pgd": {"a": 5.0}}, higher_is_better=False)
    assert hd.score == {"a": 5.0} and hd.counts == {"fgsm": 0, "pgd": 1}
    with pytest.raises(ValueError, match="same images"):
        sm.worst_case({"fgsm": {"a": 1.0}, "pgd": {"b": 1.0}})
    with pytest.raises(ValueError, match="order"):
        sm.worst_case(tie, order=["pgd"])


# ----------------------------------------------------------------------------- mCE


def test_mce_of_the_reference_against_itself_is_one():
    ref = {
        "snr": {"snr_1": 0.3, "snr_2": 0.6, "snr_8": 0.9},
        "sib": {"sib_1": 0.85, "sib_5": 0.4},
    }
    r = sm.mean_corruption_error(ref, ref)
    assert r == {"mce": 1.0, "families": {"snr": 1.0, "sib": 1.0}}
    # half the reference's errors on every level: CE 0.5
    half = {f: {s: 1 - (1 - v) / 2 for s, v in lv.items()} for f, lv in ref.items()}
    assert sm.mean_corruption_error(half, ref)["mce"] == pytest.approx(0.5)
    # CE sums errors over levels before dividing
    assert sm.corruption_error({"a": 0.5, "b": 1.0}, {"a": 0.0, "b": 0.5}) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="no error"):
        sm.corruption_error({"a": 0.5}, {"a": 1.0})
    with pytest.raises(ValueError, match="same splits"):
        sm.corruption_error({"a": 0.5}, {"b": 0.5})
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        sm.corruption_error({"a": 1.5}, {"a": 0.5})

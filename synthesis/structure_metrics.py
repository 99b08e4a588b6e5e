"""Scores that see what matters to each structure, beside pixel IoU (:mod:`synthesis.metrics`).

Pixel IoU is blind to a broken tubule (ER, mitochondria are networks) and to two merged
nuclei (nuclei are counted). This module defines, on binary masks and instance labels:

- **topology** (ER, mitochondria): clDice (Shit et al., CVPR 2021) on skeletons by
  ``skimage.morphology.skeletonize(method="zhang")`` (Zhang & Suen's 2-D thinning), and the
  Betti-number errors ``|Δβ0|`` (foreground components, 8-connected) and ``|Δβ1|`` (loops:
  holes, i.e. 4-connected background components that do not reach the image border) of the
  prediction against the ground truth (:func:`topology_counts`, :class:`TopologyScores`);
- **objects** (nuclei): one-to-one matching of predicted to true instances at IoU > t, the
  IoU matrix from a contingency table (``np.bincount``), average precision as the 2018 Data
  Science Bowl defines it, F1 and panoptic quality (:func:`object_counts`,
  :class:`ObjectScores`);
- **boundaries**: HD95 and the normalised surface distance (NSD) by MONAI
  (:func:`boundary_scores`, :class:`BoundaryScores`), with our conventions for empty masks;
- **the worst case over attacks**, image by image (:func:`worst_case`);
- **the mCE-style relative error** of a model against the reference model, in the manner of
  ImageNet-C (:func:`corruption_error`, :func:`mean_corruption_error`).

Every split-level value is computed from per-image counts or values that are **sums**: the
accumulators (:class:`TopologyScores`, :class:`ObjectScores`, :class:`BoundaryScores`) have
the ``state`` / ``from_state`` of :class:`synthesis.metrics.SegmentationScores`, so ranks that
scored different splits sum their states and a multi-process run gives the one-process
values. Definitions, conventions and their reasons: ``docs/definitions.md#structure-metrics``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment
from skimage.morphology import skeletonize
from torch import Tensor

__all__ = [
    "AP_THRESHOLDS",
    "HD_PERCENTILE",
    "NSD_TOLERANCE_PX",
    "SKELETON_METHOD",
    "BoundaryScores",
    "ObjectCounts",
    "ObjectScores",
    "TopologyCounts",
    "TopologyScores",
    "WorstCase",
    "average_precision",
    "betti_numbers",
    "boundary_scores",
    "cldice",
    "cldice_of_counts",
    "corruption_error",
    "instance_labels",
    "iou_matrix",
    "match_instances",
    "mean_corruption_error",
    "object_counts",
    "panoptic_quality",
    "skeleton",
    "topology_counts",
    "worst_case",
]

#: The skeletonisation of clDice: ``skimage.morphology.skeletonize(mask, method="zhang")``.
SKELETON_METHOD = "zhang"
#: IoU thresholds of the 2018 Data Science Bowl's average precision: 0.5:0.05:0.95.
AP_THRESHOLDS: tuple[float, ...] = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
#: The percentile of the Hausdorff distance (HD95).
HD_PERCENTILE = 95.0
#: Default tolerance (px) of the normalised surface distance.
NSD_TOLERANCE_PX = 2.0

_EIGHT = np.ones((3, 3), dtype=bool)  # foreground connectivity (and objects)
_FOUR = ndi.generate_binary_structure(2, 1)  # background connectivity (holes)
#: Above this many cells the contingency table is built sparsely (np.unique), not densely.
_DENSE_CELLS = 1 << 22


# ----------------------------------------------------------------------------- inputs


def _numpy(x: object, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array or torch tensor. Got {type(x).__name__}")
    if x.size == 0:
        raise ValueError(f"{name} must not be empty. Got shape {x.shape}")
    return x


def _binary(m: np.ndarray, name: str) -> np.ndarray:
    """``m`` as bool: bool kept, numbers holding only 0 and 1 converted."""
    if m.dtype != bool:
        bad = (m != 0) & (m != 1)
        if bad.any():
            raise ValueError(
                f"{name} must be binary (0/1 or bool). Got values such as {m[bad][0]!r}"
            )
        m = m != 0
    return m


def _mask(x: object, name: str = "mask") -> np.ndarray:
    """A 2-D bool mask (bool, or integers/floats holding only 0 and 1)."""
    m = _numpy(x, name)
    if m.ndim != 2:
        raise ValueError(f"{name} must be 2-D (H, W). Got shape {m.shape}")
    return _binary(m, name)


def _pair(pred: object, target: object) -> tuple[np.ndarray, np.ndarray]:
    p, t = _mask(pred, "pred"), _mask(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred and target must have the same shape. Got {p.shape} and {t.shape}")
    return p, t


def _batch(x: object, name: str) -> np.ndarray:
    """``(B, H, W)`` from ``(B, H, W)`` or ``(B, 1, H, W)``."""
    a = _numpy(x, name)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 3:
        raise ValueError(f"{name} must have shape (B, H, W) or (B, 1, H, W). Got {a.shape}")
    return a


def _batch_pair(pred: object, target: object) -> tuple[np.ndarray, np.ndarray]:
    p, t = _batch(pred, "pred"), _batch(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred and target must have the same shape. Got {p.shape} and {t.shape}")
    return p, t


# ----------------------------------------------------------------------------- topology


def skeleton(mask: np.ndarray | Tensor) -> np.ndarray:
    """The skeleton of a 2-D mask: ``skimage.morphology.skeletonize(mask, method="zhang")``.

    Example:
        >>> m = np.zeros((7, 9), bool); m[2:5, 1:8] = True
        >>> skeleton(m).astype(int)[1:6, 1:8]  # a bar 3 px wide: one-pixel centreline
        array([[0, 0, 0, 0, 0, 0, 0],
               [0, 0, 0, 0, 0, 1, 0],
               [1, 1, 1, 1, 1, 0, 0],
               [0, 0, 0, 0, 0, 0, 0],
               [0, 0, 0, 0, 0, 0, 0]])
    """
    return skeletonize(_mask(mask), method=SKELETON_METHOD)


def betti_numbers(mask: np.ndarray | Tensor) -> tuple[int, int]:
    """Betti numbers ``(β0, β1)`` of a 2-D mask, with the 8/4 connectivity pair.

    ``β0``: connected components of the foreground, 8-connected. ``β1``: loops, counted as
    holes: connected components of the background, 4-connected, that do not reach the image
    border (the plane outside the image is background, so a region open to the border is
    not a hole). With 8-connected foreground and 4-connected background this is the dual
    pair for which ``β0 - β1`` is the Euler number
    (``skimage.measure.euler_number(mask, connectivity=2)``).

    Example:
        >>> ring = np.zeros((9, 9), bool); ring[2:7, 2:7] = True; ring[4, 4] = False
        >>> betti_numbers(ring)
        (1, 1)
        >>> diagonal = np.eye(4, dtype=bool)  # 8-connected: one component, no hole
        >>> betti_numbers(diagonal)
        (1, 0)
    """
    m = _mask(mask)
    b0 = ndi.label(m, structure=_EIGHT)[1]
    background = np.pad(~m, 1, constant_values=True)  # one region joins everything open
    b1 = ndi.label(background, structure=_FOUR)[1] - 1
    return int(b0), int(b1)


class TopologyCounts(NamedTuple):
    """Per-image counts of clDice and the Betti numbers (``S``: :func:`skeleton`, ``P``:
    prediction, ``G``: ground truth)."""

    skeleton_pred: int  # |S(P)|
    skeleton_pred_in_target: int  # |S(P) ∩ G|
    skeleton_target: int  # |S(G)|
    skeleton_target_in_pred: int  # |S(G) ∩ P|
    beta0_pred: int
    beta0_target: int
    beta1_pred: int
    beta1_target: int

    @property
    def cldice(self) -> float:
        """clDice of these counts (:func:`cldice_of_counts`)."""
        return cldice_of_counts(*self[:4])

    @property
    def beta0_error(self) -> int:
        """``|β0(P) - β0(G)|``."""
        return abs(self.beta0_pred - self.beta0_target)

    @property
    def beta1_error(self) -> int:
        """``|β1(P) - β1(G)|``."""
        return abs(self.beta1_pred - self.beta1_target)


def cldice_of_counts(
    skeleton_pred: float,
    skeleton_pred_in_target: float,
    skeleton_target: float,
    skeleton_target_in_pred: float,
) -> float:
    """clDice from skeleton counts (of one image, or summed over a split).

    ``Tprec = |S(P) ∩ G| / |S(P)|`` (topology precision), ``Tsens = |S(G) ∩ P| / |S(G)|``
    (topology sensitivity), ``clDice = 2 Tprec Tsens / (Tprec + Tsens)``. Conventions: both
    skeletons empty (both masks empty) → 1; exactly one empty → 0 (nothing to match);
    ``Tprec + Tsens = 0`` → 0.

    Example:
        >>> cldice_of_counts(10, 10, 20, 10), cldice_of_counts(0, 0, 0, 0), cldice_of_counts(0, 0, 5, 0)
        (0.6666666666666666, 1.0, 0.0)
    """
    if skeleton_pred == 0 and skeleton_target == 0:
        return 1.0
    if skeleton_pred == 0 or skeleton_target == 0:
        return 0.0
    tprec = skeleton_pred_in_target / skeleton_pred
    tsens = skeleton_target_in_pred / skeleton_target
    return 2 * tprec * tsens / (tprec + tsens) if tprec + tsens > 0 else 0.0


def topology_counts(pred: np.ndarray | Tensor, target: np.ndarray | Tensor) -> TopologyCounts:
    """clDice skeleton counts and Betti numbers of one 2-D prediction against its truth.

    Args:
        pred: ``(H, W)`` binary prediction (bool or 0/1).
        target: ``(H, W)`` binary ground truth.

    Returns:
        :class:`TopologyCounts` (``.cldice``, ``.beta0_error``, ``.beta1_error``).

    Example:
        >>> g = np.zeros((9, 30), bool); g[3:6, 2:28] = True
        >>> p = g.copy(); p[:, 14:16] = False  # the tubule cut in one place
        >>> c = topology_counts(p, g)
        >>> c.beta0_error, c.beta1_error, round(c.cldice, 3)
        (1, 0, 0.958)
    """
    p, g = _pair(pred, target)
    sp, sg = skeleton(p), skeleton(g)
    b0p, b1p = betti_numbers(p)
    b0g, b1g = betti_numbers(g)
    return TopologyCounts(
        int(sp.sum()),
        int((sp & g).sum()),
        int(sg.sum()),
        int((sg & p).sum()),
        b0p,
        b0g,
        b1p,
        b1g,
    )


def cldice(pred: np.ndarray | Tensor, target: np.ndarray | Tensor) -> float:
    """clDice of one 2-D prediction against its truth (:func:`cldice_of_counts`)."""
    p, g = _pair(pred, target)
    sp, sg = skeleton(p), skeleton(g)
    return cldice_of_counts(sp.sum(), (sp & g).sum(), sg.sum(), (sg & p).sum())


class _SplitState:
    """A split's accumulators ``STATE`` (floats where named in ``_FLOATS``, counts
    elsewhere), as :class:`synthesis.metrics.SegmentationScores`: :meth:`state` gives them as
    numbers whose sum over processes is the state of the whole split."""

    STATE: tuple[str, ...] = ()
    _FLOATS: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self._v: dict[str, float] = {k: (0.0 if k in self._FLOATS else 0) for k in self.STATE}

    def state(self) -> list[float]:
        """The accumulators as numbers (counts are exact in float64 below 2**53)."""
        return [float(self._v[k]) for k in self.STATE]

    def _load(self, values: Sequence[float]) -> None:
        for k, v in zip(self.STATE, values, strict=True):
            self._v[k] = float(v) if k in self._FLOATS else int(v)

    def _images(self) -> int:
        """The number of images added.

        Raises:
            ValueError: none.
        """
        n = int(self._v["images"])
        if n == 0:
            raise ValueError(
                f"{type(self).__name__}.compute needs at least one update. Got 0 images"
            )
        return n


class TopologyScores(_SplitState):
    """Accumulates clDice and the Betti-number errors over a split, batch by batch.

    A split reports ``cldice`` (pooled: the four skeleton counts summed over images, then
    :func:`cldice_of_counts`; exact from summed states), ``cldice_mean`` (per image),
    ``beta0_error`` and ``beta1_error`` (mean per image of ``|Δβ0|``, ``|Δβ1|``), the mean
    Betti numbers of predictions and truths, and the pooled ``topology_precision`` and
    ``topology_sensitivity`` (None where no skeleton pixel was counted).

    Example:
        >>> s = TopologyScores()
        >>> g = np.zeros((1, 9, 30), bool); g[:, 3:6, 2:28] = True
        >>> s.update(g, g)
        >>> r = s.compute()
        >>> r["cldice"], r["beta0_error"], r["images"]
        (1.0, 0.0, 1)
    """

    #: The accumulators, in the order of :meth:`state`.
    STATE = (*TopologyCounts._fields, "cldice_sum", "beta0_error_sum", "beta1_error_sum", "images")
    _FLOATS = frozenset({"cldice_sum"})

    @classmethod
    def from_state(cls, values: Sequence[float]) -> TopologyScores:
        """The scores whose :meth:`state` is ``values``."""
        scores = cls()
        scores._load(values)
        return scores

    def add(self, counts: TopologyCounts) -> None:
        """Add one image's counts."""
        for k, v in zip(TopologyCounts._fields, counts, strict=True):
            self._v[k] += v
        self._v["cldice_sum"] += counts.cldice
        self._v["beta0_error_sum"] += counts.beta0_error
        self._v["beta1_error_sum"] += counts.beta1_error
        self._v["images"] += 1

    def update(self, pred: np.ndarray | Tensor, target: np.ndarray | Tensor) -> None:
        """Add a batch: binary ``(B, H, W)`` or ``(B, 1, H, W)`` predictions and truths."""
        p, g = _batch_pair(pred, target)
        for i in range(p.shape[0]):
            self.add(topology_counts(p[i], g[i]))

    def compute(self) -> dict[str, Any]:
        """The split's scores (class docstring).

        Raises:
            ValueError: nothing was added.
        """
        v, n = self._v, self._images()
        sp, st = v["skeleton_pred"], v["skeleton_target"]
        return {
            "cldice": cldice_of_counts(*(v[k] for k in TopologyCounts._fields[:4])),
            "cldice_mean": v["cldice_sum"] / n,
            "topology_precision": v["skeleton_pred_in_target"] / sp if sp else None,
            "topology_sensitivity": v["skeleton_target_in_pred"] / st if st else None,
            "beta0_error": v["beta0_error_sum"] / n,
            "beta1_error": v["beta1_error_sum"] / n,
            "beta0_pred_mean": v["beta0_pred"] / n,
            "beta0_target_mean": v["beta0_target"] / n,
            "beta1_pred_mean": v["beta1_pred"] / n,
            "beta1_target_mean": v["beta1_target"] / n,
            "skeleton_counts": {k: v[k] for k in TopologyCounts._fields[:4]},
            "images": n,
        }


# ----------------------------------------------------------------------------- objects


def instance_labels(mask: np.ndarray | Tensor) -> np.ndarray:
    """Objects of a semantic mask: its 8-connected components, labelled 1..N (0: background).

    Example:
        >>> m = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0], [1, 1, 0]])
        >>> instance_labels(m).tolist()
        [[1, 0, 0], [0, 1, 0], [0, 0, 0], [2, 2, 0]]
    """
    return ndi.label(_mask(mask), structure=_EIGHT)[0].astype(np.int64)


def _labels(x: object, name: str) -> np.ndarray:
    """Instance labels: integers kept as they are (0 = background), bool → components."""
    a = _numpy(x, name)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (H, W). Got shape {a.shape}")
    if a.dtype == bool:
        return instance_labels(a)
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(
            f"{name} must be bool (a semantic mask) or integer instance labels. Got {a.dtype}"
        )
    a = a.astype(np.int64, copy=False)
    if a.size and a.min() < 0:
        raise ValueError(f"{name} must hold labels >= 0 (0 = background). Got {a.min()}")
    return a


def _compact(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels renumbered 1..n in their order (0 stays 0), flattened, and the areas of 0..n."""
    flat = labels.ravel()
    area = np.bincount(flat)
    present = np.flatnonzero(area[1:]) + 1
    n = present.size
    if n and present[-1] != n:  # gaps in the numbering
        lut = np.zeros(area.size, dtype=np.int64)
        lut[present] = np.arange(1, n + 1)
        flat = lut[flat]
    return flat, np.concatenate([area[:1], area[present]])


def _overlaps(
    true_labels: np.ndarray, pred_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """The overlapping pairs ``(i, j, iou)`` (0-based object indices) and the object counts."""
    if true_labels.shape != pred_labels.shape:
        raise ValueError(
            f"true and predicted labels must have the same shape. Got {true_labels.shape} and "
            f"{pred_labels.shape}"
        )
    t, area_t = _compact(true_labels)
    p, area_p = _compact(pred_labels)
    n_t, n_p = area_t.size - 1, area_p.size - 1
    both = (t > 0) & (p > 0)
    code = (t[both] - 1) * n_p + (p[both] - 1)
    if n_t * n_p <= _DENSE_CELLS:  # the contingency table
        inter = np.bincount(code, minlength=n_t * n_p)
        cells = np.flatnonzero(inter)
        inter = inter[cells]
    else:  # a noisy prediction with very many objects: only the cells that occur
        cells, inter = np.unique(code, return_counts=True)
    i, j = cells // max(n_p, 1), cells % max(n_p, 1)
    iou = inter / (area_t[i + 1] + area_p[j + 1] - inter)
    return i, j, iou, n_t, n_p


def iou_matrix(true_labels: np.ndarray | Tensor, pred_labels: np.ndarray | Tensor) -> np.ndarray:
    """IoU of every true object (rows) with every predicted object (columns).

    Objects are numbered in the order of their labels (gaps skipped); bool inputs become
    :func:`instance_labels`. Computed from the contingency table of the two label images
    (``np.bincount``), not object by object.

    Example:
        >>> t = np.array([[1, 1, 0, 2]]); p = np.array([[1, 0, 0, 3]])
        >>> iou_matrix(t, p).tolist()
        [[0.5, 0.0], [0.0, 1.0]]
    """
    i, j, iou, n_t, n_p = _overlaps(
        _labels(true_labels, "true_labels"), _labels(pred_labels, "pred_labels")
    )
    out = np.zeros((n_t, n_p))
    out[i, j] = iou
    return out


def match_instances(iou: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """One-to-one matches ``(true, predicted)`` of an IoU matrix at IoU > ``threshold``.

    For ``threshold >= 0.5`` matches are unique, no assignment is needed: ``IoU(g, p) > 0.5``
    means ``|g ∩ p| > |g ∪ p| / 2``, so ``p`` holds more than half of ``g`` and ``g`` more
    than half of ``p``; disjoint objects cannot both do so, hence every object has at most
    one partner above the threshold. Below 0.5 the matching is a maximum-cardinality
    assignment (``scipy.optimize.linear_sum_assignment``) that, among those, maximises the
    summed IoU (StarDist's rule).

    Example:
        >>> match_instances(np.array([[0.6, 0.2], [0.3, 0.45]]), 0.5)
        [(0, 0)]
        >>> match_instances(np.array([[0.6, 0.2], [0.3, 0.45]]), 0.25)
        [(0, 0), (1, 1)]
    """
    iou = np.asarray(iou, dtype=np.float64)
    if iou.ndim != 2:
        raise ValueError(f"iou must be a 2-D matrix. Got shape {iou.shape}")
    if threshold >= 0.5:
        return [(int(a), int(b)) for a, b in zip(*np.nonzero(iou > threshold), strict=True)]
    above = iou > threshold
    if not above.any():
        return []
    k = min(iou.shape)
    cost = -above.astype(np.float64) - np.where(above, iou, 0.0) / (2 * k)
    rows, cols = linear_sum_assignment(cost)
    return [(int(a), int(b)) for a, b in zip(rows, cols, strict=True) if above[a, b]]


class ObjectCounts(NamedTuple):
    """Per-image object counts: objects, true positives per :data:`AP_THRESHOLDS` and the
    summed IoU of the matches at 0.5 (for panoptic quality)."""

    n_true: int
    n_pred: int
    tp: tuple[int, ...]  # per AP_THRESHOLDS
    iou_sum: float  # matched IoUs at 0.5

    @property
    def ap(self) -> float:
        """Mean over :data:`AP_THRESHOLDS` of :func:`average_precision` (the DSB score)."""
        return sum(self.ap_per_threshold) / len(self.tp)

    @property
    def ap_per_threshold(self) -> list[float]:
        """:func:`average_precision` at each of :data:`AP_THRESHOLDS`."""
        return [average_precision(tp, self.n_true, self.n_pred) for tp in self.tp]

    @property
    def f1(self) -> float:
        """F1 at 0.5: ``2 TP / (2 TP + FP + FN)``; 1 when there are no objects at all."""
        return _f1(self.tp[0], self.n_true, self.n_pred)

    @property
    def pq(self) -> float:
        """Panoptic quality at 0.5 (:func:`panoptic_quality`)."""
        return panoptic_quality(self.tp[0], self.n_true, self.n_pred, self.iou_sum)["pq"]


def average_precision(tp: float, n_true: float, n_pred: float) -> float:
    """``TP / (TP + FP + FN)`` with ``FP = n_pred - TP``, ``FN = n_true - TP``; 1 when there
    are neither true nor predicted objects (the 2018 Data Science Bowl's "precision" at one
    IoU threshold).

    Example:
        >>> average_precision(1, 2, 1), average_precision(0, 0, 0), average_precision(0, 0, 3)
        (0.5, 1.0, 0.0)
    """
    den = n_true + n_pred - tp
    return tp / den if den else 1.0


def _f1(tp: float, n_true: float, n_pred: float) -> float:
    den = n_true + n_pred
    return 2 * tp / den if den else 1.0


def panoptic_quality(tp: float, n_true: float, n_pred: float, iou_sum: float) -> dict[str, float]:
    """Panoptic quality (Kirillov et al., CVPR 2019) of one class from its counts.

    ``SQ = Σ matched IoU / TP``, ``RQ = TP / (TP + FP/2 + FN/2)`` (= F1 at 0.5),
    ``PQ = SQ × RQ = Σ matched IoU / (TP + FP/2 + FN/2)``, matches at IoU > 0.5. Conventions:
    no objects at all → PQ = SQ = RQ = 1; objects but no match → SQ = 0 (so PQ = SQ × RQ holds
    in every case).

    Example:
        >>> r = panoptic_quality(tp=2, n_true=3, n_pred=2, iou_sum=1.6)
        >>> round(r["sq"], 3), round(r["rq"], 3), round(r["pq"], 3)
        (0.8, 0.8, 0.64)
    """
    den = n_true + n_pred
    if den == 0:
        return {"pq": 1.0, "sq": 1.0, "rq": 1.0}
    sq = iou_sum / tp if tp else 0.0
    rq = 2 * tp / den
    return {"pq": 2 * iou_sum / den, "sq": sq, "rq": rq}


def object_counts(pred: np.ndarray | Tensor, target: np.ndarray | Tensor) -> ObjectCounts:
    """Match one image's predicted objects to its true instances.

    Args:
        pred: ``(H, W)`` bool semantic prediction (objects: :func:`instance_labels`) or
            integer instance labels (a user's post-processing; 0 = background). The dtype
            decides: an integer 0/1 mask is read as labels, all its foreground one object.
        target: ``(H, W)`` integer true instance labels (or a bool mask: its components).

    Returns:
        :class:`ObjectCounts` (``.ap``, ``.ap_per_threshold``, ``.f1``, ``.pq``).

    Example:
        >>> t = np.zeros((8, 8), int); t[1:4, 1:4] = 1; t[4:7, 1:4] = 2  # two touching objects
        >>> c = object_counts(t > 0, t)  # the semantic mask is exact, its component is one object
        >>> c.n_true, c.n_pred, c.tp[0], c.ap
        (2, 1, 0, 0.0)
        >>> object_counts(t, t).ap
        1.0
    """
    p, t = _labels(pred, "pred"), _labels(target, "target")
    _, _, iou, n_t, n_p = _overlaps(t, p)
    tp = [int((iou > th).sum()) for th in AP_THRESHOLDS]  # unique matches: thresholds >= 0.5
    return ObjectCounts(n_t, n_p, tuple(tp), float(iou[iou > 0.5].sum()))


class ObjectScores(_SplitState):
    """Accumulates object scores over a split, batch by batch.

    A split reports ``ap`` (the 2018 Data Science Bowl score: the mean over images of each
    image's AP averaged over :data:`AP_THRESHOLDS`), ``ap_50`` (mean over images of AP at
    0.5), ``ap_per_threshold``, and from the counts summed over images (exact from summed
    states): ``f1`` (at 0.5), ``pq``, ``sq``, ``rq`` and ``tp``/``fp``/``fn`` at 0.5; also the
    per-image means ``f1_mean`` and ``pq_mean``.

    Example:
        >>> s = ObjectScores()
        >>> t = np.zeros((1, 8, 8), int); t[0, 1:4, 1:4] = 1; t[0, 4:7, 1:4] = 2
        >>> s.update(t > 0, t)
        >>> r = s.compute()
        >>> r["ap_50"], r["tp"], r["fp"], r["fn"]
        (0.0, 0, 1, 2)
    """

    #: The accumulators, in the order of :meth:`state`.
    STATE = (
        "n_true",
        "n_pred",
        *(f"tp_{t:.2f}" for t in AP_THRESHOLDS),
        "iou_sum",
        *(f"ap_sum_{t:.2f}" for t in AP_THRESHOLDS),
        "f1_sum",
        "pq_sum",
        "images",
    )
    _FLOATS = frozenset(k for k in STATE if "sum" in k)

    @classmethod
    def from_state(cls, values: Sequence[float]) -> ObjectScores:
        """The scores whose :meth:`state` is ``values``."""
        scores = cls()
        scores._load(values)
        return scores

    def add(self, counts: ObjectCounts) -> None:
        """Add one image's counts."""
        v = self._v
        v["n_true"] += counts.n_true
        v["n_pred"] += counts.n_pred
        v["iou_sum"] += counts.iou_sum
        for t, tp, ap in zip(AP_THRESHOLDS, counts.tp, counts.ap_per_threshold, strict=True):
            v[f"tp_{t:.2f}"] += tp
            v[f"ap_sum_{t:.2f}"] += ap
        v["f1_sum"] += counts.f1
        v["pq_sum"] += counts.pq
        v["images"] += 1

    def update(self, pred: np.ndarray | Tensor, target: np.ndarray | Tensor) -> None:
        """Add a batch: ``(B, H, W)`` or ``(B, 1, H, W)`` predictions (bool semantic or
        integer labels) and true instance labels."""
        p, t = _batch_pair(pred, target)
        for i in range(p.shape[0]):
            self.add(object_counts(p[i], t[i]))

    def compute(self) -> dict[str, Any]:
        """The split's scores (class docstring).

        Raises:
            ValueError: nothing was added.
        """
        v, n = self._v, self._images()
        per_t = [v[f"ap_sum_{t:.2f}"] / n for t in AP_THRESHOLDS]
        tp = v["tp_0.50"]
        pq = panoptic_quality(tp, v["n_true"], v["n_pred"], v["iou_sum"])
        return {
            "ap": sum(per_t) / len(per_t),
            "ap_50": per_t[0],
            "ap_per_threshold": dict(zip((f"{t:.2f}" for t in AP_THRESHOLDS), per_t, strict=True)),
            "f1": _f1(tp, v["n_true"], v["n_pred"]),
            **pq,
            "f1_mean": v["f1_sum"] / n,
            "pq_mean": v["pq_sum"] / n,
            "tp": tp,
            "fp": v["n_pred"] - tp,
            "fn": v["n_true"] - tp,
            "true_objects": v["n_true"],
            "pred_objects": v["n_pred"],
            "matched_iou_sum": v["iou_sum"],
            "images": n,
        }


# ----------------------------------------------------------------------------- boundaries


def boundary_scores(
    pred: np.ndarray | Tensor,
    target: np.ndarray | Tensor,
    tolerance: float = NSD_TOLERANCE_PX,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image HD95 and normalised surface distance (px) by MONAI.

    Boundary of a mask (MONAI's ``get_mask_edges``): its pixels that a 4-connected erosion
    removes (foreground pixels on the image border count as boundary); distances: Euclidean,
    between pixel centres. ``HD95 = max(q95(d(∂P→∂G)), q95(d(∂G→∂P)))``
    (``monai.metrics.compute_hausdorff_distance(percentile=95)``: linear-interpolated
    percentiles of the two directed distance sets); ``NSD = (#{p ∈ ∂P: d(p, ∂G) <= τ} +
    #{g ∈ ∂G: d(g, ∂P) <= τ}) / (|∂P| + |∂G|)`` (``monai.metrics.compute_surface_dice``).

    One call of MONAI's ``monai.metrics.utils.get_edge_surface_distance`` gives the boundaries
    and both directed distance sets, from which HD95 and NSD are taken exactly as the two
    public functions take them (the tests check equality): half their time.

    MONAI returns NaN for HD95 when either mask is empty and NaN for NSD when both are; ours:
    both empty → HD95 0, NSD 1 (nothing to find, nothing found: as IoU's 1); exactly one
    empty → HD95 = the image diagonal ``sqrt(H² + W²)`` (beyond any distance in the image),
    NSD 0.

    Args:
        pred: binary ``(B, H, W)`` or ``(B, 1, H, W)`` predictions.
        target: binary ground truths of the same shape.
        tolerance: NSD's tolerance ``τ`` in px (>= 0).

    Returns:
        ``(hd95, nsd)``: two ``(B,)`` float64 arrays.

    Example:
        >>> g = np.zeros((1, 32, 32), bool); g[0, 8:24, 8:20] = True
        >>> p = np.roll(g, 2, axis=2)  # shifted by 2 px
        >>> hd, nsd = boundary_scores(p, g, tolerance=2)
        >>> hd.tolist(), nsd.tolist()
        ([2.0], [1.0])
    """
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a finite number >= 0 (px). Got {tolerance!r}")
    p, g = _batch_pair(pred, target)
    p, g = _binary(p, "pred"), _binary(g, "target")
    b, h, w = p.shape
    hd = np.zeros(b)
    nsd = np.ones(b)
    has_p, has_g = p.reshape(b, -1).any(1), g.reshape(b, -1).any(1)
    one = has_p != has_g
    hd[one], nsd[one] = math.hypot(h, w), 0.0
    from monai.metrics.utils import get_edge_surface_distance

    for k in np.flatnonzero(has_p & has_g):
        with warnings.catch_warnings():  # MONAI's deprecation notices; no mask here is empty
            warnings.simplefilter("ignore")
            _, (d_pg, d_gp), _ = get_edge_surface_distance(
                torch.from_numpy(p[k]), torch.from_numpy(g[k]), symmetric=True
            )
        q = HD_PERCENTILE / 100  # as compute_hausdorff_distance: torch.quantile of float32
        hd[k] = max(float(torch.quantile(d_pg, q)), float(torch.quantile(d_gp, q)))
        near = int((d_pg <= tolerance).sum()) + int((d_gp <= tolerance).sum())
        nsd[k] = near / (d_pg.numel() + d_gp.numel())
    return hd, nsd


class BoundaryScores(_SplitState):
    """Accumulates HD95 and NSD over a split: per-image means (``hd95``, ``nsd``), and how
    many images had exactly one empty mask (``one_empty``: their HD95 is the diagonal)."""

    #: The accumulators, in the order of :meth:`state`.
    STATE = ("hd95_sum", "nsd_sum", "one_empty", "images")
    _FLOATS = frozenset({"hd95_sum", "nsd_sum"})

    def __init__(self, tolerance: float = NSD_TOLERANCE_PX) -> None:
        super().__init__()
        self.tolerance = tolerance

    @classmethod
    def from_state(
        cls, values: Sequence[float], tolerance: float = NSD_TOLERANCE_PX
    ) -> BoundaryScores:
        """The scores whose :meth:`state` is ``values``."""
        scores = cls(tolerance)
        scores._load(values)
        return scores

    def update(self, pred: np.ndarray | Tensor, target: np.ndarray | Tensor) -> None:
        """Add a batch (see :func:`boundary_scores`)."""
        hd, nsd = boundary_scores(pred, target, self.tolerance)
        p, g = _batch_pair(pred, target)
        b = p.shape[0]
        self._v["hd95_sum"] += float(hd.sum())
        self._v["nsd_sum"] += float(nsd.sum())
        self._v["one_empty"] += int((p.reshape(b, -1).any(1) != g.reshape(b, -1).any(1)).sum())
        self._v["images"] += b

    def compute(self) -> dict[str, Any]:
        """``hd95`` and ``nsd`` (means per image), ``nsd_tolerance_px``, ``one_empty``,
        ``images``.

        Raises:
            ValueError: nothing was added.
        """
        n = self._images()
        return {
            "hd95": self._v["hd95_sum"] / n,
            "nsd": self._v["nsd_sum"] / n,
            "nsd_tolerance_px": self.tolerance,
            "one_empty": self._v["one_empty"],
            "images": n,
        }


# ----------------------------------------------------------------------------- worst case


@dataclass(frozen=True)
class WorstCase:
    """The worst score per image over several attacks.

    Attributes:
        score: image id → the worst score over the attacks.
        attack: image id → the attack that gave it (the first in the order on a tie).
        counts: attack → how many images it was the worst on (every attack, zeros too).
    """

    score: dict[str, float]
    attack: dict[str, str]
    counts: dict[str, int]

    @property
    def mean(self) -> float:
        """The mean over images of the worst score ("adversarial (worst of N)")."""
        return sum(self.score.values()) / len(self.score)


def worst_case(
    scores: Mapping[str, Mapping[str, float]],
    order: Sequence[str] | None = None,
    higher_is_better: bool = True,
) -> WorstCase:
    """Per image, the worst score over every attack, and which attack gave it.

    Args:
        scores: attack → (image id → score); every attack must score the same ids.
        order: the attacks in the order that breaks ties (the first wins); default: the
            order of ``scores``. It must name every attack of ``scores`` once.
        higher_is_better: True for IoU, clDice, AP... (worst = lowest); False for distances
            and errors such as HD95 or ``|Δβ0|`` (worst = highest).

    Returns:
        :class:`WorstCase`; by construction its score is at most (at least, for
        ``higher_is_better=False``) every single attack's, image by image.

    Raises:
        ValueError: no attack, no image, differing ids, a NaN score, or a bad ``order``.

    Example:
        >>> w = worst_case({"fgsm": {"a": 0.8, "b": 0.5}, "pgd": {"a": 0.6, "b": 0.5}})
        >>> w.score, w.attack, w.counts
        ({'a': 0.6, 'b': 0.5}, {'a': 'pgd', 'b': 'fgsm'}, {'fgsm': 1, 'pgd': 1})
    """
    if not scores:
        raise ValueError("scores must hold at least one attack. Got none")
    names = list(scores) if order is None else list(order)
    if sorted(names) != sorted(scores) or len(set(names)) != len(names):
        raise ValueError(f"order must name every attack once: {sorted(scores)}. Got {names}")
    ids = list(scores[names[0]])
    if not ids:
        raise ValueError("scores must hold at least one image. Got none")
    for name in names:
        if set(scores[name]) != set(ids):
            raise ValueError(
                f"every attack must score the same images; {name!r} differs from {names[0]!r}"
            )
    sign = 1.0 if higher_is_better else -1.0
    worst: dict[str, float] = {}
    which: dict[str, str] = {}
    for i in ids:
        best_name, best = names[0], float(scores[names[0]][i])
        for name in names:
            s = float(scores[name][i])
            if math.isnan(s):
                raise ValueError(f"score of {name!r} on image {i!r} is NaN")
            if sign * s < sign * best:  # strictly worse: a tie keeps the earlier attack
                best_name, best = name, s
        worst[i], which[i] = best, best_name
    counts = dict.fromkeys(names, 0)
    for name in which.values():
        counts[name] += 1
    return WorstCase(worst, which, counts)


# ----------------------------------------------------------------------------- mCE


def corruption_error(model: Mapping[str, float], reference: Mapping[str, float]) -> float:
    """One family's corruption error relative to the reference model (ImageNet-C's CE).

    ``CE_f = Σ_levels (1 - s_model) / Σ_levels (1 - s_reference)`` over the family's splits
    (levels), ``s`` a score in [0, 1] where 1 is perfect (IoU, clDice, AP, PQ, NSD). Below 1:
    the model errs less than the reference on that family; the reference scores 1.

    Args:
        model: split → the model's score on it.
        reference: split → the reference model's score; the same splits.

    Raises:
        ValueError: no split, differing splits, a score outside [0, 1], or a reference that
            makes no error on the family (CE undefined).

    Example:
        >>> round(corruption_error({"snr_1": 0.4, "snr_2": 0.8}, {"snr_1": 0.2, "snr_2": 0.6}), 6)
        0.666667
    """
    if not model or set(model) != set(reference):
        raise ValueError(
            f"model and reference must score the same splits (at least one). Got {sorted(model)} "
            f"and {sorted(reference)}"
        )
    for who, values in (("model", model), ("reference", reference)):
        for split, s in values.items():
            if not 0.0 <= float(s) <= 1.0:
                raise ValueError(f"{who} score of {split!r} must be in [0, 1]. Got {s}")
    splits = sorted(model)
    den = sum(1.0 - float(reference[s]) for s in splits)
    if den == 0:
        raise ValueError(f"the reference makes no error on {splits}: CE is undefined")
    return sum(1.0 - float(model[s]) for s in splits) / den


def mean_corruption_error(
    model: Mapping[str, Mapping[str, float]], reference: Mapping[str, Mapping[str, float]]
) -> dict[str, Any]:
    """mCE: the mean over families of :func:`corruption_error`.

    Args:
        model: family → (split → the model's score).
        reference: family → (split → the reference model's score); the same families.

    Returns:
        ``{"mce": float, "families": {family: CE_f}}``; the reference against itself gives 1.

    Raises:
        ValueError: no family, differing families, or an error of :func:`corruption_error`.

    Example:
        >>> ref = {"snr": {"snr_1": 0.2}, "sib": {"sib_5": 0.5}}
        >>> mean_corruption_error(ref, ref)["mce"]
        1.0
    """
    if not model or set(model) != set(reference):
        raise ValueError(
            f"model and reference must have the same families (at least one). Got "
            f"{sorted(model)} and {sorted(reference)}"
        )
    families = {f: corruption_error(model[f], reference[f]) for f in model}
    return {"mce": sum(families.values()) / len(families), "families": families}

"""Scoring: stream a benchmark into a model and report its robustness.

Per split: IoU and Dice (aggregate over all pixels, and mean per image), and robustness =
IoU / IoU on ``test`` x 100 (``test`` is the reference condition, SNR 8). Per family: the
mean robustness of its splits. White-box attacks on the evaluated model itself run on the
fly on the ``test`` images (``--attacks pgd:8 segpgd:8``). Splits are streamed: nothing is
prepared that is not evaluated.

With ``consistency`` (``--consistency``; on by default when the package's masks are
pseudo-masks): per split, the consistency of the model's predictions on its rows with its own
predictions on the same rows undegraded (:func:`consistency_base`: the ``test`` row of the
same id for the synthetic families and white-box attacks, the ``real`` row for the real-image
families), from intersection and union counts summed over the split; per family, the curve
and the mean. It needs no labels (``docs/definitions.md#consistency``).

With ``metrics="all"`` (the default; ``--metrics iou`` turns them off), every split also gets
the structure metrics of :mod:`synthesis.structure_metrics`
(``docs/definitions.md#structure-metrics``): for ER and mitochondria clDice and the
Betti-number errors ``|Δβ0|``, ``|Δβ1|``; for nuclei the objects matched to the rows' true
instances (``instances``), the prediction's objects being its 8-connected components: AP at
IoU 0.5 and averaged over 0.5:0.95 (the 2018 Data Science Bowl's score), F1 at 0.5 and
panoptic quality; for every config HD95 and NSD. Per split and per family each metric gets
its curve and its robustness (:func:`summarise`). White-box attacks run at one budget by
several methods give the worst case per image, ``whitebox_worst_<eps>``
(:func:`worst_case_entry`). With the package's reference results (``results/<config>.json``)
the model also gets an mCE-style relative error (:func:`corruption_errors`).

Every split-level value is computed from per-image counts or values that are summed (the
accumulators' states), and the worst case from per-image scores gathered by row id, so a
multi-process run gives exactly the one-process results.

Writes ``results.json``, ``results.md`` (a table), ``robustness.png`` (IoU against
severity, one curve per family) and with the structure metrics one such plot per metric
(``metric-<name>.png``) into ``--out``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.distributed import SOLO, Context
from builder.evaluation.model_loading import (
    ModelInfo,
    load_model_spec,
    make_preprocess,
    predict,
    usable_attacks,
)
from builder.package.manifest import (
    check_config,
    config_manifest,
    pseudo_mask_method,
)
from builder.package.plan import REAL_FAMILIES, SPLITS
from synthesis.runtime.device import resolve_device
from synthesis.runtime.errors import InputError
from synthesis.runtime.progress import ProgressFactory, no_progress

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from synthesis.metrics import ConsistencyScores, SegmentationScores
    from synthesis.structure_metrics import ObjectScores, TopologyScores

#: A bool prediction packed 8 pixels to a byte, and its shape (:func:`predictions_by_id`).
Packed = tuple["np.ndarray", tuple[int, ...]]

logger = logging.getLogger(__name__)

#: Gradient-free attacks of ``--attacks`` (:func:`synthesis.corruptions.attacks.square_attack`).
GRADIENT_FREE_METHODS = ("square",)
#: Attacks ``--attacks`` runs on the evaluated model: the gradient attacks, then the
#: gradient-free ones.
WHITEBOX_METHODS = ("fgsm", "ifgsm", "pgd", "segpgd", "cospgd", *GRADIENT_FREE_METHODS)
#: ``metrics``: every metric, or pixel IoU/Dice alone (``--metrics iou``).
METRIC_SETS = ("all", "iou")
#: The structure metrics of each config: topology for the networks, objects for nuclei.
STRUCTURE_KIND = {"er": "topology", "mito": "topology", "nucleus": "objects"}
#: The structure's headline metric (worst case over attacks, mCE beside IoU's).
HEADLINE_METRIC = {"topology": "cldice", "objects": "ap"}
#: Metrics where higher is better (robustness = metric / metric on test x 100).
HIGHER_IS_BETTER = ("cldice", "ap", "ap_50", "f1", "pq", "nsd")
#: Errors and distances, lower is better (reported as the change from test, same units).
LOWER_IS_BETTER = ("beta0_error", "beta1_error", "hd95")
#: The metrics of each structure kind, in report order.
STRUCTURE_METRICS = {
    "topology": ("cldice", "beta0_error", "beta1_error", "hd95", "nsd"),
    "objects": ("ap", "ap_50", "f1", "pq", "hd95", "nsd"),
}


def parse_attacks(items: list[str] | None) -> list[tuple[str, float]]:
    """``["pgd:8", "segpgd:4"]`` -> ``[("pgd", 8.0), ("segpgd", 4.0)]``."""
    out = []
    for item in items or []:
        method, _, eps = item.partition(":")
        if method not in WHITEBOX_METHODS or not eps:
            raise InputError(
                f"--attacks takes METHOD:EPS with METHOD in {', '.join(WHITEBOX_METHODS)}. Got {item!r}"
            )
        try:
            value = float(eps)
        except ValueError:
            raise InputError(
                f"--attacks {item}: EPS must be a number of grey levels. Got {eps!r}"
            ) from None
        if not value > 0:
            raise InputError(f"--attacks {item}: EPS must be > 0. Got {value}")
        out.append((method, value))
    return out


def open_splits(data: str, config: str, *, instances: bool = False) -> Mapping[str, Any]:
    """Every split of ``config`` in a package (local folder or Hub repo), streamed with the
    columns a model reads (and the true ``instances`` where asked): one ``load_dataset`` call
    for all of them (each call parses the card's YAML, which lists every split of every
    config)."""
    import fluorobench_c

    return fluorobench_c.load(data, config, None, columns=_columns(instances))


def _columns(instances: bool) -> list[str]:
    import fluorobench_c

    return [*fluorobench_c.MODEL_COLUMNS, *(["instances"] if instances else [])]


#: A user's post-processing: a bool ``(H, W)`` prediction -> integer instance labels.
ObjectsFn = Callable[["np.ndarray"], "np.ndarray"]


def _user_objects(fn: ObjectsFn, pred: np.ndarray, row: str) -> np.ndarray:
    """``fn(pred)``, checked: integer labels of ``pred``'s shape (0 = background)."""
    import numpy as np

    labels = np.asarray(fn(pred.copy()))
    name = getattr(fn, "__name__", repr(fn))
    if labels.shape != pred.shape or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(
            f"--objects {name}: must return integer instance labels of shape {pred.shape} "
            f"(0 = background); for row {row} it returned {labels.dtype} {labels.shape}"
        )
    return labels


class StructureScores:
    """A split's structure metrics (:mod:`synthesis.structure_metrics`): topology (clDice,
    Betti errors) or objects (AP, F1, PQ against the true instances), and boundaries (HD95,
    NSD); :meth:`state` is what ranks sum, as :class:`synthesis.metrics.SegmentationScores`.

    ``per_image`` (where given to :meth:`update`) gets each row's headline value (clDice or
    AP) by id, for the worst case over attacks."""

    def __init__(self, kind: str, objects: ObjectsFn | None = None) -> None:
        from synthesis.structure_metrics import BoundaryScores, ObjectScores, TopologyScores

        if kind not in HEADLINE_METRIC:
            raise ValueError(f"kind must be one of {', '.join(HEADLINE_METRIC)}. Got {kind!r}")
        self.kind = kind
        #: The user's post-processing of a bool prediction into instance labels (objects
        #: only; None: the prediction's 8-connected components).
        self.objects = objects
        self.shape: TopologyScores | ObjectScores = (
            TopologyScores() if kind == "topology" else ObjectScores()
        )
        self.boundary = BoundaryScores()

    @staticmethod
    def size(kind: str) -> int:
        """The length of :meth:`state` for ``kind``."""
        from synthesis.structure_metrics import BoundaryScores, ObjectScores, TopologyScores

        shape = TopologyScores if kind == "topology" else ObjectScores
        return len(shape.STATE) + len(BoundaryScores.STATE)

    def state(self) -> list[float]:
        return self.shape.state() + self.boundary.state()

    @classmethod
    def from_state(cls, kind: str, values: list[float]) -> StructureScores:
        from synthesis.structure_metrics import BoundaryScores, ObjectScores, TopologyScores

        scores = cls(kind)
        n = len(scores.shape.STATE)
        shape = TopologyScores if kind == "topology" else ObjectScores
        scores.shape = shape.from_state(values[:n])
        scores.boundary = BoundaryScores.from_state(values[n:])
        return scores

    def update(
        self,
        ids: list[str],
        pred: torch.Tensor,
        mask: torch.Tensor,
        instances: torch.Tensor | None = None,
        per_image: dict[str, float] | None = None,
    ) -> None:
        """Add a batch: bool ``(B, 1, H, W)`` predictions and masks on the CPU, and for
        objects the true instance labels (None: the mask's 8-connected components)."""
        from synthesis.structure_metrics import object_counts, topology_counts

        p, g = pred[:, 0].numpy(), mask[:, 0].numpy()
        truth = g if instances is None else instances[:, 0].numpy()
        for k, row in enumerate(ids):
            if self.kind == "topology":
                counts = topology_counts(p[k], g[k])
                value = counts.cldice
            else:
                objects = p[k] if self.objects is None else _user_objects(self.objects, p[k], row)
                counts = object_counts(objects, truth[k])
                value = counts.ap
            self.shape.add(counts)  # type: ignore[arg-type]
            if per_image is not None:
                per_image[row] = value
        self.boundary.update(p, g)

    def compute(self) -> dict[str, Any]:
        """The split's structure keys of ``results.json`` (both accumulators' keys, flat)."""
        return {**self.shape.compute(), **self.boundary.compute()}


def _predictions(
    data: str,
    config: str,
    split: str,
    model: nn.Module,
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    *,
    device: torch.device,
    batch_size: int = 16,
    attack: tuple[str, float] | None = None,
    opened: Mapping[str, Any] | None = None,
    queries: int | None = None,
    instances: bool = False,
) -> Iterator[tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """``(ids, predicted foreground, true foreground, true instances)`` per batch of a
    streamed split (bool ``(B, 1, H, W)`` on the CPU; the instances int64, or None unless
    ``instances`` and every row of the batch has them), optionally under a white-box attack on
    ``model`` (``queries``: the Square attack's query budget). The split is taken from
    ``opened`` (:func:`open_splits` of ``data``) when given, else opened."""
    import torch

    import fluorobench_c
    from synthesis.rng import derive_seed

    if opened is not None:
        ds = opened[split]
    else:
        ds = fluorobench_c.load(data, config, split, columns=_columns(instances))
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, collate_fn=fluorobench_c.collate
    )
    for batch in loader:
        image = batch["image"].to(device)
        mask = batch["mask"].to(device) != 0
        if attack is not None:
            from synthesis.corruptions.attacks import attack as run_attack

            method, eps = attack
            seeds = torch.tensor(
                [derive_seed("whitebox", config, i, method, eps) for i in batch["id"]],
                dtype=torch.int64,
            )
            image = run_attack(
                model,
                image.round().to(torch.int32),
                mask,
                method=method,
                eps_grey=eps,
                seeds=seeds.to(device),
                preprocess=preprocess,
                iterations=queries if method in GRADIENT_FREE_METHODS else None,
            ).adu.float()
        inst = batch.get("instances") if instances else None
        yield list(batch["id"]), predict(model, preprocess(image)).cpu(), mask.cpu(), inst


def evaluate_split(
    data: str,
    config: str,
    split: str,
    model: nn.Module,
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    *,
    device: torch.device,
    batch_size: int = 16,
    attack: tuple[str, float] | None = None,
    progress: Callable[[int], object] | None = None,
    opened: Mapping[str, Any] | None = None,
    consistency: ConsistencyScores | None = None,
    against: Mapping[str, Packed] | None = None,
    keep: dict[str, Packed] | None = None,
    structure: StructureScores | None = None,
    per_image: dict[str, tuple[int, int, int, float]] | None = None,
    queries: int | None = None,
) -> SegmentationScores:
    """The accumulated scores of one split (streamed), optionally under a white-box attack on
    ``model`` (``queries``: the Square attack's query budget); ``.compute()`` gives IoU, Dice
    and counts. ``opened``: the config's splits from :func:`open_splits` (else the split is
    opened here; with ``structure`` of objects, with the true instances).

    ``structure``: the structure metrics, also accumulated there. ``per_image``: each row's
    ``(intersection, predicted, true, headline)`` by id: pixel counts and the structure's
    headline value (clDice or AP; NaN without ``structure``), for the worst case over attacks.

    ``consistency``: also accumulated there, each row's prediction against ``against[id]``
    (the prediction on the same row undegraded, :func:`predictions_by_id`). ``keep``: each
    row's prediction is stored there (packed) before any comparison, so the undegraded split
    itself can fill ``against`` (``keep is against``) in the pass that scores it."""
    from synthesis.metrics import SegmentationScores

    if consistency is not None and against is None:
        raise ValueError("evaluate_split: consistency needs the predictions to compare against")
    scores = SegmentationScores()
    objects = structure is not None and structure.kind == "objects"
    warned = False
    for ids, pred, mask, instances in _predictions(
        data,
        config,
        split,
        model,
        preprocess,
        device=device,
        batch_size=batch_size,
        attack=attack,
        opened=opened,
        queries=queries,
        instances=objects,
    ):
        scores.update(pred, mask)
        headline: dict[str, float] = {}
        if structure is not None:
            if objects and instances is None and not warned:
                logger.warning(
                    "%s %s: rows without true instances; their objects are the mask's "
                    "8-connected components",
                    config,
                    split,
                )
                warned = True
            structure.update(ids, pred, mask, instances, headline)
        if per_image is not None:
            for row, c in zip(ids, counts_of(ids, pred, mask).values(), strict=True):
                per_image[row] = (int(c[0]), int(c[2]), int(c[3]), headline.get(row, math.nan))
        if keep is not None:
            keep.update(zip(ids, map(pack, pred), strict=True))
        if consistency is not None:
            assert against is not None
            consistency.update(pred, _undegraded(against, ids, split))
        if progress:
            progress(len(ids))
    return scores


def pack(pred: torch.Tensor) -> Packed:
    """A bool prediction (any shape, on the CPU) packed 8 pixels to a byte, with its shape."""
    import numpy as np

    return np.packbits(pred.numpy().reshape(-1)), tuple(pred.shape)


def unpack(packed: Packed) -> torch.Tensor:
    """The bool tensor of :func:`pack`."""
    import numpy as np
    import torch

    bits, shape = packed
    flat = np.unpackbits(bits, count=math.prod(shape)).astype(bool)
    return torch.from_numpy(flat.reshape(shape))


def _undegraded(against: Mapping[str, Packed], ids: list[str], split: str) -> torch.Tensor:
    import torch

    missing = [i for i in ids if i not in against]
    if missing:
        raise InputError(
            f"split {split}: row {missing[0]!r} has no row of the same id in the undegraded "
            f"split {consistency_base(split)}; consistency compares the two"
        )
    return torch.stack([unpack(against[i]) for i in ids])


def predictions_by_id(
    data: str,
    config: str,
    split: str,
    model: nn.Module,
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    *,
    device: torch.device,
    batch_size: int = 16,
    progress: Callable[[int], object] | None = None,
    opened: Mapping[str, Any] | None = None,
) -> dict[str, Packed]:
    """``id -> the model's predicted foreground`` (bool ``(1, H, W)``, packed by :func:`pack`:
    8 KiB per 256x256 image) of every row of a streamed split: the undegraded predictions that
    consistency compares a degraded split against. ``opened``: from :func:`open_splits`."""
    out: dict[str, Packed] = {}
    evaluate_split(
        data,
        config,
        split,
        model,
        preprocess,
        device=device,
        batch_size=batch_size,
        progress=progress,
        opened=opened,
        keep=out,
    )
    return out


def consistency_base(split: str) -> str | None:
    """The split that holds the undegraded image of each row of ``split`` (the row of the
    same id), against which consistency compares the model's predictions: ``test`` for
    ``test`` itself, the synthetic families (``snr_*``, ``sib_*``, ``svb_*``, the transfer
    attacks) and the white-box attacks (``whitebox_*``); ``real`` for ``real`` and the
    real-image families (``real_snr_*``, ``real_sib_*``, ``real_svb_*``); None for the
    splits that are no degradation of either (``train``, ``validation``, ``clean``)."""
    if split.startswith("whitebox_"):
        return "test"
    spec = SPLITS.get(split)
    if spec is None:
        return None
    if spec.family in REAL_FAMILIES:
        return "real"
    if split == "test" or spec.family in ("snr", "sib", "svb", "attacks"):
        return "test"
    return None


def per_image_counts(
    data: str,
    config: str,
    split: str,
    model: nn.Module,
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    *,
    device: torch.device,
    batch_size: int = 16,
    opened: Mapping[str, Any] | None = None,
    keep: dict[str, Packed] | None = None,
    against: Mapping[str, Packed] | None = None,
    agreement: dict[str, tuple[int, int, int, int]] | None = None,
) -> dict[str, tuple[int, int, int, int]]:
    """``id -> (intersection, union, predicted, true)`` pixel counts of the model's foreground
    and the mask, per image of a streamed split: the counts from which the IoU, precision and
    recall of any subset of ids are exact (the fidelity score compares splits on the ids
    they share). ``opened``: the config's splits from :func:`open_splits`.

    ``keep``: each row's prediction is stored there (packed, :func:`pack`). With ``against``
    (predictions by id, e.g. of the same rows at a reference condition), ``agreement`` gets
    the same four counts of each row's prediction against ``against[id]`` in place of the
    mask, for the rows ``against`` holds (per-image consistency counts)."""
    out: dict[str, tuple[int, int, int, int]] = {}
    for ids, pred, mask, _ in _predictions(
        data,
        config,
        split,
        model,
        preprocess,
        device=device,
        batch_size=batch_size,
        opened=opened,
    ):
        out.update(counts_of(ids, pred, mask))
        if keep is not None:
            keep.update(zip(ids, map(pack, pred), strict=True))
        if against is not None and agreement is not None:
            both = [k for k, i in enumerate(ids) if i in against]
            if both:
                import torch

                ref = torch.stack([unpack(against[ids[k]]) for k in both])
                agreement.update(counts_of([ids[k] for k in both], pred[both], ref))
    return out


def tensor_counts(
    ids: list[str],
    images: torch.Tensor,
    masks: torch.Tensor,
    model: nn.Module,
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    *,
    device: torch.device,
    batch_size: int = 16,
) -> dict[str, tuple[int, int, int, int]]:
    """:func:`per_image_counts` of images held in memory: ``images`` ``(N, 1, H, W)`` (grey
    levels, as the loader gives them) and ``masks`` (bool or 0/1), one id per row."""
    if not len(ids) == images.shape[0] == masks.shape[0]:
        raise ValueError(
            f"ids, images and masks must have one row each. Got {len(ids)}, "
            f"{images.shape[0]} and {masks.shape[0]}"
        )
    out: dict[str, tuple[int, int, int, int]] = {}
    for i in range(0, len(ids), batch_size):
        image = images[i : i + batch_size].to(device).float()
        mask = masks[i : i + batch_size] != 0
        pred = predict(model, preprocess(image)).cpu()
        out.update(counts_of(ids[i : i + batch_size], pred, mask.cpu()))
    return out


def counts_of(
    ids: list[str], pred: torch.Tensor, mask: torch.Tensor
) -> dict[str, tuple[int, int, int, int]]:
    """``id -> (intersection, union, predicted, true)`` pixel counts of bool ``(B, 1, H, W)``
    predictions and masks."""
    sums = [t.flatten(1).sum(1).tolist() for t in (pred & mask, pred | mask, pred, mask)]
    return dict(zip(ids, zip(*sums, strict=True), strict=True))


def _family(split: str) -> tuple[str, float]:
    if split.startswith("whitebox_"):
        _, method, eps = split.split("_")
        return f"whitebox_{method}", float(eps)
    spec = SPLITS.get(split)
    if spec is None:
        return "other", math.nan
    if spec.family in REAL_FAMILIES:  # real, real_snr, real_sib, real_svb: not the synthetic ones
        return spec.family, spec.level
    return ("reference" if spec.family == "reference" else spec.corruption, spec.level)


#: Families that are no degradation, so have no family summary.
_NOT_DEGRADED = ("reference", "clean", "real", "other")


def summarise(per_split: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Add robustness (vs ``test``) to every split and per-family means; where the splits
    carry a ``consistency``, each family also gets its ``mean_consistency`` and its
    ``consistency_curve`` (``[level, consistency]`` pairs, by level).

    Where the splits carry structure metrics (``cldice``, ``ap``, ``hd95``...), every split
    gets ``metric_robustness`` (metric / metric on ``test`` x 100, for the metrics where
    higher is better: :data:`HIGHER_IS_BETTER`; None where ``test`` scores 0) and
    ``metric_change`` (metric - metric on ``test``, in the metric's units, for the errors
    and distances: :data:`LOWER_IS_BETTER`), and every family ``metrics``: per metric its
    ``curve`` (``[level, value]`` pairs, by level) and ``mean_robustness`` or
    ``mean_change`` (``docs/definitions.md#structure-metrics-in-evaluate``)."""
    from synthesis.metrics import robustness

    test = per_split.get("test", {})
    ref = test.get("iou")
    families: dict[str, list[float]] = {}
    curves: dict[str, list[tuple[float, float]]] = {}
    metric_points: dict[str, dict[str, list[tuple[float, float, float | None]]]] = {}
    for split, r in per_split.items():
        family, level = _family(split)
        r["family"], r["level"] = family, level
        r["robustness"] = robustness(r["iou"], ref) if ref else None
        named = [m for m in (*HIGHER_IS_BETTER, *LOWER_IS_BETTER) if r.get(m) is not None]
        if named:
            r["metric_robustness"] = {
                m: (100.0 * r[m] / test[m] if test.get(m) else None)
                for m in named
                if m in HIGHER_IS_BETTER
            }
            r["metric_change"] = {
                m: (r[m] - test[m] if test.get(m) is not None else None)
                for m in named
                if m in LOWER_IS_BETTER
            }
        if family in _NOT_DEGRADED:
            continue
        if r["robustness"] is not None:
            families.setdefault(family, []).append(r["robustness"])
        if r.get("consistency") is not None:
            curves.setdefault(family, []).append((level, r["consistency"]))
        for m in named:
            relative = r["metric_robustness"].get(m, r["metric_change"].get(m))
            metric_points.setdefault(family, {}).setdefault(m, []).append((level, r[m], relative))
    out: dict[str, Any] = {
        f: {"mean_robustness": sum(v) / len(v), "splits": len(v)} for f, v in families.items()
    }
    for f, pts in curves.items():
        entry = out.setdefault(f, {"mean_robustness": None, "splits": len(pts)})
        entry["mean_consistency"] = sum(c for _, c in pts) / len(pts)
        entry["consistency_curve"] = [[level, c] for level, c in sorted(pts)]
    for f, by_metric in metric_points.items():
        entry = out.setdefault(f, {"mean_robustness": None, "splits": 0})
        entry["metrics"] = {}
        for m, pts in by_metric.items():
            rel = [p[2] for p in pts if p[2] is not None]
            key = "mean_robustness" if m in HIGHER_IS_BETTER else "mean_change"
            entry["metrics"][m] = {
                "curve": [[level, v] for level, v, _ in sorted(pts)],
                key: sum(rel) / len(rel) if rel and len(rel) == len(pts) else None,
            }
    return out


def worst_case_entry(
    per_attack: Mapping[str, Mapping[str, tuple[int, int, int, float]]],
    headline: str | None = None,
) -> dict[str, Any]:
    """The ``whitebox_worst_<eps>`` entry: per image the worst over the attacks run at one
    budget ("adversarial (worst of N)"), by :func:`synthesis.structure_metrics.worst_case`.

    Args:
        per_attack: method -> (row id -> ``(intersection, predicted, true, headline)``), the
            per-image values of :func:`evaluate_split`; every method the same ids, in the
            order that breaks ties (the first wins).
        headline: the structure's headline metric (``cldice``, ``ap``) when its per-image
            values were scored, else None.

    Returns:
        ``iou_mean`` (the mean per image of the lowest IoU over the attacks; image by image
        at most every single attack's IoU), ``iou`` and ``dice`` (aggregate over the pixels
        of each image's worst attack), ``images``, ``worst_of``, ``attacks``,
        ``worst_counts`` (how many images each attack was the worst on: lowest IoU, the
        first attack on a tie), ``worst_share``, per attack its own aggregate ``attack_iou``
        and ``attack_iou_mean``; with ``headline``, ``<headline>_worst_mean`` (mean per image
        of the lowest headline value) and ``<headline>_worst_counts``; and
        ``gradient_masking``: True when a gradient-free attack's aggregate IoU is below every
        gradient attack's, False when not, None unless both kinds ran
        (``docs/definitions.md#worst-case-over-attacks``).
    """
    from synthesis.metrics import iou_of_counts
    from synthesis.structure_metrics import worst_case

    def iou(c: tuple[int, int, int, float]) -> float:
        return iou_of_counts(c[0], c[1] + c[2] - c[0])

    def pooled(rows: list[tuple[int, int, int, float]]) -> tuple[float, float]:
        inter, pred, true = (sum(c[k] for c in rows) for k in range(3))
        return iou_of_counts(inter, pred + true - inter), (
            2 * inter / (pred + true) if pred + true else 1.0
        )

    names = list(per_attack)
    worst = worst_case({m: {i: iou(c) for i, c in per_attack[m].items()} for m in names}, names)
    chosen = [per_attack[worst.attack[i]][i] for i in worst.score]
    n = len(chosen)
    attack_iou = {m: pooled(list(per_attack[m].values()))[0] for m in names}
    entry: dict[str, Any] = {
        "iou": pooled(chosen)[0],
        "dice": pooled(chosen)[1],
        "iou_mean": worst.mean,
        "images": n,
        "worst_of": len(names),
        "attacks": names,
        "worst_counts": worst.counts,
        "worst_share": {m: c / n for m, c in worst.counts.items()},
        "attack_iou": attack_iou,
        "attack_iou_mean": {m: sum(iou(c) for c in per_attack[m].values()) / n for m in names},
    }
    if headline is not None:
        by = worst_case({m: {i: c[3] for i, c in per_attack[m].items()} for m in names}, names)
        entry[f"{headline}_worst_mean"] = by.mean
        entry[f"{headline}_worst_counts"] = by.counts
    free = [m for m in names if m in GRADIENT_FREE_METHODS]
    grads = [m for m in names if m not in GRADIENT_FREE_METHODS]
    entry["gradient_masking"] = (
        any(attack_iou[f] < min(attack_iou[g] for g in grads) for f in free)
        if free and grads
        else None
    )
    return entry


def reference_results(data: str, config: str, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The package's shipped reference-model results, ``results/<config>.json`` (written by
    the build), when present and made with the manifest's reference model; else None."""
    sha = (manifest["configs"][config].get("model") or {}).get("sha256")
    name = f"results/{config}.json"
    try:
        if Path(data).is_dir():
            path = Path(data) / name
        else:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(data, name, repo_type="dataset"))
        results = json.loads(path.read_text())
    except Exception as exc:  # absent (an older package) or unreadable: no mCE
        logger.warning("%s %s: no reference results (%s); no mCE", data, name, exc)
        return None
    if not sha or (results.get("model") or {}).get("sha256") != sha:
        logger.warning("%s %s: not the manifest's reference model; no mCE", data, name)
        return None
    return results


def corruption_errors(
    splits: Mapping[str, Mapping[str, Any]],
    reference: Mapping[str, Any],
    metrics: tuple[str, ...] = ("iou",),
) -> dict[str, Any]:
    """mCE-style relative errors (:func:`synthesis.structure_metrics.mean_corruption_error`)
    of a model's splits against the reference model's ``results.json`` ``reference``.

    Per metric (a score in [0, 1], 1 perfect), per corruption family: ``CE = Σ (1 - model) /
    Σ (1 - reference)`` over the family's splits that both scored; the mCE is their mean.
    Families: the degradations (not ``test``/``clean``/``real``, not the white-box attacks on
    the evaluated model). A family where the reference makes no error is left out (named in
    ``skipped``). A metric with no family left is None.
    """
    from synthesis.structure_metrics import mean_corruption_error

    ref_splits = reference.get("splits", {})
    out: dict[str, Any] = {}
    for metric in metrics:
        model_f: dict[str, dict[str, float]] = {}
        ref_f: dict[str, dict[str, float]] = {}
        for split, r in splits.items():
            family = r.get("family", _family(split)[0])
            if family in _NOT_DEGRADED or split.startswith("whitebox_"):
                continue
            theirs = ref_splits.get(split, {}).get(metric)
            if r.get(metric) is None or theirs is None:
                continue
            model_f.setdefault(family, {})[split] = float(r[metric])
            ref_f.setdefault(family, {})[split] = float(theirs)
        skipped = sorted(f for f in ref_f if all(v == 1.0 for v in ref_f[f].values()))
        for f in skipped:
            del model_f[f], ref_f[f]
        if not model_f:
            out[metric] = None
            continue
        mce = mean_corruption_error(model_f, ref_f)
        out[metric] = {**mce, "skipped": skipped}
    return out


def available_splits(data: str, config: str) -> list[str]:
    """Split names of a package (local folder or Hub repo), in the package's order."""
    return list(package_manifest(data, config)["configs"][config]["splits"])


def package_manifest(data: str, config: str) -> dict[str, Any]:
    """The manifest of a package (local folder or Hub repo) that has ``config``."""
    if Path(data).is_dir():
        return config_manifest(Path(data), config)
    from huggingface_hub import hf_hub_download

    manifest = json.loads(
        Path(hf_hub_download(data, "manifest.json", repo_type="dataset")).read_text()
    )
    check_config(manifest, config, data)
    return manifest


def evaluate(
    data: str,
    config: str,
    *,
    model: str | ModelInfo | None = None,
    splits: list[str] | None = None,
    attacks: list[tuple[str, float]] | None = None,
    normalize: str = "zscore",
    device: str | None = None,
    batch_size: int = 16,
    progress: ProgressFactory | None = None,
    ctx: Context = SOLO,
    consistency: bool | None = None,
    metrics: str = "all",
    square_queries: int | None = None,
    reference: bool = True,
    objects: ObjectsFn | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``splits`` of a package; return the results dict (the same on
    every rank of a multi-process ``ctx``). ``consistency``: also score each split's
    consistency with the model's predictions on the same rows undegraded (module docstring);
    None: when the config's masks are pseudo-masks. ``metrics``: ``"all"`` adds the
    structure metrics, the worst case over attacks and the mCE to IoU and Dice; ``"iou"``
    scores IoU and Dice alone. ``square_queries``: the Square attack's query budget (default
    :data:`synthesis.corruptions.attacks.SQUARE_QUERIES`). ``reference``: compare with the
    package's reference results for the mCE (the build, which writes them, passes False).
    ``objects``: the user's post-processing of each bool prediction into instance labels
    for the object metrics (nucleus; default: its 8-connected components)."""

    if metrics not in METRIC_SETS:
        raise InputError(f"metrics must be one of {', '.join(METRIC_SETS)}. Got {metrics!r}")
    structure_kind = STRUCTURE_KIND[config] if metrics == "all" else None
    if objects is not None and structure_kind != "objects":
        raise InputError(
            f"--objects post-processes predictions into objects for the object metrics, "
            f"which {config} with --metrics {metrics} does not score (nucleus, --metrics all)"
        )
    dev = resolve_device(device)
    manifest = package_manifest(data, config)
    have = list(manifest["configs"][config]["splits"])
    pseudo = pseudo_mask_method(manifest, config) is not None
    if consistency is None:
        consistency = pseudo
    wanted = splits or [s for s in have if s not in ("train", "validation")]
    unknown = [s for s in wanted if s not in have]
    if unknown:
        raise InputError(
            f"{data} config {config} has no split(s) {', '.join(unknown)}; it has {', '.join(have)}"
        )
    if "test" not in wanted:
        wanted = ["test", *wanted]  # robustness needs the reference IoU
    info = load_model_spec(model, data, config, dev)
    normalize = info.normalize or normalize  # a bioimage.io model preprocesses its input itself
    preprocess = make_preprocess(normalize)
    attacks, attacks_skipped = usable_attacks(info, attacks, GRADIENT_FREE_METHODS)
    jobs: list[tuple[str, str, tuple[str, float] | None]] = [(s, s, None) for s in wanted]
    jobs += [(f"whitebox_{m}_{e:g}", "test", (m, e)) for m, e in attacks or []]
    bases = {name: consistency_base(name) if consistency else None for name, _, _ in jobs}
    for name, base in bases.items():
        if base is not None and base not in have:
            logger.warning(
                "%s %s: no consistency (the package has no %s split to compare with)",
                config,
                name,
                base,
            )
            bases[name] = None
    # Under torchrun each rank scores whole splits taken from a shared queue; the raw counts
    # are then summed across ranks (zeros where a rank did not score a split), so every
    # metric is exactly the one-process value.
    import torch

    from synthesis.metrics import ConsistencyScores, SegmentationScores

    counts = torch.zeros(len(jobs), len(SegmentationScores.STATE), dtype=torch.float64)
    # The structure metrics: the same exact sums of per-image counts and values.
    shapes = torch.zeros(
        len(jobs),
        StructureScores.size(structure_kind) if structure_kind else 0,
        dtype=torch.float64,
    )
    # Per-image values of the white-box attacks, by row id, for the worst case over attacks
    # (gathered from every rank below).
    images: dict[str, dict[str, tuple[int, int, int, float]]] = {}
    # Consistency: the same exact sums; each rank predicts the undegraded splits it needs
    # itself (once, kept packed), so no prediction travels between ranks.
    agreement = torch.zeros(len(jobs), len(ConsistencyScores.STATE), dtype=torch.float64)
    undegraded: dict[str, dict[str, Packed]] = {}
    opened: Mapping[str, Any] | None = None
    for index in ctx.queue(f"evaluate/{config}", len(jobs)):
        if opened is None:  # opened once, by the first job this rank takes
            opened = open_splits(data, config, instances=structure_kind == "objects")
        name, split, attack = jobs[index]
        factory = (progress if ctx.is_main else None) or no_progress
        base = bases[name]
        pairs: ConsistencyScores | None = None
        keep: dict[str, Packed] | None = None
        if base is not None:
            pairs = ConsistencyScores()
            if base not in undegraded and base == split and attack is None:
                keep = undegraded[base] = {}  # filled by this pass, before it compares
            elif base not in undegraded:
                bar = factory(None, f"{config} {base} (undegraded, for consistency)")
                undegraded[base] = predictions_by_id(
                    data,
                    config,
                    base,
                    info.model,
                    preprocess,
                    device=dev,
                    batch_size=batch_size,
                    progress=bar.update,
                    opened=opened,
                )
                bar.close()
        bar = factory(None, f"{config} {name}")
        structure = StructureScores(structure_kind, objects) if structure_kind else None
        per_image = images.setdefault(name, {}) if attack is not None else None
        scores = evaluate_split(
            data,
            config,
            split,
            info.model,
            preprocess,
            device=dev,
            batch_size=batch_size,
            attack=attack,
            progress=bar.update,
            opened=opened,
            consistency=pairs,
            against=undegraded.get(base) if base is not None else None,
            keep=keep,
            structure=structure,
            per_image=per_image,
            queries=square_queries,
        )
        bar.close()
        counts[index] = torch.tensor(scores.state(), dtype=torch.float64)
        if structure is not None:
            shapes[index] = torch.tensor(structure.state(), dtype=torch.float64)
        if pairs is not None:
            agreement[index] = torch.tensor(pairs.state(), dtype=torch.float64)
    if ctx.distributed:
        reduce_on = dev if dev.type == "cuda" else torch.device("cpu")  # NCCL for CUDA tensors
        counts = ctx.sum_(counts.to(reduce_on)).cpu()
        if consistency:
            agreement = ctx.sum_(agreement.to(reduce_on)).cpu()
        if structure_kind:
            shapes = ctx.sum_(shapes.to(reduce_on)).cpu()
            merged: dict[str, dict[str, tuple[int, int, int, float]]] = {}
            for part in ctx.gather(images):
                merged.update(part)
            images = merged
    per_split: dict[str, dict[str, Any]] = {}
    for index, (name, _, _) in enumerate(jobs):
        per_split[name] = SegmentationScores.from_state(counts[index].tolist()).compute()
        logger.info("%s %s: IoU %.4f", config, name, per_split[name]["iou"])
        if consistency:
            per_split[name].update(_consistency_entry(bases[name], agreement[index].tolist()))
        if structure_kind:
            per_split[name].update(
                StructureScores.from_state(structure_kind, shapes[index].tolist()).compute()
            )
    if structure_kind:
        per_split.update(_worst_cases(attacks or [], images, HEADLINE_METRIC[structure_kind]))
    families = summarise(per_split)
    results = {
        "config": config,
        "data": str(data),
        "model": {
            "description": info.description,
            "sha256": info.sha256,
            "normalize": normalize,
            **({"attacks_skipped": attacks_skipped} if attacks_skipped else {}),
        },
        "splits": per_split,
        "families": families,
    }
    if structure_kind:
        headline = HEADLINE_METRIC[structure_kind]
        ref = reference_results(data, config, manifest) if reference else None
        results["metrics"] = {
            "structure": structure_kind,
            "headline": headline,
            "reported": list(STRUCTURE_METRICS[structure_kind]),
            **({"objects": getattr(objects, "__name__", repr(objects))} if objects else {}),
            "nsd_tolerance_px": per_split["test"]["nsd_tolerance_px"],
            "square_queries": square_queries if square_queries is not None else _queries(),
        }
        results["mce"] = (
            None
            if ref is None
            else {
                "reference": {
                    "file": f"results/{config}.json",
                    "sha256": ref["model"]["sha256"],
                },
                **corruption_errors(per_split, ref, ("iou", headline)),
            }
        )
    if consistency:
        results["consistency"] = {
            "against": "the model's own prediction on the row of the same id undegraded: "
            "test for the synthetic families and white-box attacks, real for the real-image "
            "families",
            "pseudo_masks": pseudo,
        }
    return results


def _queries() -> int:
    from synthesis.corruptions.attacks import SQUARE_QUERIES

    return SQUARE_QUERIES


def _worst_cases(
    attacks: list[tuple[str, float]],
    images: Mapping[str, Mapping[str, tuple[int, int, int, float]]],
    headline: str,
) -> dict[str, dict[str, Any]]:
    """``whitebox_worst_<eps>`` for every budget at which two or more attacks ran."""
    by_eps: dict[float, list[str]] = {}
    for method, eps in attacks:
        if method not in by_eps.setdefault(eps, []):
            by_eps[eps].append(method)
    out = {}
    for eps, methods in by_eps.items():
        if len(methods) > 1:
            per_attack = {m: images[f"whitebox_{m}_{eps:g}"] for m in methods}
            out[f"whitebox_worst_{eps:g}"] = worst_case_entry(per_attack, headline)
    return out


def _consistency_entry(base: str | None, state: list[float]) -> dict[str, Any]:
    """A split's consistency keys in ``results.json`` (None where it has no undegraded
    split)."""
    from synthesis.metrics import ConsistencyScores

    if base is None:
        return {"consistency": None}
    c = ConsistencyScores.from_state(state).compute()
    return {
        "consistency": c["consistency"],
        "consistency_mean": c["consistency_mean"],
        "consistency_against": base,
        "consistency_counts": {k: c[k] for k in ("intersection", "union", "images")},
    }

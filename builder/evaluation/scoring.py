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

Writes ``results.json``, ``results.md`` (a table) and ``robustness.png`` (IoU against
severity, one curve per family) into ``--out``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.distributed import SOLO, Context
from builder.evaluation.model_loading import ModelInfo, load_model_spec, make_preprocess, predict
from builder.package.manifest import pseudo_mask_method, read_manifest
from builder.package.plan import REAL_FAMILIES, SPLITS
from synthesis.runtime.device import resolve_device
from synthesis.runtime.errors import InputError
from synthesis.runtime.progress import ProgressFactory, no_progress

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from synthesis.metrics import ConsistencyScores, SegmentationScores

#: A bool prediction packed 8 pixels to a byte, and its shape (:func:`predictions_by_id`).
Packed = tuple["np.ndarray", tuple[int, ...]]

logger = logging.getLogger(__name__)

WHITEBOX_METHODS = ("fgsm", "ifgsm", "pgd", "segpgd", "cospgd")


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


def open_splits(data: str, config: str) -> Mapping[str, Any]:
    """Every split of ``config`` in a package (local folder or Hub repo), streamed with the
    columns a model reads: one ``load_dataset`` call for all of them (each call parses the
    card's YAML, which lists every split of every config)."""
    import fluorobench_c

    return fluorobench_c.load(data, config, None, columns=fluorobench_c.MODEL_COLUMNS)


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
) -> Iterator[tuple[list[str], torch.Tensor, torch.Tensor]]:
    """``(ids, predicted foreground, true foreground)`` per batch of a streamed split (bool
    ``(B, 1, H, W)`` on the CPU), optionally under a white-box attack on ``model``. The split
    is taken from ``opened`` (:func:`open_splits` of ``data``) when given, else opened."""
    import torch

    import fluorobench_c
    from synthesis.rng import derive_seed

    if opened is not None:
        ds = opened[split]
    else:
        ds = fluorobench_c.load(data, config, split, columns=fluorobench_c.MODEL_COLUMNS)
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
            ).adu.float()
        yield list(batch["id"]), predict(model, preprocess(image)).cpu(), mask.cpu()


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
) -> SegmentationScores:
    """The accumulated scores of one split (streamed), optionally under a white-box attack on
    ``model``; ``.compute()`` gives IoU, Dice and counts. ``opened``: the config's splits
    from :func:`open_splits` (else the split is opened here).

    ``consistency``: also accumulated there, each row's prediction against ``against[id]``
    (the prediction on the same row undegraded, :func:`predictions_by_id`). ``keep``: each
    row's prediction is stored there (packed) before any comparison, so the undegraded split
    itself can fill ``against`` (``keep is against``) in the pass that scores it."""
    from synthesis.metrics import SegmentationScores

    if consistency is not None and against is None:
        raise ValueError("evaluate_split: consistency needs the predictions to compare against")
    scores = SegmentationScores()
    for ids, pred, mask in _predictions(
        data,
        config,
        split,
        model,
        preprocess,
        device=device,
        batch_size=batch_size,
        attack=attack,
        opened=opened,
    ):
        scores.update(pred, mask)
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
    for ids, pred, mask in _predictions(
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
    ``consistency_curve`` (``[level, consistency]`` pairs, by level)."""
    from synthesis.metrics import robustness

    ref = per_split.get("test", {}).get("iou")
    families: dict[str, list[float]] = {}
    curves: dict[str, list[tuple[float, float]]] = {}
    for split, r in per_split.items():
        family, level = _family(split)
        r["family"], r["level"] = family, level
        r["robustness"] = robustness(r["iou"], ref) if ref else None
        if family in _NOT_DEGRADED:
            continue
        if r["robustness"] is not None:
            families.setdefault(family, []).append(r["robustness"])
        if r.get("consistency") is not None:
            curves.setdefault(family, []).append((level, r["consistency"]))
    out: dict[str, Any] = {
        f: {"mean_robustness": sum(v) / len(v), "splits": len(v)} for f, v in families.items()
    }
    for f, pts in curves.items():
        entry = out.setdefault(f, {"mean_robustness": None, "splits": len(pts)})
        entry["mean_consistency"] = sum(c for _, c in pts) / len(pts)
        entry["consistency_curve"] = [[level, c] for level, c in sorted(pts)]
    return out


def available_splits(data: str, config: str) -> list[str]:
    """Split names of a package (local folder or Hub repo), in the package's order."""
    return list(package_manifest(data, config)["configs"][config]["splits"])


def package_manifest(data: str, config: str) -> dict[str, Any]:
    """The manifest of a package (local folder or Hub repo) that has ``config``."""
    if Path(data).is_dir():
        manifest = read_manifest(Path(data))
        if manifest is None:
            raise InputError(f"{data}: no manifest.json; not a fluorobench-c package")
    else:
        from huggingface_hub import hf_hub_download

        manifest = json.loads(
            Path(hf_hub_download(data, "manifest.json", repo_type="dataset")).read_text()
        )
    if config not in manifest["configs"]:
        raise InputError(
            f"{data} has no config {config!r}; it has {', '.join(manifest['configs'])}"
        )
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
) -> dict[str, Any]:
    """Evaluate ``model`` on ``splits`` of a package; return the results dict (the same on
    every rank of a multi-process ``ctx``). ``consistency``: also score each split's
    consistency with the model's predictions on the same rows undegraded (module docstring);
    None: when the config's masks are pseudo-masks."""

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
    preprocess = make_preprocess(normalize)
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
    # Consistency: the same exact sums; each rank predicts the undegraded splits it needs
    # itself (once, kept packed), so no prediction travels between ranks.
    agreement = torch.zeros(len(jobs), len(ConsistencyScores.STATE), dtype=torch.float64)
    undegraded: dict[str, dict[str, Packed]] = {}
    opened: Mapping[str, Any] | None = None
    for index in ctx.queue(f"evaluate/{config}", len(jobs)):
        if opened is None:  # opened once, by the first job this rank takes
            opened = open_splits(data, config)
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
        )
        bar.close()
        counts[index] = torch.tensor(scores.state(), dtype=torch.float64)
        if pairs is not None:
            agreement[index] = torch.tensor(pairs.state(), dtype=torch.float64)
    if ctx.distributed:
        reduce_on = dev if dev.type == "cuda" else torch.device("cpu")  # NCCL for CUDA tensors
        counts = ctx.sum_(counts.to(reduce_on)).cpu()
        if consistency:
            agreement = ctx.sum_(agreement.to(reduce_on)).cpu()
    per_split: dict[str, dict[str, Any]] = {}
    for index, (name, _, _) in enumerate(jobs):
        per_split[name] = SegmentationScores.from_state(counts[index].tolist()).compute()
        logger.info("%s %s: IoU %.4f", config, name, per_split[name]["iou"])
        if consistency:
            per_split[name].update(_consistency_entry(bases[name], agreement[index].tolist()))
    families = summarise(per_split)
    results = {
        "config": config,
        "data": str(data),
        "model": {"description": info.description, "sha256": info.sha256, "normalize": normalize},
        "splits": per_split,
        "families": families,
    }
    if consistency:
        results["consistency"] = {
            "against": "the model's own prediction on the row of the same id undegraded: "
            "test for the synthetic families and white-box attacks, real for the real-image "
            "families",
            "pseudo_masks": pseudo,
        }
    return results


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

"""Scoring: stream a benchmark into a model and report its robustness.

Per split: IoU and Dice (aggregate over all pixels, and mean per image), and robustness =
IoU / IoU on ``test`` x 100 (``test`` is the reference condition, SNR 8). Per family: the
mean robustness of its splits. White-box attacks on the evaluated model itself run on the
fly on the ``test`` images (``--attacks pgd:8 segpgd:8``). Splits are streamed: nothing is
prepared that is not evaluated.

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
from builder.package.manifest import read_manifest
from builder.package.plan import SPLITS
from synthesis.runtime.device import resolve_device
from synthesis.runtime.errors import InputError
from synthesis.runtime.progress import ProgressFactory, no_progress

if TYPE_CHECKING:
    import torch
    from torch import nn

    from synthesis.metrics import SegmentationScores

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
) -> SegmentationScores:
    """The accumulated scores of one split (streamed), optionally under a white-box attack on
    ``model``; ``.compute()`` gives IoU, Dice and counts. ``opened``: the config's splits
    from :func:`open_splits` (else the split is opened here)."""
    from synthesis.metrics import SegmentationScores

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
        if progress:
            progress(len(ids))
    return scores


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
) -> dict[str, tuple[int, int, int, int]]:
    """``id -> (intersection, union, predicted, true)`` pixel counts of the model's foreground
    and the mask, per image of a streamed split: the counts from which the IoU, precision and
    recall of any subset of ids are exact (the fidelity score compares splits on the ids
    they share). ``opened``: the config's splits from :func:`open_splits`."""
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
    return ("reference" if spec.family == "reference" else spec.corruption, spec.level)


def summarise(per_split: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Add robustness (vs ``test``) to every split and per-family means."""
    from synthesis.metrics import robustness

    ref = per_split.get("test", {}).get("iou")
    families: dict[str, list[float]] = {}
    for split, r in per_split.items():
        family, level = _family(split)
        r["family"], r["level"] = family, level
        r["robustness"] = robustness(r["iou"], ref) if ref else None
        if family not in ("reference", "clean", "real", "other") and r["robustness"] is not None:
            families.setdefault(family, []).append(r["robustness"])
    return {f: {"mean_robustness": sum(v) / len(v), "splits": len(v)} for f, v in families.items()}


def available_splits(data: str, config: str) -> list[str]:
    """Split names of a package (local folder or Hub repo), in the package's order."""
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
    return list(manifest["configs"][config]["splits"])


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
) -> dict[str, Any]:
    """Evaluate ``model`` on ``splits`` of a package; return the results dict (the same on
    every rank of a multi-process ``ctx``)."""

    dev = resolve_device(device)
    have = available_splits(data, config)
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
    # Under torchrun each rank scores whole splits taken from a shared queue; the raw counts
    # are then summed across ranks (zeros where a rank did not score a split), so every
    # metric is exactly the one-process value.
    import torch

    from synthesis.metrics import SegmentationScores

    counts = torch.zeros(len(jobs), len(SegmentationScores.STATE), dtype=torch.float64)
    opened: Mapping[str, Any] | None = None
    for index in ctx.queue(f"evaluate/{config}", len(jobs)):
        if opened is None:  # opened once, by the first job this rank takes
            opened = open_splits(data, config)
        name, split, attack = jobs[index]
        factory = (progress if ctx.is_main else None) or no_progress
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
        )
        bar.close()
        counts[index] = torch.tensor(scores.state(), dtype=torch.float64)
    if ctx.distributed:
        reduce_on = dev if dev.type == "cuda" else torch.device("cpu")  # NCCL for CUDA tensors
        counts = ctx.sum_(counts.to(reduce_on)).cpu()
    per_split: dict[str, dict[str, Any]] = {}
    for index, (name, _, _) in enumerate(jobs):
        per_split[name] = SegmentationScores.from_state(counts[index].tolist()).compute()
        logger.info("%s %s: IoU %.4f", config, name, per_split[name]["iou"])
    families = summarise(per_split)
    return {
        "config": config,
        "data": str(data),
        "model": {"description": info.description, "sha256": info.sha256, "normalize": normalize},
        "splits": per_split,
        "families": families,
    }

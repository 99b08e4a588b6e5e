"""Fidelity: does a model's drop on a synthetic split predict its drop on real images
degraded the same way? (docs/definitions.md#fidelity)

For each renderer (``physics``, ``naive``, and ``gan`` when weights are given):

1. build a package of one config from the real masks of a source with that renderer (once,
   with ``seed``): the reference splits, ``snr_*``, ``sib_*``, ``svb_*``, and the real-image
   splits ``real``, ``real_snr_*``, ``real_sib_*``, ``real_svb_*`` (the source's test tiles,
   never trained on);
2. train the reference U-Net on that renderer's ``train`` split (``validation`` picks the
   epoch) ``seeds`` times, with the training seeds ``seed, seed + 1, ..., seed + seeds - 1``;
3. score each of them, image by image, on its own synthetic splits and on the same real
   splits;
4. robustness per level = 100 x IoU(level) / IoU(reference condition), always on the same
   tiles: synthetic splits against ``test`` (SNR 8); ``real_snr_K`` against ``real_snr_8``
   on the tiles both keep; ``real_sib_L`` / ``real_svb_L`` against ``real`` (they keep the
   native noise);
5. the gap per family = mean over levels of |robustness_synthetic - robustness_real|;
   and the **consistency-based** gap, which needs no labels: the same gap of the
   consistency curves, 100 x the consistency (IoU of the model's prediction on a degraded
   split against its own prediction on the same tiles at the reference condition of step 4,
   ``test``, ``real_snr_8`` or ``real``) per level, synthetic against real;
6. over the training seeds: the mean and the sample sd of every score
   (:func:`aggregate_seeds`), and, per pair of renderers, whether their real-image IoUs at
   native noise differ by more than the spread (:func:`differs`).

Images without manual masks (an images-only source) work the same way: the masks are
pseudo-masks, and the results (``masks``) and reports say so; their pixel sizes
(``source_pixel_size`` overrides what the files state) decide how the images are resampled
to the config's stated pixel size before they are pseudo-masked and tiled.

Also: each model's IoU on the real tiles at native noise and at the reference SNR (does
training on this renderer transfer?), the same U-Net trained on the real ``train`` tiles
with the same training seeds (the upper bound), the native-SNR histogram of the real tiles
and the residual noise of the real blur splits.

Everything is resumable, in one process: packages resume as any build; each model is saved
under a name that hashes its settings and its training seed, and its scores beside it
(``models/<model stem>.scores.json``, valid only for that model file and that package), so a
rerun, or a run with more seeds, trains and scores only the models that do not exist yet.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.assembly import BuildOptions, build
from builder.assembly.options import RENDERERS
from builder.assembly.reference import fit_reference, read_split
from builder.distributed import SOLO, Context
from builder.evaluation.scoring import Packed, open_splits, per_image_counts
from builder.package.card import number_cell, spread_cell
from builder.package.manifest import pseudo_mask_method
from synthesis.metrics import iou_of_counts
from synthesis.normalize import zscore
from synthesis.runtime.device import resolve_device
from synthesis.runtime.errors import InputError, RefusedError
from synthesis.runtime.files import atomic_write_bytes, sha256_file, temporary_name
from synthesis.runtime.progress import ProgressFactory, no_progress

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

__all__ = [
    "FAMILIES",
    "FidelityOptions",
    "aggregate_seeds",
    "differs",
    "fidelity",
    "fidelity_markdown",
    "mean_sd",
    "write_fidelity_reports",
]

#: Families scored, with the levels that have both a synthetic and a real split.
FAMILIES: dict[str, tuple[int, ...]] = {
    "snr": (1, 2, 3, 4, 5),
    "sib": (1, 2, 3, 4, 5),
    "svb": (1, 2, 3, 4, 5),
}
#: What the real splits of each family are compared with (same tiles, reference condition).
REAL_REFERENCE = {"snr": "real_snr_8", "sib": "real", "svb": "real"}
SPLIT_FAMILIES = ["reference", "snr", "sib", "svb", "real", "real_snr", "real_sib", "real_svb"]

#: id -> (intersection, union, predicted, true) pixel counts.
Counts = dict[str, tuple[int, int, int, int]]


@dataclass(frozen=True)
class FidelityOptions:
    """One fidelity run. ``work`` holds the packages (``packages/<renderer>``), the models
    and their scores (``models/``) and the reports. ``seed`` builds the packages and is the
    first training seed; each U-Net is trained ``seeds`` times (training seeds ``seed`` to
    ``seed + seeds - 1``)."""

    source: str
    work: Path
    config: str = "nucleus"
    renderers: tuple[str, ...] = ("physics", "naive", "gan")
    weights: str | None = None
    train: int = 160
    validation: int = 20
    test: int = 1000
    epochs: int = 15
    seed: int = 0
    seeds: int = 3
    real_model: bool = True
    device: str | None = None
    overwrite: bool = False
    #: µm per pixel of an images-only source's images by stem (``"*"``: all); empty: what
    #: the files state (docs/definitions.md#pixel-size-of-a-source).
    source_pixel_size: dict[str, float] = field(default_factory=dict)

    def validate(self) -> None:
        """Raises :class:`InputError` for a source that does not exist, unknown renderers or
        fewer than one training seed."""
        if self.source == "procedural":
            raise InputError(
                "fidelity needs a source with real images (a folder, pair lists or BBBC038), "
                "not procedural masks"
            )
        if not Path(self.source).exists():
            raise InputError(f"{self.source}: no such source (real images with masks)")
        unknown = [r for r in self.renderers if r not in RENDERERS]
        if unknown or not self.renderers:
            raise InputError(f"renderers must be among {', '.join(RENDERERS)}. Got {unknown}")
        if self.weights is not None and not Path(self.weights).is_dir():
            raise InputError(f"{self.weights}: GAN weights must be a folder")
        if self.seeds < 1:
            raise InputError(f"seeds must be at least 1. Got {self.seeds}")
        if self.source_pixel_size:
            from synthesis.groundtruth.sources.pixel_size import check_pixel_size

            for stem, um in self.source_pixel_size.items():
                check_pixel_size(um, repr(stem))

    def training_seeds(self) -> list[int]:
        """The training seeds of every U-Net: ``seed, seed + 1, ..., seed + seeds - 1``."""
        return list(range(self.seed, self.seed + self.seeds))

    def recipe(self) -> dict[str, Any]:
        """What the results depend on; a rerun in the same ``work`` with another recipe is
        refused unless ``overwrite``. ``seeds`` is left out: each model's file name hashes
        its own training seed, so a run with more (or fewer) seeds reuses every model and
        score that exists and adds the missing ones."""
        return {
            "config": self.config,
            "source": str(Path(self.source).resolve()),
            "renderers": list(self.renderers),
            "weights": None if self.weights is None else str(Path(self.weights).resolve()),
            "train": self.train,
            "validation": self.validation,
            "test": self.test,
            "epochs": self.epochs,
            "seed": self.seed,
            "real_model": self.real_model,
            **self._pixel_recipe(),
        }

    def _pixel_recipe(self) -> dict[str, Any]:
        """``source_pixel_size`` when given (absent otherwise: recipes as before)."""
        if not self.source_pixel_size:
            return {}
        return {"source_pixel_size": dict(sorted(self.source_pixel_size.items()))}


def fidelity(
    opts: FidelityOptions, *, progress: ProgressFactory | None = None, ctx: Context = SOLO
) -> dict[str, Any]:
    """Run the fidelity comparison; return the results (see :func:`write_fidelity_reports`),
    the same on every rank.

    The packages are built first (under ``torchrun`` every rank shares each build's units,
    :func:`builder.assembly.build`). Then the (trained on, training seed) units, one U-Net
    each: in one process one after the other; across the ranks of a multi-process ``ctx``
    from a shared queue, each rank writing the scores of the units it took. Every rank then
    reads every unit's scores back. A unit whose model and scores exist is read back, not
    redone, so an interrupted run resumes at any world size.

    Raises:
        InputError: bad options (nothing is written).
        RefusedError: ``work`` holds the results of other settings (and not ``overwrite``).
    """
    opts.validate()
    device = resolve_device(opts.device)
    earlier = opts.work / "fidelity.json"
    if earlier.exists() and not opts.overwrite:
        try:
            before = json.loads(earlier.read_text()).get("recipe")
        except (OSError, ValueError) as e:
            raise RefusedError(f"{earlier}: unreadable ({e}); pass --overwrite") from None
        if before != opts.recipe():
            raise RefusedError(
                f"{earlier} holds the results of other settings; use another folder or pass "
                "--overwrite"
            )
    seeds = opts.training_seeds()
    results: dict[str, Any] = {
        "config": opts.config,
        "source": str(opts.source),
        "recipe": opts.recipe(),
        "device": str(device),
        "seeds": seeds,
        "renderers": {},
        "skipped": {},
    }
    packages: dict[str, Path] = {}
    for renderer in opts.renderers:
        if renderer == "gan" and not opts.weights:
            results["skipped"]["gan"] = "no GAN weights given (--weights); none ship"
            logger.info("fidelity: gan skipped (no weights)")
            continue
        packages[renderer] = _build_package(opts, renderer, progress)
    first_pkg = next(iter(packages.values()), None)
    units = [(r, s) for r in packages for s in seeds]
    if opts.real_model and first_pkg is not None:
        units += [("real", s) for s in seeds]
    data = {r: _package_data(opts, pkg) for r, pkg in packages.items()}
    if opts.real_model:
        data["real"] = _real_tiles(opts)

    def unit(trained_on: str, seed: int) -> dict[str, Any]:
        pkg = packages.get(trained_on, first_pkg)
        assert pkg is not None
        return _unit(opts, trained_on, seed, pkg, data[trained_on], device, progress)

    try:
        for index in ctx.queue("fidelity/units", len(units)):
            unit(*units[index])
    except BaseException as exc:
        ctx.fail(f"rank {ctx.rank}: {type(exc).__name__}: {exc}")
        raise
    ctx.arrive("fidelity/units")  # every unit's scores are written: read back below
    for renderer, pkg in packages.items():
        per_seed = {str(s): unit(renderer, s) for s in seeds}
        results["renderers"][renderer] = {
            "seeds": per_seed,
            "aggregate": aggregate_seeds(list(per_seed.values())),
        }
        if pkg == first_pkg:
            results["residual_noise"] = _residual_noise(opts, pkg)
            manifest = json.loads((pkg / "manifest.json").read_text())
            results["native_snr"] = manifest["configs"][opts.config].get("native_snr")
            method = pseudo_mask_method(manifest, opts.config)
            if method is not None:  # images without manual masks: say so
                results["masks"] = {"kind": "pseudo", "pseudo_mask": method}
            source = manifest["configs"][opts.config].get("source") or {}
            if source.get("pixel_size"):
                results["pixel_size"] = source["pixel_size"]
        logger.info(
            "fidelity: %s gaps (mean over %d seeds) %s",
            renderer,
            len(seeds),
            {
                f: v["gap"]["mean"]
                for f, v in results["renderers"][renderer]["aggregate"]["families"].items()
            },
        )
    if opts.real_model and first_pkg is not None:
        per_seed = {str(s): unit("real", s) for s in seeds}
        results["trained_on_real"] = {
            "seeds": per_seed,
            "aggregate": aggregate_seeds(list(per_seed.values())),
        }
    return results


def mean_sd(values: list[float | None]) -> dict[str, Any]:
    """``{"mean", "sd", "n"}`` of the finite values among ``values`` (None and NaN are left
    out): the mean, the sample sd (ddof = 1; None below 2 values) and how many there were.

    Example:
        >>> mean_sd([2, None, 4, float("nan"), 6])
        {'mean': 4.0, 'sd': 2.0, 'n': 3}
        >>> mean_sd([0.5])
        {'mean': 0.5, 'sd': None, 'n': 1}
    """
    xs = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return {
        "mean": statistics.fmean(xs) if xs else None,
        "sd": statistics.stdev(xs) if len(xs) >= 2 else None,
        "n": len(xs),
    }


def aggregate_seeds(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample sd (:func:`mean_sd`) over the per-seed results of one renderer (or of
    the real-trained U-Net) of: ``iou_test``, ``iou_real``, ``iou_real_snr_8``, ``val_iou``;
    per family, the gap and the synthetic and real robustness per level (a level none of the
    seeds defines is left out); the same of the consistency curves (``consistency``:
    ``{"families": ...}``); per split, the IoU, precision and recall. A key none of the
    results has is left out.

    Args:
        per_seed: one :func:`score` result (with ``val_iou``) per training seed; level keys
            may be ints or strings (as read back from JSON).

    Returns:
        ``{"n": seeds, "iou_test": {"mean", "sd", "n"}, ..., "families": {family: {"gap":
        stat, "synthetic": {level: stat}, "real": {level: stat}}}, "splits": {split:
        {"iou": stat, "precision": stat, "recall": stat}}}``, levels as ints.
    """
    out: dict[str, Any] = {"n": len(per_seed)}
    for key in ("iou_test", "iou_real", "iou_real_snr_8", "val_iou"):
        if any(key in r for r in per_seed):
            out[key] = mean_sd([r.get(key) for r in per_seed])
    if any("families" in r for r in per_seed):
        out["families"] = _aggregate_families([r.get("families", {}) for r in per_seed])
    if any("consistency" in r for r in per_seed):
        cons = [r.get("consistency") or {} for r in per_seed]
        out["consistency"] = {
            "families": _aggregate_families([c.get("families", {}) for c in cons])
        }
    if any("splits" in r for r in per_seed):
        names = list(dict.fromkeys(s for r in per_seed for s in r.get("splits", {})))
        out["splits"] = {
            s: {
                k: mean_sd([r["splits"][s][k] for r in per_seed if s in r.get("splits", {})])
                for k in ("iou", "precision", "recall")
            }
            for s in names
        }
    return out


def _aggregate_families(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Per family, :func:`mean_sd` over the seeds of the gap and of the synthetic and real
    curves per level (:func:`curves` results, one per seed)."""
    families: dict[str, Any] = {}
    for family, levels in FAMILIES.items():
        data = [r[family] for r in per_seed if family in r]
        fam: dict[str, Any] = {"gap": mean_sd([d["gap"] for d in data])}
        for kind in ("synthetic", "real"):
            fam[kind] = {
                lv: mean_sd([_at(d[kind], lv) for d in data])
                for lv in levels
                if any(_at(d[kind], lv) is not None for d in data)
            }
        families[family] = fam
    return families


def differs(
    a_mean: float | None, a_sd: float | None, b_mean: float | None, b_sd: float | None
) -> bool | None:
    """Whether two means over seeds differ by more than their spread:
    ``|a_mean - b_mean| > a_sd + b_sd`` (docs/definitions.md#fidelity). None when either
    mean or either sd is None (one seed has no spread).

    Example:
        >>> differs(0.787, 0.063, 0.60, 0.05), differs(0.787, 0.063, 0.75, 0.05)
        (True, False)
        >>> differs(0.787, None, 0.60, 0.05) is None
        True
    """
    if a_mean is None or b_mean is None or a_sd is None or b_sd is None:
        return None
    return abs(a_mean - b_mean) > a_sd + b_sd


def iou(counts: Counts, ids: list[str] | None = None) -> float:
    """Aggregate IoU of ``ids`` (default: all) from per-image counts."""
    keys = list(counts) if ids is None else ids
    return iou_of_counts(sum(counts[k][0] for k in keys), sum(counts[k][1] for k in keys))


def split_scores(counts: Counts) -> dict[str, float | int]:
    """Aggregate IoU, precision (share of predicted foreground that is true) and recall
    (share of true foreground found) of a split, and its image count. Precision and recall
    tell a model that stops finding nuclei from one that finds what is not there."""
    inter, _, pred, true = (sum(c[j] for c in counts.values()) for j in range(4))
    return {
        "images": len(counts),
        "iou": iou(counts),
        "precision": inter / pred if pred else 1.0,
        "recall": inter / true if true else 1.0,
    }


def curves(counts: dict[str, Counts]) -> dict[str, dict[str, Any]]:
    """Per family: robustness per level on the synthetic and on the real splits, and the gap
    over the levels that have both (a level whose reference IoU is 0 has none).

    Args:
        counts: split name -> per-image counts (:func:`per_image_counts`).
    """
    out: dict[str, dict[str, Any]] = {}
    for family, levels in FAMILIES.items():
        syn: dict[int, float] = {}
        real: dict[int, float] = {}
        ref_real = REAL_REFERENCE[family]
        for lv in levels:
            name = f"{family}_{lv}"
            if name in counts and "test" in counts:
                r = _robustness(counts[name], counts["test"], list(counts[name]))
                if r is not None:
                    syn[lv] = r
            name = f"real_{name}"
            if name in counts and ref_real in counts:
                r = _robustness(
                    counts[name],
                    counts[ref_real],
                    [i for i in counts[name] if i in counts[ref_real]],
                )
                if r is not None:
                    real[lv] = r
        both = sorted(set(syn) & set(real))
        gap = sum(abs(syn[lv] - real[lv]) for lv in both) / len(both) if both else None
        out[family] = {"synthetic": syn, "real": real, "gap": gap}
    return out


def score(
    pkg: Path,
    config: str,
    model: torch.nn.Module,
    *,
    device: torch.device,
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    """Per-image scores of ``model`` on every evaluated split of ``pkg``, summarised as
    :func:`curves`, the IoU on ``test``, ``real`` and ``real_snr_8``, and what the manifest
    says of the real tiles; and ``consistency``: :func:`curves` of the consistency counts
    (each split's predictions against the model's own on the same tiles at the reference
    condition, :func:`consistency_reference`), which need no labels."""
    manifest = json.loads((pkg / "manifest.json").read_text())
    splits = manifest["configs"][config]["splits"]
    names = [s for s in splits if s not in ("train", "validation")]
    # The reference conditions first: the other splits' consistency compares against them.
    references = {consistency_reference(s) for s in names} - {None}
    order = [s for s in names if s in references] + [s for s in names if s not in references]
    bar = (progress or no_progress)(len(names), f"{config} {pkg.name}: scoring", "split")
    counts: dict[str, Counts] = {}
    agreement: dict[str, Counts] = {}
    kept: dict[str, dict[str, Packed]] = {}
    opened = open_splits(str(pkg), config)
    for s in order:
        ref = consistency_reference(s)
        keep: dict[str, Packed] | None = {} if s in references else None
        against = kept.get(ref) if ref is not None and ref != s else None
        cons: Counts = {}
        counts[s] = per_image_counts(
            str(pkg),
            config,
            s,
            model,
            zscore,
            device=device,
            opened=opened,
            keep=keep,
            against=against,
            agreement=cons,
        )
        if keep is not None:
            kept[s] = keep
        if ref == s:  # a reference condition agrees with itself: (|C|, |C|, |C|, |C|)
            agreement[s] = {i: (c[2],) * 4 for i, c in counts[s].items()}
        elif against is not None:
            agreement[s] = cons
        bar.update(1)
    bar.close()
    counts = {s: counts[s] for s in names}  # in the manifest's order, as before
    agreement = {s: agreement[s] for s in names if s in agreement}
    return {
        "splits": {s: split_scores(c) for s, c in counts.items()},
        "iou_test": iou(counts["test"]),
        "iou_real": iou(counts["real"]) if "real" in counts else None,
        "iou_real_snr_8": iou(counts["real_snr_8"]) if "real_snr_8" in counts else None,
        "families": curves(counts),
        "consistency": {
            "families": curves(agreement),
            "splits": {s: iou(c) for s, c in agreement.items()},
        },
        "skipped_below_target": {
            s: v.get("skipped_below_target", 0)
            for s, v in splits.items()
            if s.startswith("real_snr")
        },
        "native_snr": manifest["configs"][config].get("native_snr"),
    }


def consistency_reference(split: str) -> str | None:
    """The split whose predictions a split's consistency is measured against in fidelity:
    its reference condition (the one its robustness divides by), ``test`` for ``test`` and
    the synthetic families, ``real_snr_8`` for ``real_snr_*``, ``real`` for ``real`` and
    ``real_sib_*`` / ``real_svb_*``; None for the others. (``evaluate`` compares
    ``real_snr_*`` with ``real`` instead: fidelity compares like with like, SNR 8.)

    Example:
        >>> [consistency_reference(s) for s in ("snr_2", "real_snr_2", "real_sib_3", "clean")]
        ['test', 'real_snr_8', 'real', None]
    """
    if split == "test" or split.split("_")[0] in FAMILIES:
        return "test"
    if split == "real":
        return "real"
    for family, reference in REAL_REFERENCE.items():
        if split.startswith(f"real_{family}_"):
            return reference
    return None


def residual_noise(pkg: Path, config: str) -> dict[str, float]:
    """Median, over tiles, of a blind noise fit of each real blur split at the tile's
    foreground mean, relative to the native fit: 1 = the native noise level restored."""
    import numpy as np
    import torch

    import fluorobench_c
    from synthesis.corruptions.real import estimate_noise

    out = {}
    for family in ("sib", "svb"):
        for lv in FAMILIES[family]:
            ratios = []
            for row in fluorobench_c.load(str(pkg), config, f"real_{family}_{lv}"):
                x = torch.from_numpy(np.asarray(row["image"], dtype=np.float64))[None, None]
                m = torch.from_numpy(np.asarray(row["mask"]) != 0)[None, None]
                fit = estimate_noise(x, m)
                r = row["params"]["real"]
                mu = torch.tensor([float(x[m].mean())], dtype=torch.float64)
                native = max(r["noise_a"] * float(mu) + r["noise_b"], 1 / 12)
                ratios.append(float(fit.variance(mu)[0]) / native)
            out[f"real_{family}_{lv}"] = float(np.median(ratios))
    return out


def write_fidelity_reports(out: Path, results: dict[str, Any]) -> list[Path]:
    """``fidelity.json``, ``fidelity.md`` and ``fidelity.png`` (the curves) in ``out``,
    each written under a temporary name and renamed."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "fidelity.json", out / "fidelity.md", out / "fidelity.png"]
    atomic_write_bytes(paths[0], (json.dumps(results, indent=2) + "\n").encode())
    atomic_write_bytes(paths[1], fidelity_markdown(results).encode())
    plot_curves(results, paths[2])
    return paths


def fidelity_markdown(results: dict[str, Any]) -> str:
    """The gap table, the curves and the real tiles' native SNR, as Markdown: every score is
    ``mean ± sd`` over the training seeds, and each pair of renderers says whether their
    real-image IoUs at native noise differ by more than the spread (:func:`differs`)."""
    real = (results.get("trained_on_real") or {}).get("aggregate")
    renderers = {name: r["aggregate"] for name, r in results["renderers"].items()}
    seeds = results.get("seeds") or []
    lines = [
        f"# Fidelity: {results['config']} from `{results['source']}`",
        "",
        *_masks_lines(results),
        "Robustness = 100 x IoU / IoU at the reference condition, on the same tiles; gap = mean "
        "over levels of |synthetic - real| (docs/definitions.md#fidelity).",
        "",
        f"Each U-Net trained {len(seeds)} time(s), training seeds "
        f"{', '.join(map(str, seeds)) or '—'} (packages built with seed "
        f"{results['recipe']['seed']}); "
        + (
            "a cell is the mean ± the sample sd over the seeds."
            if len(seeds) > 1
            else "one seed: no spread."
        ),
        "",
        "| trained on | IoU test (own renderer) | IoU real, native noise | IoU real, SNR 8 "
        "| x real-trained (SNR 8) | gap SNR | gap SIB | gap SVB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, agg in renderers.items():
        mine, theirs = _mean(agg, "iou_real_snr_8"), real and _mean(real, "iou_real_snr_8")
        rel = f"{mine / theirs:.2f}" if mine and theirs else "—"
        cells = [_spread(agg["families"][f]["gap"], 1) for f in FAMILIES]
        lines.append(
            f"| {name} | {_spread(agg.get('iou_test'))} | {_spread(agg.get('iou_real'))} "
            f"| {_spread(agg.get('iou_real_snr_8'))} | {rel} | " + " | ".join(cells) + " |"
        )
    if real:
        lines.append(
            f"| real train tiles | — | {_spread(real.get('iou_real'))} "
            f"| {_spread(real.get('iou_real_snr_8'))} | 1.00 | — | — | — |"
        )
    for name, why in results.get("skipped", {}).items():
        lines += ["", f"{name}: skipped ({why})."]
    cons = {n: a["consistency"]["families"] for n, a in renderers.items() if "consistency" in a}
    if cons:
        lines += [
            "",
            "Consistency-based gaps (no labels: the same gap of 100 x the consistency, the IoU "
            "of each degraded split's predictions against the model's own at the reference "
            "condition, synthetic against real):",
            "",
            "| trained on | label gap SNR | label gap SIB | label gap SVB "
            "| consistency gap SNR | consistency gap SIB | consistency gap SVB |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, fams in cons.items():
            label = [_spread(renderers[name]["families"][f]["gap"], 1) for f in FAMILIES]
            by_cons = [_spread(fams[f]["gap"], 1) for f in FAMILIES]
            lines.append(f"| {name} | " + " | ".join(label + by_cons) + " |")
    if len(renderers) > 1:
        lines += [
            "",
            "IoU on the real tiles at native noise, renderer against renderer; a difference "
            "exceeds the spread when |mean_a - mean_b| > sd_a + sd_b:",
            "",
        ]
        for a, b in combinations(renderers, 2):
            sa, sb = renderers[a].get("iou_real") or {}, renderers[b].get("iou_real") or {}
            verdict = differs(sa.get("mean"), sa.get("sd"), sb.get("mean"), sb.get("sd"))
            if verdict is None:
                said = "undecided (no spread: one seed, or a score missing)"
            else:
                diff = abs(sa["mean"] - sb["mean"])
                said = (
                    f"difference {diff:.3f} "
                    f"{'exceeds' if verdict else 'does not exceed'} the spread "
                    f"{sa['sd'] + sb['sd']:.3f}"
                )
            lines.append(f"- {a} {_spread(sa)} vs {b} {_spread(sb)}: {said}.")
    lines += [
        "",
        "| renderer | family | levels | synthetic | real |",
        "|---|---|---|---|---|",
    ]
    for name, agg in renderers.items():
        for family, data in agg["families"].items():
            lv = FAMILIES[family]
            lines.append(
                f"| {name} | {family} | {' '.join(map(str, lv))} "
                f"| {', '.join(_spread(_at(data['synthetic'], x), 0) for x in lv)} "
                f"| {', '.join(_spread(_at(data['real'], x), 0) for x in lv)} |"
            )
    shown = ("test", "snr_3", "snr_2", "real_snr_8", "real_snr_3", "real_snr_2", "real")
    if renderers:
        lines += [
            "",
            "Precision / recall (aggregate over pixels, mean over the seeds) at the reference "
            "conditions and under noise:",
            "",
            "| renderer | " + " | ".join(f"`{s}`" for s in shown) + " |",
            "|---|" + "---:|" * len(shown),
        ]
        for name, agg in renderers.items():
            sp = agg.get("splits", {})
            cells = [
                f"{number_cell(sp[s]['precision']['mean'], 2)} / "
                f"{number_cell(sp[s]['recall']['mean'], 2)}"
                if s in sp
                else "—"
                for s in shown
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    noise = results.get("residual_noise")
    if noise:
        lines += [
            "",
            "Residual noise of the real blur splits (blind refit / native fit, median): "
            + ", ".join(f"{k} {v:.2f}" for k, v in noise.items()),
        ]
    native = results.get("native_snr")
    if native:
        lines += ["", "Native SNR of the real tiles: " + json.dumps(native, sort_keys=True)]
    return "\n".join(lines) + "\n"


def _masks_lines(results: dict[str, Any]) -> list[str]:
    """What the report says of pseudo-masks and pixel sizes (nothing for manual masks)."""
    lines: list[str] = []
    masks = results.get("masks")
    if masks and masks.get("kind") == "pseudo":
        name = (masks.get("pseudo_mask") or {}).get("name", "?")
        lines += [
            "**The masks are pseudo-masks** (real images without manual masks: a classical "
            f"segmentation, `{name}`, docs/definitions.md#pseudo-masks), not ground truth: "
            "label-based IoUs and gaps are measured against them; the consistency-based gaps "
            "need no labels.",
            "",
        ]
    pixel = results.get("pixel_size")
    if pixel:
        target = pixel.get("target_um")
        said = []
        for key, im in (pixel.get("images") or {}).items():
            um = im.get("pixel_size_um")
            if um is None:
                said.append(f"`{key}` unknown (used as it is)")
            elif im.get("scale", 1.0) != 1.0:
                said.append(f"`{key}` {um:g} µm ({im.get('from')}), resampled x{im['scale']:.3g}")
            else:
                said.append(f"`{key}` {um:g} µm ({im.get('from')})")
        lines += [
            "Pixel sizes: "
            + ", ".join(said)
            + (f"; the config's is {target:g} µm/px." if target else "."),
            "",
        ]
    return lines


def plot_curves(results: dict[str, Any], path: Path) -> None:
    """Synthetic and real robustness against level, one row per renderer, one column per
    family: the mean over the training seeds, with an error bar of the sample sd."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    renderers = list(results["renderers"])
    rows = max(len(renderers), 1)
    fig, axes = plt.subplots(rows, 3, figsize=(11, 3.2 * rows), squeeze=False)
    for row, name in zip(axes, renderers, strict=False):
        fams = results["renderers"][name]["aggregate"]["families"]
        for ax, (family, data) in zip(row, fams.items(), strict=True):
            for kind, style in (("synthetic", "o-"), ("real", "s--")):
                pts = sorted((int(k), v) for k, v in data[kind].items() if v["mean"] is not None)
                ax.errorbar(
                    [p[0] for p in pts],
                    [p[1]["mean"] for p in pts],
                    yerr=[p[1]["sd"] or 0.0 for p in pts],
                    fmt=style,
                    capsize=3,
                    label=kind,
                )
            if family == "snr":
                ax.invert_xaxis()  # severity grows to the right
            gap = data["gap"]
            title = f"{name}: {family}"
            if gap["mean"] is not None:
                title += f" (gap {_spread(gap, 1)})"
            ax.set_title(title)
            ax.set_xlabel("SNR" if family == "snr" else "blur level")
            ax.set_ylabel("robustness")
            ax.set_ylim(0, 110)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    tmp.replace(path)


# ----------------------------------------------------------------------------- internals


def _build_package(opts: FidelityOptions, renderer: str, progress: ProgressFactory | None) -> Path:
    out = opts.work / "packages" / renderer
    build(
        BuildOptions(
            out=out,
            configs=[opts.config],
            source=str(Path(opts.source).resolve()),  # however the path was spelt
            splits=SPLIT_FAMILIES,
            counts={"train": opts.train, "validation": opts.validation, "test": opts.test},
            seed=opts.seed,
            device=opts.device,
            renderer=renderer,
            weights=opts.weights if renderer == "gan" else None,
            source_pixel_size=dict(opts.source_pixel_size),
            overwrite=opts.overwrite,
            progress=progress,
        )
    )
    return out


def _package_data(
    opts: FidelityOptions, pkg: Path
) -> Callable[[str], tuple[torch.Tensor, torch.Tensor]]:
    """``split -> (ADU images, masks)`` of a split of ``pkg``: what its U-Nets train on."""

    def load(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        return read_split(str(pkg), opts.config, split)

    return load


def _model_path(opts: FidelityOptions, trained_on: str, seed: int) -> Path:
    """Where the U-Net trained on ``trained_on`` with training seed ``seed`` lives: the name
    hashes every setting that changes it, so a rerun reuses it and other settings never
    collide with it."""
    recipe: dict[str, Any] = {
        "config": opts.config,
        "source": str(Path(opts.source).resolve()),
        "trained_on": trained_on,
        "train": opts.train,
        "validation": opts.validation,
        "epochs": opts.epochs,
        "seed": seed,
        **opts._pixel_recipe(),
    }
    if trained_on != "real":  # the package's train split: its manifest fixes its bytes
        manifest = opts.work / "packages" / trained_on / "manifest.json"
        recipe["train_shards"] = [
            s["sha256"]
            for s in json.loads(manifest.read_text())["configs"][opts.config]["splits"]["train"][
                "shards"
            ]
        ]
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    return opts.work / "models" / f"{opts.config}-{trained_on}-unet-{key}.safetensors"


def _scores_path(model: Path) -> Path:
    """The scores of a model, beside it: ``<model stem>.scores.json``."""
    return model.with_name(f"{model.stem}.scores.json")


def _package_key(pkg: Path, config: str) -> str:
    """A digest of the shards of every split of ``config`` in ``pkg`` (an alias by the split
    it stands for): scores made on another build of the package never match it."""
    splits = json.loads((pkg / "manifest.json").read_text())["configs"][config]["splits"]
    shards = {
        name: split["alias_of"] if split.get("alias_of") else [s["sha256"] for s in split["shards"]]
        for name, split in splits.items()
    }
    return hashlib.sha256(json.dumps(shards, sort_keys=True).encode()).hexdigest()


def _unit(
    opts: FidelityOptions,
    trained_on: str,
    seed: int,
    pkg: Path,
    data: Callable[[str], tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    progress: ProgressFactory | None,
) -> dict[str, Any]:
    """The scores (with ``val_iou``) of the U-Net trained on ``trained_on`` with training seed
    ``seed``: read from its scores file when that file was written for this model file (its
    sha256) and this package; otherwise the model is trained (or loaded), scored on ``pkg``
    (:func:`score`, or the real splits only for the real-trained U-Net) and the scores file
    written. The result is the one read back from JSON either way (level keys as strings)."""
    path = _model_path(opts, trained_on, seed)
    cache = _scores_path(path)
    package = _package_key(pkg, opts.config)
    if path.exists() and cache.exists():
        try:
            stored = json.loads(cache.read_text())
        except (OSError, ValueError):
            stored = {}
        if stored.get("package") == package and stored.get("model_sha256") == sha256_file(path):
            logger.info("fidelity: reusing the scores of %s", path.name)
            return stored["result"]
        logger.info("fidelity: %s is stale; scoring again", cache.name)
    model, val_iou = _trained(opts, trained_on, seed, data, device, progress)
    if trained_on == "real":
        res = _score_real(pkg, opts.config, model, device)
    else:
        res = score(pkg, opts.config, model, device=device, progress=progress)
        res.pop("native_snr", None)  # the package's, not the model's: reported once
    res["val_iou"] = val_iou
    res = json.loads(json.dumps(res))
    record = {
        "model": path.name,
        "model_sha256": sha256_file(path),
        "package": package,
        "trained_on": trained_on,
        "seed": seed,
        "result": res,
    }
    atomic_write_bytes(cache, (json.dumps(record, indent=2) + "\n").encode())
    return res


def _score_real(
    pkg: Path, config: str, model: torch.nn.Module, device: torch.device
) -> dict[str, Any]:
    """The real-trained U-Net's scores on the real tiles of ``pkg``: at native noise
    (``real``) and at the reference SNR (``real_snr_8``)."""
    opened = open_splits(str(pkg), config)
    counts = {
        s: per_image_counts(str(pkg), config, s, model, zscore, device=device, opened=opened)
        for s in ("real", "real_snr_8")
    }
    return {
        "iou_real": iou(counts["real"]),
        "iou_real_snr_8": iou(counts["real_snr_8"]),
        "splits": {s: split_scores(c) for s, c in counts.items()},
    }


def _residual_noise(opts: FidelityOptions, pkg: Path) -> dict[str, float]:
    """:func:`residual_noise` of ``pkg``, kept in ``residual_noise.json`` of ``work`` and
    read back while the package is the same build."""
    path = opts.work / "residual_noise.json"
    package = _package_key(pkg, opts.config)
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            stored = {}
        if stored.get("package") == package:
            return stored["result"]
    res = residual_noise(pkg, opts.config)
    record = {"package": package, "renderer": pkg.name, "result": res}
    atomic_write_bytes(path, (json.dumps(record, indent=2) + "\n").encode())
    return res


def _trained(
    opts: FidelityOptions,
    trained_on: str,
    seed: int,
    data: Callable[[str], tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    progress: ProgressFactory | None,
) -> tuple[torch.nn.Module, float]:
    """The U-Net trained on ``data("train")`` with training seed ``seed`` (checkpointed on
    ``data("validation")``), from its file when an earlier run with the same settings made
    it. Returns ``(model in eval mode, validation IoU)``."""
    from synthesis.models.unet import load_model

    path = _model_path(opts, trained_on, seed)
    if path.exists():
        model, meta = load_model(path, device=device)
        logger.info("fidelity: reusing %s", path)
        return model.eval(), float(meta["val_iou"])
    path.parent.mkdir(parents=True, exist_ok=True)
    model, saved = fit_reference(
        *data("train"),
        *data("validation"),
        path=path,
        config=opts.config,
        seed=seed,
        device=device,
        epochs=opts.epochs,
        progress=progress,
        extra={"seed": seed, "trained_on": trained_on},
    )
    return model.eval(), float(saved["val_iou"])


def _real_tiles(
    opts: FidelityOptions,
) -> Callable[[str], tuple[torch.Tensor, torch.Tensor]]:
    """``split -> (images float32 (N, 1, H, W) grey levels, masks bool)`` of the source's
    real tiles (native noise): what the upper-bound U-Net trains on."""

    opened: list[Any] = []  # the source, opened once (opening reads and checks every image)

    def load(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        from synthesis.groundtruth.sources import open_source, stack_items

        if not opened:
            counts = {"train": opts.train, "validation": opts.validation, "test": opts.test}
            opened.append(
                open_source(
                    str(opts.source),
                    opts.config,
                    seed=opts.seed,
                    counts=counts,
                    pixel_sizes=opts.source_pixel_size or None,
                )
            )
        src = opened[0]
        x, m, _ = stack_items(src.load(src.ids(split)))
        return x, m

    return load


def _robustness(split: Counts, reference: Counts, ids: list[str]) -> float | None:
    """Robustness of ``split`` against ``reference`` on ``ids``; None where it is undefined
    (no shared tile, or a reference IoU of 0)."""
    from synthesis.metrics import robustness

    ref = iou(reference, ids)
    return robustness(iou(split, ids), ref) if ids and ref > 0 else None


def _at(curve: dict[Any, Any], level: int) -> Any:
    """A curve's value at ``level`` (keys are ints, or strings once read back from JSON)."""
    return curve.get(level, curve.get(str(level)))


def _spread(stat: dict[str, Any] | None, digits: int = 3) -> str:
    """:func:`spread_cell` of a :func:`mean_sd` record ("—" for None)."""
    return "—" if stat is None else spread_cell(stat.get("mean"), stat.get("sd"), digits)


def _mean(agg: dict[str, Any], key: str) -> float | None:
    """The mean of ``agg[key]`` (a :func:`mean_sd` record), None where there is none."""
    return (agg.get(key) or {}).get("mean")

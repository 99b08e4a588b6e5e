"""Fidelity: does a model's drop on a synthetic split predict its drop on real images
degraded the same way? (docs/definitions.md#fidelity)

For each renderer (``physics``, ``naive``, and ``gan`` when weights are given):

1. build a package of one config from the real masks of a source with that renderer: the
   reference splits, ``snr_*``, ``sib_*``, ``svb_*``, and the real-image splits ``real``,
   ``real_snr_*``, ``real_sib_*``, ``real_svb_*`` (the source's test tiles, never trained on);
2. train the reference U-Net on that renderer's ``train`` split (``validation`` picks the
   epoch);
3. score it, image by image, on its own synthetic splits and on the same real splits;
4. robustness per level = 100 x IoU(level) / IoU(reference condition), always on the same
   tiles: synthetic splits against ``test`` (SNR 8); ``real_snr_K`` against ``real_snr_8``
   on the tiles both keep; ``real_sib_L`` / ``real_svb_L`` against ``real`` (they keep the
   native noise);
5. the gap per family = mean over levels of |robustness_synthetic - robustness_real|.

Also: each model's IoU on the real tiles at native noise and at the reference SNR (does
training on this renderer transfer?), the same U-Net trained on the real ``train`` tiles
(the upper bound), the native-SNR histogram of the real tiles and the residual noise of the
real blur splits.

Everything is resumable: packages resume as any build, and each model is saved under a name
that hashes its settings, so a rerun with the same settings reuses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.assembly import BuildOptions, build
from builder.assembly.options import RENDERERS
from builder.assembly.reference import fit_reference, read_split
from builder.evaluation.scoring import per_image_counts
from builder.package.card import number_cell
from synthesis.metrics import iou_of_counts
from synthesis.normalize import zscore
from synthesis.runtime.device import resolve_device
from synthesis.runtime.errors import InputError, RefusedError
from synthesis.runtime.files import atomic_write_bytes, temporary_name
from synthesis.runtime.progress import ProgressFactory, no_progress

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

__all__ = [
    "FAMILIES",
    "FidelityOptions",
    "fidelity",
    "fidelity_markdown",
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
    (``models/``) and the reports."""

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
    real_model: bool = True
    device: str | None = None
    overwrite: bool = False

    def validate(self) -> None:
        """Raises :class:`InputError` for a source that does not exist or unknown renderers."""
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

    def recipe(self) -> dict[str, Any]:
        """What the results depend on; a rerun in the same ``work`` with another recipe is
        refused unless ``overwrite``."""
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
        }


def fidelity(opts: FidelityOptions, *, progress: ProgressFactory | None = None) -> dict[str, Any]:
    """Run the fidelity comparison; return the results (see :func:`write_fidelity_reports`).

    Raises:
        InputError: bad options (nothing is written).
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
    results: dict[str, Any] = {
        "config": opts.config,
        "source": str(opts.source),
        "recipe": opts.recipe(),
        "device": str(device),
        "renderers": {},
        "skipped": {},
    }
    first_pkg: Path | None = None
    for renderer in opts.renderers:
        if renderer == "gan" and not opts.weights:
            results["skipped"]["gan"] = "no GAN weights given (--weights); none ship"
            logger.info("fidelity: gan skipped (no weights)")
            continue
        pkg = _build_package(opts, renderer, progress)
        model, val_iou = _trained(
            opts,
            renderer,
            lambda split, pkg=pkg: read_split(str(pkg), opts.config, split),
            device,
            progress,
        )
        res = score(pkg, opts.config, model, device=device, progress=progress)
        res["val_iou"] = val_iou
        results["renderers"][renderer] = res
        if first_pkg is None:
            first_pkg = pkg
            results["residual_noise"] = residual_noise(pkg, opts.config)
            results["native_snr"] = res.pop("native_snr")
        else:
            res.pop("native_snr")
        logger.info(
            "fidelity: %s gaps %s", renderer, {f: v["gap"] for f, v in res["families"].items()}
        )
    if opts.real_model and first_pkg is not None:
        model, val_iou = _trained(opts, "real", _real_tiles(opts), device, progress)
        counts = {
            s: per_image_counts(
                str(first_pkg), opts.config, s, model, zscore, device=device, batch_size=16
            )
            for s in ("real", "real_snr_8")
        }
        results["trained_on_real"] = {
            "val_iou": val_iou,
            "iou_real": iou(counts["real"]),
            "iou_real_snr_8": iou(counts["real_snr_8"]),
            "splits": {s: split_scores(c) for s, c in counts.items()},
        }
    return results


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
    says of the real tiles."""
    manifest = json.loads((pkg / "manifest.json").read_text())
    splits = manifest["configs"][config]["splits"]
    names = [s for s in splits if s not in ("train", "validation")]
    bar = (progress or no_progress)(len(names), f"{config} {pkg.name}: scoring", "split")
    counts: dict[str, Counts] = {}
    for s in names:
        counts[s] = per_image_counts(str(pkg), config, s, model, zscore, device=device)
        bar.update(1)
    bar.close()
    return {
        "splits": {s: split_scores(c) for s, c in counts.items()},
        "iou_test": iou(counts["test"]),
        "iou_real": iou(counts["real"]) if "real" in counts else None,
        "iou_real_snr_8": iou(counts["real_snr_8"]) if "real_snr_8" in counts else None,
        "families": curves(counts),
        "skipped_below_target": {
            s: v.get("skipped_below_target", 0)
            for s, v in splits.items()
            if s.startswith("real_snr")
        },
        "native_snr": manifest["configs"][config].get("native_snr"),
    }


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
    """The gap table, the curves and the real tiles' native SNR, as Markdown."""
    real = results.get("trained_on_real")
    lines = [
        f"# Fidelity: {results['config']} from `{results['source']}`",
        "",
        "Robustness = 100 x IoU / IoU at the reference condition, on the same tiles; gap = mean "
        "over levels of |synthetic - real| (docs/definitions.md#fidelity).",
        "",
        "| trained on | IoU test (own renderer) | IoU real, native noise | IoU real, SNR 8 "
        "| x real-trained (SNR 8) | gap SNR | gap SIB | gap SVB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, res in results["renderers"].items():
        rel = (
            f"{res['iou_real_snr_8'] / real['iou_real_snr_8']:.2f}"
            if real and res["iou_real_snr_8"] and real["iou_real_snr_8"]
            else "—"
        )
        cells = [number_cell(res["families"][f]["gap"], 1) for f in FAMILIES]
        lines.append(
            f"| {name} | {number_cell(res['iou_test'])} | {number_cell(res['iou_real'])} "
            f"| {number_cell(res['iou_real_snr_8'])} | {rel} | " + " | ".join(cells) + " |"
        )
    if real:
        lines.append(
            f"| real train tiles | — | {number_cell(real['iou_real'])} | {number_cell(real['iou_real_snr_8'])} "
            "| 1.00 | — | — | — |"
        )
    for name, why in results.get("skipped", {}).items():
        lines += ["", f"{name}: skipped ({why})."]
    lines += ["", "| renderer | family | levels | synthetic | real |", "|---|---|---|---|---|"]
    for name, res in results["renderers"].items():
        for family, data in res["families"].items():
            lv = FAMILIES[family]
            lines.append(
                f"| {name} | {family} | {' '.join(map(str, lv))} "
                f"| {' '.join(number_cell(_at(data['synthetic'], x), 0) for x in lv)} "
                f"| {' '.join(number_cell(_at(data['real'], x), 0) for x in lv)} |"
            )
    shown = ("test", "snr_3", "snr_2", "real_snr_8", "real_snr_3", "real_snr_2", "real")
    if results["renderers"]:
        lines += [
            "",
            "Precision / recall (aggregate over pixels) at the reference conditions and under "
            "noise:",
            "",
            "| renderer | " + " | ".join(f"`{s}`" for s in shown) + " |",
            "|---|" + "---:|" * len(shown),
        ]
        for name, res in results["renderers"].items():
            sp = res["splits"]
            cells = [
                f"{sp[s]['precision']:.2f} / {sp[s]['recall']:.2f}" if s in sp else "—"
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


def plot_curves(results: dict[str, Any], path: Path) -> None:
    """Synthetic and real robustness against level, one row per renderer, one column per
    family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    renderers = list(results["renderers"])
    rows = max(len(renderers), 1)
    fig, axes = plt.subplots(rows, 3, figsize=(11, 3.2 * rows), squeeze=False)
    for row, name in zip(axes, renderers, strict=False):
        fams = results["renderers"][name]["families"]
        for ax, (family, data) in zip(row, fams.items(), strict=True):
            for kind, style in (("synthetic", "o-"), ("real", "s--")):
                pts = sorted((int(k), v) for k, v in data[kind].items())
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=kind)
            if family == "snr":
                ax.invert_xaxis()  # severity grows to the right
            gap = data["gap"]
            ax.set_title(f"{name}: {family}" + (f" (gap {gap:.1f})" if gap is not None else ""))
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
            overwrite=opts.overwrite,
            progress=progress,
        )
    )
    return out


def _model_path(opts: FidelityOptions, trained_on: str) -> Path:
    """Where the U-Net trained on ``trained_on`` lives: the name hashes every setting that
    changes it, so a rerun reuses it and other settings never collide with it."""
    recipe: dict[str, Any] = {
        "config": opts.config,
        "source": str(Path(opts.source).resolve()),
        "trained_on": trained_on,
        "train": opts.train,
        "validation": opts.validation,
        "epochs": opts.epochs,
        "seed": opts.seed,
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


def _trained(
    opts: FidelityOptions,
    trained_on: str,
    data: Callable[[str], tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    progress: ProgressFactory | None,
) -> tuple[torch.nn.Module, float]:
    """The U-Net trained on ``data("train")`` (checkpointed on ``data("validation")``), from
    its file when an earlier run with the same settings made it. Returns ``(model in eval
    mode, validation IoU)``."""
    from synthesis.models.unet import load_model

    path = _model_path(opts, trained_on)
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
        seed=opts.seed,
        device=device,
        epochs=opts.epochs,
        progress=progress,
        extra={"seed": opts.seed, "trained_on": trained_on},
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
            opened.append(open_source(str(opts.source), opts.config, seed=opts.seed, counts=counts))
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


def _at(curve: dict[Any, float], level: int) -> float | None:
    """A curve's value at ``level`` (keys are ints, or strings once read back from JSON)."""
    return curve.get(level, curve.get(str(level)))

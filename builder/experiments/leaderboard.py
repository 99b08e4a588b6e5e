"""``fluorobench-c leaderboard``: the original study's comparison in one command.

Every model of the zoo (:mod:`synthesis.models.zoo`) is trained on a package's ``train``
split with the same recipe and budget (:data:`RECIPES`: optimiser, epochs, batch, loss,
whole images, per-image z-score input), the epoch with the best ``validation`` IoU is kept,
and the model is evaluated on every test-based split (transfer attacks included) and under
white-box attacks on itself (:data:`WHITEBOX`, at the benchmark's budget of 8 grey levels).

Outputs in ``OUT``:

- ``models/<name>.safetensors``: the trained weights, with a header record (architecture,
  preset, training settings, history) and their sha256 in ``leaderboard.json``: an entry is
  re-scored without retraining;
- ``results/<name>.json`` (+ ``.md``, ``-robustness.png``): ``evaluate``'s report per model;
- ``leaderboard.json``, ``leaderboard.md``, ``leaderboard.png``: per model the parameters,
  test IoU, mean robustness per family, white-box robustness at ε = 8, transfer-split
  robustness, and the Spearman rank correlation between corruption and adversarial
  robustness across models.

Resumable model by model: a model whose weights file exists (written atomically) is not
retrained, and one whose results exist is not re-evaluated; settings that differ from those
on disk are refused unless ``overwrite``.

Definitions (docs/definitions.md#leaderboard): corruption robustness = mean of the SNR, SIB
and SVB family means; adversarial robustness = white-box PGD at ε = 8 (IoU / IoU on ``test``
× 100); transfer robustness = mean over the ``fgsm_8``, ``ifgsm_8`` and ``pgd_8`` splits.

Beside IoU, each entry carries the structure metrics (``evaluate``'s defaults): the test
values, the corruption robustness on the structure's headline metric (clDice for ER and
mitochondria, AP for nuclei) and the worst case over the white-box attacks at ε = 8
(FGSM, PGD, SegPGD and the gradient-free Square attack). ``rankings`` orders the converged
models by each criterion, and ``rank_agreement`` gives, per family, Spearman's ρ between
the ranking by IoU robustness and by the headline metric's robustness, and between PGD
alone and the worst case.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from builder.package.card import number_cell
from builder.package.eval_results import METRIC_LABELS, ranked_entries
from synthesis.runtime.errors import InputError, RefusedError
from synthesis.runtime.files import atomic_write_bytes, sha256_file
from synthesis.runtime.progress import ProgressFactory, no_progress

logger = logging.getLogger(__name__)

#: White-box attacks run on every model, at the benchmark's headline budget (grey levels).
WHITEBOX: tuple[tuple[str, float], ...] = (
    ("fgsm", 8.0),
    ("pgd", 8.0),
    ("segpgd", 8.0),
    ("square", 8.0),
)
#: The split of the worst case per image over :data:`WHITEBOX` (``evaluate``).
WORST = "whitebox_worst_8"
#: Families averaged into corruption robustness.
CORRUPTION_FAMILIES: tuple[str, ...] = ("snr", "sib", "svb")
#: A model whose test IoU is below this share of the best one did not learn the task in the
#: budget: its robustness (near 100 for near-constant predictions) is not comparable, so it
#: is ranked last and left out of the correlation.
CONVERGED_SHARE = 0.5
#: Transfer-attack splits averaged into transfer robustness.
TRANSFER_SPLITS: tuple[str, ...] = ("fgsm_8", "ifgsm_8", "pgd_8")
HEADER_KEY = "fluorobench.zoo"


@dataclass(frozen=True)
class Recipe:
    """One training recipe for every model (the budget is the same number of steps)."""

    epochs: int
    batch_size: int
    lr: float
    loss: str = "bce_dice"
    normalize: str = "zscore"


#: ``small``: indicative, about 20 minutes for one config of the quickstart package on a
#: 2-core CPU; ``full``: the original widths and a longer schedule, for a GPU.
RECIPES: dict[str, Recipe] = {
    "small": Recipe(epochs=18, batch_size=4, lr=2e-3),
    "full": Recipe(epochs=100, batch_size=16, lr=1e-3),
}
DEFAULT_MODELS: tuple[str, ...] = (
    "unet",
    "basic_unet",
    "res_unet",
    "attention_unet",
    "segresnet",
    "highresnet",
    "unetr",
    "swin_unetr",
)


@dataclass
class LeaderboardOptions:
    data: str
    config: str
    out: Path
    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    preset: str = "small"
    epochs: int | None = None  # overrides the preset's
    batch_size: int | None = None
    seed: int = 0
    device: str | None = None
    overwrite: bool = False

    def recipe(self) -> Recipe:
        if self.preset not in RECIPES:
            raise InputError(f"--preset must be one of {', '.join(RECIPES)}. Got {self.preset!r}")
        r = RECIPES[self.preset]
        return Recipe(
            epochs=self.epochs or r.epochs,
            batch_size=self.batch_size or r.batch_size,
            lr=r.lr,
            loss=r.loss,
            normalize=r.normalize,
        )

    def settings(self) -> dict[str, Any]:
        """What decides a model's weights (a resumed run must match them)."""
        return {
            "data": str(self.data),
            "config": self.config,
            "preset": self.preset,
            "recipe": asdict(self.recipe()),
            "seed": self.seed,
        }


# --------------------------------------------------------------------------- the run
def leaderboard(opts: LeaderboardOptions, *, progress: ProgressFactory | None = None) -> dict:
    """Train, select and evaluate every model of ``opts.models``; write the leaderboard.

    Raises:
        InputError: an unknown model, preset or config, or a package without the splits.
        RefusedError: results on disk were made with other settings (without ``overwrite``).
        ImportError: MONAI is missing for a MONAI model.
    """
    from synthesis.models.zoo import ZOO
    from synthesis.runtime.device import resolve_device

    unknown = [m for m in opts.models if m not in ZOO]
    if unknown:
        raise InputError(f"unknown model(s) {', '.join(unknown)}; the zoo has {', '.join(ZOO)}")
    if not opts.models:
        raise InputError("--models names no model")
    if any(ZOO[m].library == "monai" for m in opts.models):
        from synthesis.models.zoo import require_monai

        try:
            require_monai()
        except ImportError as exc:  # before anything is trained: one clear line
            raise InputError(str(exc)) from None
    opts.recipe()
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(opts.device)
    bar = (progress or no_progress)(len(opts.models), f"{opts.config} leaderboard", "model")
    entries = []
    splits: dict[str, Any] = {}  # train/validation tensors, read once, when a model trains
    for name in opts.models:
        weights, record, sha = _trained(opts, name, device, progress, splits)
        results = _evaluated(opts, name, weights, record, sha, device, progress)
        entries.append(_entry(name, record, sha, results, out))
        bar.update()
    bar.close()
    best = max(e["test_iou"] for e in entries)
    for e in entries:
        e["converged"] = e["test_iou"] >= CONVERGED_SHARE * best
    board = {
        "config": opts.config,
        "machine": _machine(device),
        "settings": opts.settings(),
        "device": str(device),
        "whitebox": [f"{m}:{e:g}" for m, e in WHITEBOX],
        "models": entries,
        "correlation": correlation(entries),
        **rankings(entries),
    }
    write_leaderboard(out, board)
    return board


def _machine(device: Any) -> str:
    import os
    import platform

    import torch

    where = (
        torch.cuda.get_device_name(device)
        if getattr(device, "type", "cpu") == "cuda"
        else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, no GPU"
    )
    return f"{where}, torch {torch.__version__}"


def _weights_path(opts: LeaderboardOptions, name: str) -> Path:
    return Path(opts.out) / "models" / f"{name}.safetensors"


def _results_path(opts: LeaderboardOptions, name: str) -> Path:
    return Path(opts.out) / "results" / f"{name}.json"


def _read_record(path: Path) -> dict[str, Any]:
    from synthesis.models.weights import read_record

    try:
        return read_record(path, HEADER_KEY, "leaderboard model")
    except ValueError as exc:
        raise RefusedError(str(exc)) from None


def _trained(
    opts: LeaderboardOptions,
    name: str,
    device: Any,
    progress: ProgressFactory | None,
    splits: dict[str, Any],
) -> tuple[Path, dict[str, Any], str]:
    """``(weights file, its record, its sha256)`` of ``name``: read back if a finished file
    matches the settings, else trained and written atomically. ``splits`` caches the
    normalised train/validation tensors across models."""
    from builder.assembly.reference import read_split
    from synthesis.models.training import train_segmenter
    from synthesis.models.weights import atomic_save
    from synthesis.models.zoo import ZOO, build, count_parameters
    from synthesis.normalize import normalize
    from synthesis.rng import derive_seed

    path = _weights_path(opts, name)
    settings = opts.settings()
    if path.exists():
        record = _read_record(path)
        if record["settings"] == settings:
            logger.info("%s: trained weights found (%s), not retraining", name, path)
            return path, record, sha256_file(path)
        if not opts.overwrite:
            raise RefusedError(
                f"{path} was trained with other settings ({record['settings']}); pass "
                "--overwrite to retrain, or choose another --out"
            )
    recipe = opts.recipe()
    seed = derive_seed(opts.seed, "leaderboard", opts.config, name) % (2**31)
    model = build(name, opts.preset, seed=seed)
    if not splits:
        for split in ("train", "validation"):
            x, m = read_split(opts.data, opts.config, split)
            splits[split] = (normalize(x, recipe.normalize), m)
    bar = (progress or no_progress)(recipe.epochs, f"{opts.config} {name}", "epoch")
    result = train_segmenter(
        model,
        *splits["train"],
        *splits["validation"],
        epochs=recipe.epochs,
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        seed=seed,
        device=device,
        loss=recipe.loss,
        init=False,  # the zoo built it from the seed
        progress=lambda epoch, rec: bar.update(),
    )
    bar.close()
    record = {
        "name": name,
        "family": ZOO[name].family,
        "library": ZOO[name].library,
        "kwargs": ZOO[name].kwargs(opts.preset),
        "parameters": count_parameters(model),
        "settings": settings,
        "seed": seed,
        "training": result.settings,
        "history": result.history,
        "best_val_iou": result.best_val_iou,
        "best_epoch": result.best_epoch,
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    header = {HEADER_KEY: json.dumps(record, sort_keys=True, default=str)}
    sha = atomic_save(tensors, path, header)
    logger.info("%s: trained, validation IoU %.4f, saved %s", name, result.best_val_iou, path)
    return path, record, sha


def load_zoo_model(path: Path, device: Any = "cpu", record: dict[str, Any] | None = None) -> Any:
    """A leaderboard model from its weights file (architecture from the header record,
    read from the file unless given)."""
    from safetensors.torch import load_file

    from synthesis.models.zoo import build

    record = record if record is not None else _read_record(path)
    model = build(record["name"], record["settings"]["preset"], seed=record["seed"])
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.to(device).eval()


def _evaluated(
    opts: LeaderboardOptions,
    name: str,
    weights: Path,
    record: dict[str, Any],
    sha: str,
    device: Any,
    progress: ProgressFactory | None,
) -> dict[str, Any]:
    from builder.evaluation import evaluate, write_reports
    from builder.evaluation.model_loading import ModelInfo

    path = _results_path(opts, name)
    if path.exists():
        try:
            results = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            results = None
        if (
            results is not None
            and results.get("model", {}).get("sha256") == sha
            and WORST in results.get("splits", {})  # made with every metric and attack
        ):
            logger.info("%s: results found (%s), not re-evaluating", name, path)
            return results
    model = load_zoo_model(weights, device, record)
    info = ModelInfo(model, f"{name} ({record['family']})", sha)
    results = evaluate(
        opts.data,
        opts.config,
        model=info,
        attacks=list(WHITEBOX),
        normalize=opts.recipe().normalize,
        device=str(device),
        batch_size=8,
        progress=progress,
    )
    write_reports(path.parent, results, stem=name)
    return results


# --------------------------------------------------------------------------- summary
def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def _entry(
    name: str, record: dict[str, Any], sha: str, results: dict[str, Any], out: Path
) -> dict[str, Any]:
    splits = results["splits"]
    families = results.get("families", {})

    def rob(split: str) -> float | None:
        r = splits.get(split)
        return None if r is None else r.get("robustness")

    per_family = {f: v["mean_robustness"] for f, v in families.items()}
    return {
        "model": name,
        "family": record["family"],
        "library": record["library"],
        "parameters": record["parameters"],
        "weights": f"models/{name}.safetensors",
        "sha256": sha,
        "best_val_iou": record["best_val_iou"],
        "test_iou": splits["test"]["iou"],
        "robustness": per_family,
        "corruption_robustness": _mean([per_family.get(f) for f in CORRUPTION_FAMILIES]),
        "whitebox_robustness": {f"{m}_{e:g}": rob(f"whitebox_{m}_{e:g}") for m, e in WHITEBOX},
        "adversarial_robustness": rob("whitebox_pgd_8"),
        "transfer_robustness": _mean([rob(s) for s in TRANSFER_SPLITS]),
        "results": (out / "results" / f"{name}.json").relative_to(out).as_posix(),
        **_structure_entry(results),
    }


def _structure_entry(results: dict[str, Any]) -> dict[str, Any]:
    """An entry's structure-metric keys (None where ``results`` has no structure metrics)."""
    info = results.get("metrics")
    if not info:
        return {"headline_metric": None, "test_metrics": {}, "metric_robustness": {}}
    headline = info["headline"]
    test = results["splits"]["test"]
    per_family = {
        f: (v.get("metrics") or {}).get(headline, {}).get("mean_robustness")
        for f, v in results.get("families", {}).items()
        if v.get("metrics")
    }
    worst = results["splits"].get(WORST) or {}
    return {
        "headline_metric": headline,
        "test_metrics": {m: test.get(m) for m in info["reported"]},
        "metric_robustness": per_family,
        "corruption_metric_robustness": _mean([per_family.get(f) for f in CORRUPTION_FAMILIES]),
        "worst_case_robustness": worst.get("robustness"),
        "worst_case_iou_mean": worst.get("iou_mean"),
        "worst_counts": worst.get("worst_counts"),
        "gradient_masking": worst.get("gradient_masking"),
    }


#: The leaderboard's rankings: name -> (entry key, what it ranks by).
RANKINGS: dict[str, tuple[str, str]] = {
    "iou": ("corruption_robustness", "corruption robustness on IoU"),
    "headline": ("corruption_metric_robustness", "corruption robustness on clDice / AP"),
    "pgd": ("adversarial_robustness", "white-box PGD ε8 robustness"),
    "worst_case": ("worst_case_robustness", "adversarial (worst of N) ε8 robustness"),
}


def rankings(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """``rankings``: per criterion of :data:`RANKINGS` the converged models, best first
    (models without the value are left out); ``rank_agreement``: per family Spearman's ρ
    between the models' IoU robustness and their headline-metric robustness (how far the
    ranking moves), and ``pgd_vs_worst_case``."""
    ok = [e for e in entries if e.get("converged", True)]
    out: dict[str, list[str]] = {}
    for name, (key, _) in RANKINGS.items():
        have = [e for e in ok if e.get(key) is not None]
        out[name] = [e["model"] for e in sorted(have, key=lambda e: -e[key])]
    agreement: dict[str, Any] = {}
    families = sorted({f for e in ok for f in e.get("metric_robustness") or {}})
    for f in families:
        pairs = [
            (e["robustness"].get(f), e["metric_robustness"].get(f))
            for e in ok
            if e["robustness"].get(f) is not None and e["metric_robustness"].get(f) is not None
        ]
        agreement[f] = spearman([p[0] for p in pairs], [p[1] for p in pairs])
    pairs = [
        (e["adversarial_robustness"], e["worst_case_robustness"])
        for e in ok
        if e["adversarial_robustness"] is not None and e.get("worst_case_robustness") is not None
    ]
    agreement["pgd_vs_worst_case"] = spearman([p[0] for p in pairs], [p[1] for p in pairs])
    return {"rankings": out, "rank_agreement": agreement}


def ranks(values: list[float]) -> list[float]:
    """Ranks 1..n, ties sharing their mean rank (as Spearman's coefficient needs)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation (Pearson on tie-averaged ranks); None below 3 pairs or
    with a constant side."""
    if len(x) != len(y) or len(x) < 3:
        return None
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    return None if sxx == 0 or syy == 0 else sxy / math.sqrt(sxx * syy)


def correlation(entries: list[dict[str, Any]]) -> dict[str, Any]:
    pairs = [
        (e["corruption_robustness"], e["adversarial_robustness"])
        for e in entries
        if e.get("converged", True)
        and e["corruption_robustness"] is not None
        and e["adversarial_robustness"] is not None
    ]
    rho = spearman([p[0] for p in pairs], [p[1] for p in pairs])
    return {
        "x": "corruption_robustness",
        "y": "adversarial_robustness",
        "models": len(pairs),
        "spearman": rho,
    }


def leaderboard_markdown(board: dict[str, Any]) -> str:
    families = sorted({f for e in board["models"] for f in e["robustness"]})
    shown = [f for f in ("snr", "sib", "svb", "fgsm", "ifgsm", "pgd") if f in families]
    head = (
        "| rank | model | family | parameters | test IoU | "
        + " | ".join(shown)
        + " | corruption | white-box PGD ε8 | transfer ε8 |"
    )
    lines = [
        f"# FluoroBench-C leaderboard: {board['config']}",
        "",
        f"Preset `{board['settings']['preset']}`, recipe {json.dumps(board['settings']['recipe'], sort_keys=True)}, "
        f"seed {board['settings']['seed']}, data `{board['settings']['data']}`, "
        f"machine: {board.get('machine', board['device'])}. "
        "Ranked by corruption robustness (mean of the SNR, SIB and SVB family means; "
        "robustness = IoU / IoU on `test` × 100); a model whose test IoU is below half the "
        "best did not learn in the budget and is listed last, unranked.",
        "",
        head,
        "|---:|---|---|---:|---:|" + "---:|" * len(shown) + "---:|---:|---:|",
    ]
    ranked = ranked_entries(board)
    for i, e in enumerate(ranked, start=1):
        rank = str(i) if e.get("converged", True) else "—"
        note = "" if e.get("converged", True) else " (did not learn: test IoU < half the best)"
        lines.append(
            f"| {rank} | `{e['model']}`{note} | {e['family']} | {e['parameters']:,} | "
            f"{number_cell(e['test_iou'], 3)} | "
            + " | ".join(number_cell(e["robustness"].get(f), 1) for f in shown)
            + f" | {number_cell(e['corruption_robustness'], 1)} | {number_cell(e['adversarial_robustness'], 1)} | "
            f"{number_cell(e['transfer_robustness'], 1)} |"
        )
    c = board["correlation"]
    lines += [
        "",
        f"Spearman rank correlation between corruption and adversarial (white-box PGD ε8) "
        f"robustness over {c['models']} models: **{number_cell(c['spearman'], 2)}**.",
        "",
        "White-box robustness at ε = 8 per attack:",
        "",
        "| model | " + " | ".join(board["whitebox"]) + " |",
        "|---|" + "---:|" * len(board["whitebox"]),
    ]
    for e in ranked:
        lines.append(
            f"| `{e['model']}` | "
            + " | ".join(number_cell(v, 1) for v in e["whitebox_robustness"].values())
            + " |"
        )
    lines += _rankings_markdown(board, ranked)
    lines += ["", "| model | weights | sha256 |", "|---|---|---|"]
    lines += [f"| `{e['model']}` | `{e['weights']}` | `{e['sha256']}` |" for e in ranked]
    return "\n".join(lines) + "\n"


def _rankings_markdown(board: dict[str, Any], ranked: list[dict[str, Any]]) -> list[str]:
    """The structure metrics per model and the rank of each model by each criterion."""
    if not board.get("rankings") or not any(e.get("headline_metric") for e in ranked):
        return []
    headline = next(e["headline_metric"] for e in ranked if e.get("headline_metric"))
    label = {"cldice": "clDice", "ap": "AP"}.get(headline, headline)
    have = next(e["test_metrics"] for e in ranked if e.get("test_metrics"))
    reported = [m for m in METRIC_LABELS if m in have]  # a fixed order (JSON sorts keys)
    lines = [
        "",
        f"Structure metrics on `test`, corruption robustness on {label} (mean of the SNR, SIB "
        "and SVB family means of metric / metric on `test` × 100) and the worst case per "
        "image over the white-box attacks at ε = 8 (robustness of its IoU; which attack was "
        "the worst how often; gradient masking suspected where the gradient-free attack "
        "beats every gradient attack):",
        "",
        "| model | "
        + " | ".join(METRIC_LABELS.get(m, m) for m in reported)
        + f" | corruption ({label}) | worst of N ε8 | worst on (images) | gradient masking |",
        "|---|" + "---:|" * len(reported) + "---:|---:|---|---|",
    ]
    for e in ranked:
        counts = ", ".join(f"{m} {c}" for m, c in (e.get("worst_counts") or {}).items())
        mask = {True: "suspected", False: "no", None: "—"}[e.get("gradient_masking")]
        lines.append(
            f"| `{e['model']}` | "
            + " | ".join(
                number_cell((e.get("test_metrics") or {}).get(m), 2 if m == "hd95" else 3)
                for m in reported
            )
            + f" | {number_cell(e.get('corruption_metric_robustness'), 1)} "
            f"| {number_cell(e.get('worst_case_robustness'), 1)} | {counts or '—'} | {mask} |"
        )
    names = [e["model"] for e in ranked if e.get("converged", True)]
    pos = {k: {m: i + 1 for i, m in enumerate(v)} for k, v in board["rankings"].items()}
    lines += [
        "",
        "Rank of each model by each criterion (1 = most robust):",
        "",
        "| model | " + " | ".join(RANKINGS[k][1] for k in RANKINGS) + " |",
        "|---|" + "---:|" * len(RANKINGS),
    ]
    for m in names:
        lines.append(
            f"| `{m}` | " + " | ".join(str(pos.get(k, {}).get(m, "—")) for k in RANKINGS) + " |"
        )
    agree = board.get("rank_agreement") or {}
    fams = ", ".join(
        f"{f} {number_cell(v, 2)}" for f, v in agree.items() if f != "pgd_vs_worst_case"
    )
    lines += [
        "",
        f"Spearman's ρ between the ranking by IoU robustness and by {label} robustness, per "
        f"family: {fams or '—'}; between white-box PGD and the worst case: "
        f"{number_cell(agree.get('pgd_vs_worst_case'), 2)}.",
    ]
    return lines


def plot_leaderboard(board: dict[str, Any], path: Path) -> dict[str, Any]:
    """Draw ``leaderboard.png``; return the values it plotted (bars per series, scatter)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from synthesis.runtime.files import temporary_name

    models = [e["model"] for e in board["models"]]
    families = [
        f
        for f in ("snr", "sib", "svb", "fgsm", "ifgsm", "pgd")
        if any(f in e["robustness"] for e in board["models"])
    ]
    plotted: dict[str, Any] = {"models": models, "bars": {}, "scatter": []}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.8 / max(1, len(families) + 1)
    for k, f in enumerate([*families, "whitebox PGD ε8"]):
        vals = [
            (e["adversarial_robustness"] if f.startswith("whitebox") else e["robustness"].get(f))
            or 0.0
            for e in board["models"]
        ]
        ax1.bar([i + k * width for i in range(len(models))], vals, width, label=f)
        plotted["bars"][f] = vals
    ax1.set_xticks(
        [i + width * len(families) / 2 for i in range(len(models))], models, rotation=30, ha="right"
    )
    ax1.set_ylabel("robustness (IoU / IoU on test × 100)")
    ax1.set_title(f"{board['config']}: robustness per family")
    ax1.legend(fontsize=7, ncol=2)
    xs = [e["corruption_robustness"] for e in board["models"]]
    ys = [e["adversarial_robustness"] for e in board["models"]]
    ax2.scatter([x or 0 for x in xs], [y or 0 for y in ys])
    plotted["scatter"] = list(zip(xs, ys, strict=True))
    for e, x, y in zip(board["models"], xs, ys, strict=True):
        ax2.annotate(
            e["model"], (x or 0, y or 0), fontsize=8, xytext=(3, 3), textcoords="offset points"
        )
    rho = board["correlation"]["spearman"]
    ax2.set_xlabel("corruption robustness (mean of SNR, SIB, SVB)")
    ax2.set_ylabel("white-box PGD ε8 robustness")
    ax2.set_title(f"Spearman ρ = {number_cell(rho, 2)} ({board['correlation']['models']} models)")
    fig.tight_layout()
    tmp = temporary_name(path)
    fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return plotted


def write_leaderboard(out: Path, board: dict[str, Any]) -> None:
    atomic_write_bytes(
        out / "leaderboard.json", (json.dumps(board, indent=2, sort_keys=True) + "\n").encode()
    )
    atomic_write_bytes(out / "leaderboard.md", leaderboard_markdown(board).encode())
    plot_leaderboard(board, out / "leaderboard.png")

"""``fluorobench-c evaluate``: stream a benchmark into a model and report its robustness.

Per split: IoU and Dice (aggregate over all pixels, and mean per image), and robustness =
IoU / IoU on ``test`` x 100 (``test`` is the reference condition, SNR 8). Per family: the
mean robustness of its splits. White-box attacks on the evaluated model itself run on the
fly on the ``test`` images (``--attacks pgd:8 segpgd:8``). Splits are streamed: nothing is
prepared that is not evaluated.

Writes ``results.json``, ``results.md`` (a table) and ``robustness.png`` (IoU against
severity, one curve per family) into ``--out``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.plan import CONFIGS, SPLITS

if TYPE_CHECKING:
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

NORMALIZATIONS = ("zscore", "minmax", "none")
WHITEBOX_METHODS = ("fgsm", "ifgsm", "pgd", "segpgd", "cospgd")


class ModelSpecError(ValueError):
    """A --model that cannot be loaded or does not fit the data."""


@dataclass(frozen=True)
class ModelInfo:
    model: nn.Module
    description: str
    sha256: str | None


def _sha256(path: Path) -> str:
    from builder.shards import sha256_file

    return sha256_file(path)


def load_model_spec(spec: str | None, data: str, config: str, device: torch.device) -> ModelInfo:
    """Load ``--model``: None (the package's reference U-Net), a ``.safetensors`` file saved by
    :func:`synthesis.unet.save_model`, a TorchScript file, or ``path/module.py:factory``.

    Raises:
        ModelSpecError: a missing file, a bad ``module.py:factory`` or a factory that does not
            return an ``nn.Module``.
    """
    import torch
    from torch import nn

    from synthesis.unet import load_model

    if spec is None or spec == "reference":
        rel = f"models/{config}-unet.safetensors"
        if Path(data).is_dir():
            path = Path(data) / rel
            if not path.exists():
                raise ModelSpecError(
                    f"{path}: the package has no reference model (build it with attack splits)"
                )
        else:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(data, rel, repo_type="dataset"))
        model, _ = load_model(path, device=device)
        return ModelInfo(model, f"reference U-Net ({rel})", _sha256(path))
    if ":" in spec and spec.split(":", 1)[0].endswith(".py"):
        file, factory_name = spec.split(":", 1)
        path = Path(file)
        if not path.is_file():
            raise ModelSpecError(f"--model {spec}: {path} does not exist")
        mod_spec = importlib.util.spec_from_file_location(f"_fluorobench_user_{path.stem}", path)
        if mod_spec is None or mod_spec.loader is None:
            raise ModelSpecError(f"--model {spec}: {path} is not an importable Python file")
        module = importlib.util.module_from_spec(mod_spec)
        try:
            mod_spec.loader.exec_module(module)
        except Exception as exc:  # the user's code: report whatever it raised
            raise ModelSpecError(f"--model {spec}: importing {path} failed: {exc!r}") from exc
        factory = getattr(module, factory_name, None)
        if not callable(factory):
            raise ModelSpecError(f"--model {spec}: {path} has no callable {factory_name!r}")
        model = factory()
        if not isinstance(model, nn.Module):
            raise ModelSpecError(
                f"--model {spec}: {factory_name}() must return a torch.nn.Module. Got {type(model).__name__}"
            )
        return ModelInfo(model.to(device).eval(), spec, _sha256(path))
    path = Path(spec)
    if not path.is_file():
        raise ModelSpecError(
            f"--model {spec}: no such file (expected a .safetensors or TorchScript file, or module.py:factory)"
        )
    if path.suffix == ".safetensors":
        model, _ = load_model(path, device=device)
        return ModelInfo(model, path.name, _sha256(path))
    try:
        model = torch.jit.load(str(path), map_location=device)
    except Exception as exc:  # torch raises RuntimeError or ValueError for non-TorchScript files
        raise ModelSpecError(f"--model {spec}: not a TorchScript file ({exc})") from exc
    return ModelInfo(model.eval(), path.name, _sha256(path))


def make_preprocess(how: str) -> Callable[[torch.Tensor], torch.Tensor]:
    from fluorobench_c import _normalize

    if how not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}. Got {how!r}")
    return lambda x: _normalize(x, how)


def parse_attacks(items: list[str] | None) -> list[tuple[str, float]]:
    """``["pgd:8", "segpgd:4"]`` -> ``[("pgd", 8.0), ("segpgd", 4.0)]``."""
    out = []
    for item in items or []:
        method, _, eps = item.partition(":")
        if method not in WHITEBOX_METHODS or not eps:
            raise ValueError(
                f"--attacks takes METHOD:EPS with METHOD in {', '.join(WHITEBOX_METHODS)}. Got {item!r}"
            )
        try:
            value = float(eps)
        except ValueError:
            raise ValueError(
                f"--attacks {item}: EPS must be a number of grey levels. Got {eps!r}"
            ) from None
        if not value > 0:
            raise ValueError(f"--attacks {item}: EPS must be > 0. Got {value}")
        out.append((method, value))
    return out


def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    import torch

    from synthesis.metrics import check_logits, logits_to_mask

    with torch.no_grad():
        logits = model(x)
    try:
        check_logits(logits, x)
    except (TypeError, ValueError) as exc:
        raise ModelSpecError(
            f"the model's output does not fit: expected (B, 1 or 2, H, W) logits for input "
            f"{tuple(x.shape)}. Got {exc}"
        ) from exc
    return logits_to_mask(logits)


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
) -> dict[str, float | int]:
    """Scores of one split (streamed), optionally under a white-box attack on ``model``."""
    import torch

    import fluorobench_c
    from synthesis.metrics import SegmentationScores
    from synthesis.rng import derive_seed

    ds = fluorobench_c.load(data, config, split)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, collate_fn=fluorobench_c.collate
    )
    scores = SegmentationScores()
    for batch in loader:
        image = batch["image"].to(device)
        mask = batch["mask"].to(device) != 0
        if attack is not None:
            from synthesis.attacks import attack as run_attack

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
        scores.update(_predict(model, preprocess(image)).cpu(), mask.cpu())
        if progress:
            progress(len(batch["id"]))
    return scores.compute()


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


def write_reports(out: Path, results: dict[str, Any], *, stem: str | None = None) -> None:
    """``results.json``, ``results.md`` and ``robustness.png`` in ``out`` (with ``stem``:
    ``<stem>.json``, ``<stem>.md`` and ``<stem>-robustness.png``)."""
    from builder.shards import atomic_write_bytes

    out.mkdir(parents=True, exist_ok=True)
    base = stem or "results"
    data = (json.dumps(results, indent=2, sort_keys=True) + "\n").encode()
    atomic_write_bytes(out / f"{base}.json", data)
    atomic_write_bytes(out / f"{base}.md", results_markdown(results).encode())
    plot_robustness(results, out / (f"{stem}-robustness.png" if stem else "robustness.png"))


def results_markdown(results: dict[str, Any]) -> str:
    lines = [
        f"# {results['config']}: {results['model']['description']}",
        "",
        "| split | family | level | images | IoU | Dice | IoU (mean/img) | robustness |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for split, r in results["splits"].items():
        rob = "—" if r.get("robustness") is None else f"{r['robustness']:.1f}"
        level = "" if r["level"] is None or math.isnan(r["level"]) else f"{r['level']:g}"
        lines.append(
            f"| `{split}` | {r['family']} | {level} | {r['images']} | {r['iou']:.3f} | {r['dice']:.3f} "
            f"| {r['iou_mean']:.3f} | {rob} |"
        )
    if results["families"]:
        lines += ["", "| family | mean robustness |", "|---|---:|"]
        lines += [f"| {f} | {v['mean_robustness']:.1f} |" for f, v in results["families"].items()]
    return "\n".join(lines) + "\n"


def plot_robustness(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {
        "noise (SNR)": ["snr"],
        "blur (level)": ["sib", "svb"],
        "attacks (ε, grey levels)": [],
    }
    curves: dict[str, list[tuple[float, float]]] = {}
    for r in results["splits"].values():
        if r["family"] in ("reference", "clean", "real", "other"):
            continue
        curves.setdefault(r["family"], []).append((r["level"], r["iou"]))
    panels["attacks (ε, grey levels)"] = [f for f in curves if f not in ("snr", "sib", "svb")]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=True)
    ref = results["splits"].get("test", {}).get("iou")
    for ax, (title, fams) in zip(axes, panels.items(), strict=True):
        for f in fams:
            pts = sorted(curves.get(f, []))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f)
        if ref is not None:
            ax.axhline(ref, color="grey", ls="--", lw=1, label="test (SNR 8)")
        if title.startswith("attacks"):
            ax.set_xscale("log", base=2)
        if title.startswith("noise"):
            ax.invert_xaxis()  # severity grows to the right
        ax.set_title(title)
        ax.set_xlabel("severity")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("IoU")
    fig.suptitle(f"{results['config']}: {results['model']['description']}", fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)


def available_splits(data: str, config: str) -> list[str]:
    """Split names of a package (local folder or Hub repo), in the package's order."""
    if Path(data).is_dir():
        manifest = json.loads((Path(data) / "manifest.json").read_text())
    else:
        from huggingface_hub import hf_hub_download

        manifest = json.loads(
            Path(hf_hub_download(data, "manifest.json", repo_type="dataset")).read_text()
        )
    if config not in manifest["configs"]:
        raise ValueError(
            f"{data} has no config {config!r}; it has {', '.join(manifest['configs'])}"
        )
    return list(manifest["configs"][config]["splits"])


def evaluate(
    data: str,
    config: str,
    *,
    model: str | None = None,
    splits: list[str] | None = None,
    attacks: list[tuple[str, float]] | None = None,
    normalize: str = "zscore",
    device: str | None = None,
    batch_size: int = 16,
    progress: Callable[[int, str], Any] | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``splits`` of a package; return the results dict."""
    import torch

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    have = available_splits(data, config)
    wanted = splits or [s for s in have if s not in ("train", "validation")]
    unknown = [s for s in wanted if s not in have]
    if unknown:
        raise ValueError(
            f"{data} config {config} has no split(s) {', '.join(unknown)}; it has {', '.join(have)}"
        )
    if "test" not in wanted:
        wanted = ["test", *wanted]  # robustness needs the reference IoU
    info = load_model_spec(model, data, config, dev)
    preprocess = make_preprocess(normalize)
    per_split: dict[str, dict[str, Any]] = {}
    jobs: list[tuple[str, str, tuple[str, float] | None]] = [(s, s, None) for s in wanted]
    jobs += [(f"whitebox_{m}_{e:g}", "test", (m, e)) for m, e in attacks or []]
    for name, split, attack in jobs:
        bar = progress(0, f"{config} {name}") if progress else None
        per_split[name] = evaluate_split(
            data,
            config,
            split,
            info.model,
            preprocess,
            device=dev,
            batch_size=batch_size,
            attack=attack,
            progress=bar.update if bar is not None else None,
        )
        if bar is not None:
            bar.close()
        logger.info("%s %s: IoU %.4f", config, name, per_split[name]["iou"])
    families = summarise(per_split)
    return {
        "config": config,
        "data": str(data),
        "model": {"description": info.description, "sha256": info.sha256, "normalize": normalize},
        "splits": per_split,
        "families": families,
    }


# --------------------------------------------------------------------------- CLI
def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="stream a benchmark into a model; IoU, Dice, robustness")
    p.add_argument("--data", required=True, help="package folder or Hub repo id")
    p.add_argument("--config", required=True, choices=list(CONFIGS))
    p.add_argument(
        "--model",
        default=None,
        help="TorchScript file, .safetensors U-Net, or module.py:factory (default: the package's reference U-Net)",
    )
    p.add_argument(
        "--splits", nargs="+", default=None, help="default: every split but train/validation"
    )
    p.add_argument(
        "--attacks",
        nargs="+",
        default=None,
        metavar="METHOD:EPS",
        help="white-box attacks on the model",
    )
    p.add_argument(
        "--normalize",
        default="zscore",
        choices=list(NORMALIZATIONS),
        help="model input (default: per-image z-score)",
    )
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder for results.json, results.md, robustness.png",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from builder.cli import UsageError, _progress

    try:
        attacks = parse_attacks(args.attacks)
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1. Got {args.batch_size}")
        results = evaluate(
            args.data,
            args.config,
            model=args.model,
            splits=args.splits,
            attacks=attacks,
            normalize=args.normalize,
            device=args.device,
            batch_size=args.batch_size,
            progress=lambda total, desc: _progress(None, desc),
        )
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None
    write_reports(args.out, results)
    print(results_markdown(results))
    print(f"results written to {args.out}")
    return 0

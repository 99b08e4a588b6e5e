"""Fidelity: does a model's drop on a synthetic split predict its drop on real images
degraded the same way?

For each renderer (physics, naive = mask + blur, and the GAN when weights are given):

1. build a nucleus package from the real masks of ``--source`` (BBBC038 by default) with that
   renderer: the reference splits, ``snr_*``, ``sib_*``, ``svb_*``, and the real-image splits
   ``real``, ``real_snr_*``, ``real_sib_*``, ``real_svb_*`` (the source's test tiles, never
   trained on);
2. train the reference U-Net on that renderer's ``train`` split (``validation`` picks the
   epoch);
3. score it on its own renderer's synthetic splits and on the same real splits, per tile;
4. robustness per level = 100 x IoU(level) / IoU(reference condition), always on the same
   tiles: the synthetic splits against ``test`` (SNR 8); ``real_snr_K`` against
   ``real_snr_8`` (the real tiles at the reference SNR, on the tiles both keep: a
   ``real_snr`` split keeps only the tiles whose own noise leaves room for its SNR);
   ``real_sib_L`` / ``real_svb_L`` against ``real`` (they keep the native noise);
5. the gap per family = mean over levels of |robustness_synthetic - robustness_real|.

Also reported: each model's IoU on the real tiles at the reference condition (does training
on this renderer transfer?), the native-SNR histogram of the real tiles, the residual noise
change of the real blur splits, and a plot of both robustness curves per family and renderer.

    python benchmarks/fidelity.py [--train 160 --validation 20 --epochs 15] [--json]
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import _common
import numpy as np
import torch

from builder.build import BuildOptions, build
from builder.build.reference import fit_reference, read_split
from builder.evaluation.models import predict
from synthesis.models.unet import load_model
from synthesis.normalize import zscore

BBBC038 = _common.ROOT.parent / "shared" / "data" / "bbbc038-fluorescence" / "stage1_train"
SNR_LEVELS = (1, 2, 3, 4, 5)
BLUR_LEVELS = (1, 2, 3, 4, 5)
FAMILIES = {"snr": SNR_LEVELS, "sib": BLUR_LEVELS, "svb": BLUR_LEVELS}
SPLIT_FAMILIES = ["reference", "snr", "sib", "svb", "real", "real_snr", "real_sib", "real_svb"]
PLOT = _common.ROOT / "docs" / "images" / "fidelity_nucleus.png"


def build_package(args, renderer: str, out: Path) -> Path:
    opts = BuildOptions(
        out=out,
        configs=["nucleus"],
        source=str(args.source),
        splits=SPLIT_FAMILIES,
        counts={"train": args.train, "validation": args.validation, "test": args.test},
        seed=args.seed,
        device="cpu",
        renderer=renderer,
        weights=args.weights if renderer == "gan" else None,
    )
    build(opts)
    return out


def per_tile_counts(pkg: Path, split: str, model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """id -> (intersection, union) of the model's foreground on one split."""
    import fluorobench_c

    loader = torch.utils.data.DataLoader(
        fluorobench_c.load(str(pkg), "nucleus", split),
        batch_size=16,
        collate_fn=fluorobench_c.collate,
    )
    out = {}
    for batch in loader:
        pred = predict(model, zscore(batch["image"]))[:, 0]
        mask = batch["mask"][:, 0] != 0
        inter = (pred & mask).flatten(1).sum(1).tolist()
        union = (pred | mask).flatten(1).sum(1).tolist()
        out.update(zip(batch["id"], zip(inter, union, strict=True), strict=True))
    return out


def iou(counts: dict[str, tuple[int, int]], ids: list[str] | None = None) -> float:
    keys = list(counts) if ids is None else ids
    inter = sum(counts[k][0] for k in keys)
    union = sum(counts[k][1] for k in keys)
    return inter / union if union else 1.0


def score(pkg: Path, model: torch.nn.Module) -> dict:
    manifest = json.loads((pkg / "manifest.json").read_text())
    splits = manifest["configs"]["nucleus"]["splits"]
    counts = {s: per_tile_counts(pkg, s, model) for s in splits if s not in ("train", "validation")}
    curves: dict[str, dict[str, dict[int, float]]] = {}
    for family, levels in FAMILIES.items():
        syn, real = {}, {}
        for lv in levels:
            if f"{family}_{lv}" in counts:
                syn[lv] = 100 * iou(counts[f"{family}_{lv}"]) / iou(counts["test"])
            name = f"real_{family}_{lv}"
            ref = "real_snr_8" if family == "snr" else "real"
            if name in counts and ref in counts:  # both on the tiles the two splits share
                ids = [i for i in counts[name] if i in counts[ref]]
                real[lv] = 100 * iou(counts[name], ids) / iou(counts[ref], ids)
        both = sorted(set(syn) & set(real))
        gap = float(np.mean([abs(syn[lv] - real[lv]) for lv in both])) if both else None
        curves[family] = {"synthetic": syn, "real": real, "gap": gap}
    return {
        "iou_test": iou(counts["test"]),
        "iou_real": iou(counts["real"]),
        "iou_real_snr_8": iou(counts["real_snr_8"]) if "real_snr_8" in counts else None,
        "families": curves,
        "skipped_below_target": {
            s: v.get("skipped_below_target", 0)
            for s, v in splits.items()
            if s.startswith("real_snr")
        },
        "native_snr": manifest["configs"]["nucleus"].get("native_snr"),
    }


def real_tiles(source: Path, split: str, counts: dict[str, int], seed: int):
    """(images float32 (N, 1, H, W) grey levels, masks bool) of a source's real tiles."""
    from synthesis.groundtruth.sources import open_source

    src = open_source(str(source), "nucleus", seed=seed, counts=counts)
    items = src.load(src.ids(split))
    x = torch.from_numpy(np.stack([it.image.astype(np.float32) for it in items]))[:, None]
    m = torch.from_numpy(np.stack([np.asarray(it.mask) != 0 for it in items]))[:, None]
    return x, m


def train_on_real(args) -> tuple[torch.nn.Module, float]:
    """The upper bound: the same U-Net trained on the real ``train`` tiles (native noise),
    checkpointed on the real ``validation`` tiles."""
    counts = {"train": args.train, "validation": args.validation, "test": args.test}
    return trained(
        args,
        args.work / f"real-unet-{args.epochs}ep.safetensors",
        lambda split: real_tiles(args.source, split, counts, args.seed),
    )


def trained(args, path: Path, data) -> tuple[torch.nn.Module, float]:
    """The U-Net at ``path`` if an earlier run with the same settings trained it, else
    trained now on ``data("train")``, checkpointed on ``data("validation")``. Returns
    ``(model in eval mode, validation IoU)``."""
    if path.exists():
        model, meta = load_model(path)
        return model.eval(), meta["val_iou"]
    model, saved = fit_reference(
        *data("train"),
        *data("validation"),
        path=path,
        config="nucleus",
        seed=args.seed,
        device="cpu",
        epochs=args.epochs,
    )
    return model.eval(), saved["val_iou"]


def residual_noise(pkg: Path) -> dict[str, float]:
    """Median, over tiles, of the blind noise fit of each real blur split at the tile's
    foreground mean, relative to the native fit: 1 = the native noise level restored."""
    import fluorobench_c
    from synthesis.corruptions.real import estimate_noise

    out = {}
    for family in ("sib", "svb"):
        for lv in BLUR_LEVELS:
            ratios = []
            for row in fluorobench_c.load(str(pkg), "nucleus", f"real_{family}_{lv}"):
                x = torch.from_numpy(np.asarray(row["image"], dtype=np.float64))[None, None]
                m = torch.from_numpy(np.asarray(row["mask"]) != 0)[None, None]
                fit = estimate_noise(x, m)
                r = row["params"]["real"]
                mu = torch.tensor([float(x[m].mean())], dtype=torch.float64)
                native = max(r["noise_a"] * float(mu) + r["noise_b"], 1 / 12)
                ratios.append(float(fit.variance(mu)[0]) / native)
            out[f"real_{family}_{lv}"] = float(np.median(ratios))
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    renderers = list(results["renderers"])
    fig, axes = plt.subplots(len(renderers), 3, figsize=(11, 3.2 * len(renderers)), squeeze=False)
    for row, name in zip(axes, renderers, strict=True):
        fams = results["renderers"][name]["families"]
        for ax, (family, data) in zip(row, fams.items(), strict=True):
            for kind, style in (("synthetic", "o-"), ("real", "s--")):
                pts = sorted((int(k), v) for k, v in data[kind].items())
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=kind)
            if family == "snr":
                ax.invert_xaxis()
            gap = data["gap"]
            ax.set_title(f"{name}: {family} (gap {gap:.1f})" if gap is not None else name)
            ax.set_xlabel("SNR" if family == "snr" else "blur level")
            ax.set_ylabel("robustness")
            ax.set_ylim(0, 110)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> int:
    ap = _common.parser(__doc__)
    ap.add_argument("--source", type=Path, default=BBBC038, help="real masks and images")
    ap.add_argument("--train", type=int, default=160, help="training tiles")
    ap.add_argument("--validation", type=int, default=20, help="validation tiles")
    ap.add_argument("--test", type=int, default=1000, help="at most this many real test tiles")
    ap.add_argument("--epochs", type=int, default=15, help="U-Net epochs per renderer")
    ap.add_argument("--seed", type=int, default=0, help="build and training seed")
    ap.add_argument("--renderers", nargs="+", default=["physics", "naive", "gan"])
    ap.add_argument("--weights", default=None, help="GAN weights folder (gan is skipped without)")
    ap.add_argument("--work", type=Path, default=Path("out/fidelity"), help="packages and models")
    ap.add_argument("--plot", type=Path, default=PLOT, help="the curves (PNG)")
    ap.add_argument(
        "--no-real-model",
        dest="real_model",
        action="store_false",
        help="skip the U-Net trained on the real train tiles (the transfer upper bound)",
    )
    _common.add_threads(ap)
    _common.add_json(ap)
    args = ap.parse_args()
    _common.set_threads(args)
    if not args.source.exists():
        raise SystemExit(f"{args.source}: no such source (BBBC038 stage1_train or any real source)")
    results: dict = {"machine": _common.machine(), "renderers": {}, "seconds": {}}
    for renderer in args.renderers:
        if renderer == "gan" and not args.weights:
            results["renderers_skipped"] = {"gan": "no GAN weights given (--weights); none ship"}
            continue
        t0 = time.perf_counter()
        pkg = build_package(args, renderer, args.work / renderer)
        t1 = time.perf_counter()
        model, val_iou = trained(
            args,
            args.work / f"{renderer}-unet-{args.epochs}ep.safetensors",
            lambda split, pkg=pkg: read_split(str(pkg), "nucleus", split),
        )
        t2 = time.perf_counter()
        res = score(pkg, model)
        res["val_iou"] = val_iou
        if renderer == args.renderers[0]:
            results["residual_noise"] = residual_noise(pkg)
        results["renderers"][renderer] = res
        results["seconds"][renderer] = {
            "build": round(t1 - t0, 1),
            "train": round(t2 - t1, 1),
            "score": round(time.perf_counter() - t2, 1),
        }
    if args.real_model and results["renderers"]:
        t0 = time.perf_counter()
        model, val_iou = train_on_real(args)
        pkg = args.work / next(iter(results["renderers"]))  # its real splits: the same tiles
        counts = {s: per_tile_counts(pkg, s, model) for s in ("real", "real_snr_8")}
        results["trained_on_real"] = {
            "val_iou": val_iou,
            "iou_real": iou(counts["real"]),
            "iou_real_snr_8": iou(counts["real_snr_8"]),
        }
        results["seconds"]["real"] = round(time.perf_counter() - t0, 1)
    plot(results, args.plot)
    results["plot"] = _common.shown(args.plot)
    _common.emit(results, args.json, report)
    return 0


def _at(curve: dict, level: int) -> float:
    """A curve's value at ``level`` (keys are ints, or strings once read back from JSON)."""
    return curve.get(level, curve.get(str(level), float("nan")))


def report(r: dict) -> None:
    print(r["machine"])
    real = r.get("trained_on_real")
    print(
        f"{'trained on':10s} {'IoU test':>9s} {'IoU real':>9s} {'real SNR8':>9s}  "
        "x real  gap snr  gap sib  gap svb"
    )
    for name, res in r["renderers"].items():
        gaps = [res["families"][f]["gap"] for f in FAMILIES]
        rel = f"{res['iou_real_snr_8'] / real['iou_real_snr_8']:6.2f}" if real else "     -"
        print(
            f"{name:10s} {res['iou_test']:9.3f} {res['iou_real']:9.3f} "
            f"{res['iou_real_snr_8']:9.3f}  {rel}  "
            + "  ".join(f"{g:7.1f}" if g is not None else "      -" for g in gaps)
        )
    if real:
        print(
            f"{'real':10s} {'-':>9s} {real['iou_real']:9.3f} {real['iou_real_snr_8']:9.3f}    1.00"
        )
    for name, res in r["renderers"].items():
        for family, data in res["families"].items():
            syn = " ".join(f"{_at(data['synthetic'], lv):5.1f}" for lv in FAMILIES[family])
            real = " ".join(f"{_at(data['real'], lv):5.1f}" for lv in FAMILIES[family])
            print(f"  {name:8s} {family}: synthetic {syn} | real {real}")
    print("residual noise of the real blur splits (blind fit / native):", r.get("residual_noise"))
    first = next(iter(r["renderers"].values()), None)
    if first:
        print("native SNR of the real tiles:", first["native_snr"])
    print("seconds:", r["seconds"], "| plot:", r["plot"])


if __name__ == "__main__":
    raise SystemExit(main())

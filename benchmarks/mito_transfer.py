"""Transfer to real mitochondria (issue 23, goal 3): U-Nets trained on Mito-C, scored on real tiles.

Does a reference U-Net trained on the new Mito-C (``--mito-masks cells``) score a higher IoU
against the pseudo-masks of the real tiles than one trained on today's (``worms``)?

- **real test tiles** (never trained or fitted on): the images of ``--real``
  (``shared/data/mito-fluorescence/images``: ``hcs_wt_mito``, ``nao_mito``) resampled to
  Mito-C's stated pixel size, 0.085 um/px (:data:`synthesis.levels.PIXEL_SIZE_UM`), as
  ``benchmarks/mito_cells.py`` does (its factors: HCS x1.6, pixel size estimated; NAO x0.5,
  0.0425 um/px stated; ``skimage.transform.rescale(order=1)``, anti-aliased when shrinking),
  each pseudo-masked whole with its method (``DEFAULT_MITO.scaled(1.6)``), then cut into
  the centred grid of non-overlapping 256 px tiles, keeping the tiles whose pseudo-mask
  foreground fraction is within the sources' bounds (``MIN_FOREGROUND_FRACTION`` to
  ``1 - MIN_FOREGROUND_FRACTION``). Scored at their native grey levels (per-image z-score);
- **training data**: one procedural Mito-C package per condition (renderer x mask
  generator: ``physics``/``naive`` x ``worms``/``cells``), built the build's way
  (:func:`builder.assembly.build`, reference splits only, so the build trains no model of
  its own) with ``--train`` / ``--validation`` tiles and build seed ``--seed``;
- **models**: per condition and training seed ``0..--seeds-1``, the reference U-Net
  (:func:`builder.assembly.reference.fit_reference`, ``--epochs``) on the package's
  ``train`` split, checkpointed on ``validation``;
- **scores**: aggregate IoU, precision and recall over all real tiles, the IoU per real
  image, and the share of real pixels predicted foreground against the pseudo-masks' share
  (a model that inverts or floods shows here). Over the seeds: mean and sample sd; a
  condition differs from another only where ``|a - b| > sd_a + sd_b``
  (:func:`builder.experiments.fidelity.differs`).

Resumable: packages resume as any build (``--out/packages``); each model is saved under a
name hashing its settings and its package's train and validation shards
(``--out/models``), with its training time (``.train.json``) and its scores
(``.scores.json``, valid for that model file and those real tiles) beside it, so a rerun
trains and scores only what is missing. ``mito_transfer.json`` and ``mito_transfer.md`` go
to ``--out``.

    python benchmarks/mito_transfer.py [--real DIR] [--out out/mito-transfer] [--seeds 3]
        [--epochs 15] [--train 160] [--validation 20] [--seed 0]
        [--conditions physics:worms physics:cells ...] [--json]
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import _common
import numpy as np
from mito_cells import METHOD, REAL

from synthesis.levels import PIXEL_SIZE_UM

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("mito_transfer")

#: The shared real mitochondria (``images/`` inside; no masks).
MITO_DATA = _common.MITO_DATA
CONFIG = "mito"
#: (renderer, mask generator) per training condition; the first chosen (by default today's
#: Mito-C, physics with worms) is the baseline the others are compared with.
CONDITIONS: tuple[tuple[str, str], ...] = (
    ("physics", "worms"),
    ("physics", "cells"),
    ("naive", "worms"),
    ("naive", "cells"),
)


class NoRealImages(Exception):
    """The real folder, or every real image in it, is missing."""


@dataclass(frozen=True)
class TransferOptions:
    """One run: ``real`` holds ``images/<stem>.tif``; ``out`` the packages, models, reports."""

    real: Path
    out: Path
    conditions: tuple[tuple[str, str], ...] = CONDITIONS
    seeds: int = 3
    epochs: int = 15
    train: int = 160
    validation: int = 20
    seed: int = 0
    device: str = "cpu"
    #: (stem, resampling factor to 0.085 um/px, how the factor was set) per real image.
    real_images: tuple[tuple[str, float, str], ...] = REAL


def _write_json(path: Path, value: dict[str, Any]) -> None:
    """``value`` as JSON, written to a temporary name and renamed (never half-written)."""
    from synthesis.runtime.files import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(value, indent=2) + "\n").encode())


def _read_json(path: Path) -> dict[str, Any]:
    """A stored record, or {} when it cannot be read (it is then made again)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def condition_name(renderer: str, masks: str) -> str:
    return f"{renderer}-{masks}"


# ----------------------------------------------------------------------------- real tiles


def real_tiles(path: Path, factor: float) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, grey-level tiles float32 ``(N, 256, 256)``, pseudo-masks bool) of one real
    image: resampled by ``factor``, pseudo-masked whole with :data:`mito_cells.METHOD`, cut
    into the centred 256 px grid; tiles outside the sources' foreground bounds left out."""
    from skimage.transform import rescale

    from synthesis.groundtruth.pseudo_masks import pseudo_mask
    from synthesis.groundtruth.sources.base import MIN_FOREGROUND_FRACTION, TILE, tile_origins
    from synthesis.groundtruth.sources.readers import _decode
    from synthesis.groundtruth.sources.readers import _grey as grey_of

    image = grey_of(_decode(path, str(path)), str(path), what="image").astype(np.float64)
    x = rescale(image, factor, order=1, preserve_range=True, anti_aliasing=factor < 1)
    pm = pseudo_mask(x, METHOD)
    ids, images, masks = [], [], []
    for y0, x0 in tile_origins(*x.shape):
        m = pm[y0 : y0 + TILE, x0 : x0 + TILE]
        if MIN_FOREGROUND_FRACTION <= m.mean() <= 1 - MIN_FOREGROUND_FRACTION:
            ids.append(f"{path.stem}_y{y0}x{x0}")
            images.append(x[y0 : y0 + TILE, x0 : x0 + TILE].astype(np.float32))
            masks.append(m.astype(bool))
    shape = (0, TILE, TILE)
    return (
        ids,
        np.stack(images) if images else np.zeros(shape, np.float32),
        np.stack(masks) if masks else np.zeros(shape, bool),
    )


def load_real(opts: TransferOptions) -> dict[str, dict[str, Any]]:
    """Per real image found in ``opts.real/images``: its factor, note, ids, tiles, masks.

    Raises:
        NoRealImages: no folder, or none of the images.
    """
    folder = opts.real / "images"
    if not folder.is_dir():
        raise NoRealImages(f"no real mitochondria images at {folder}")
    files = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in (".tif", ".tiff")}
    out: dict[str, dict[str, Any]] = {}
    for stem, factor, note in opts.real_images:
        if stem not in files:
            logger.warning("mito-transfer: %s not in %s; left out", stem, folder)
            continue
        ids, x, m = real_tiles(files[stem], factor)
        logger.info("mito-transfer: %s x%g: %d tiles", stem, factor, len(ids))
        out[stem] = {"factor": factor, "scale": note, "ids": ids, "images": x, "masks": m}
    if not any(v["ids"] for v in out.values()):
        raise NoRealImages(
            f"none of {', '.join(s for s, _, _ in opts.real_images)} (with a usable tile) "
            f"in {folder}"
        )
    return out


def _real_key(real: dict[str, dict[str, Any]]) -> str:
    """A digest of the real tiles and their pseudo-masks: scores of other tiles never match."""
    h = hashlib.sha256(json.dumps(METHOD.to_dict(), sort_keys=True).encode())
    for stem, v in real.items():
        h.update(stem.encode())
        h.update("\n".join(v["ids"]).encode())
        h.update(np.ascontiguousarray(v["images"]).tobytes())
        h.update(np.packbits(v["masks"]).tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- training data


def build_package(opts: TransferOptions, renderer: str, masks: str) -> tuple[Path, float]:
    """Build (or resume) the procedural Mito-C package of one condition; returns (folder,
    build seconds of the run that built it, kept in ``<folder>.build.json``)."""
    from builder.assembly import BuildOptions, build

    out = opts.out / "packages" / condition_name(renderer, masks)
    stamp = out.with_name(out.name + ".build.json")
    t0 = time.perf_counter()
    build(
        BuildOptions(
            out=out,
            configs=[CONFIG],
            splits=["reference"],
            counts={"train": opts.train, "validation": opts.validation, "test": 1},
            seed=opts.seed,
            device=opts.device,
            renderer=renderer,
            mito_masks=masks,
        )
    )
    seconds = time.perf_counter() - t0
    manifest_sha = hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest()
    if stamp.exists():
        stored = _read_json(stamp)
        if stored.get("manifest_sha256") == manifest_sha:
            return out, float(stored["seconds"])
    _write_json(stamp, {"manifest_sha256": manifest_sha, "seconds": seconds})
    return out, seconds


def _model_path(opts: TransferOptions, pkg: Path, name: str, seed: int) -> Path:
    """Where the U-Net of condition ``name`` and training seed ``seed`` lives: the name
    hashes the settings and the train and validation shards it learns from."""
    splits = json.loads((pkg / "manifest.json").read_text())["configs"][CONFIG]["splits"]
    recipe = {
        "condition": name,
        "epochs": opts.epochs,
        "seed": seed,
        "shards": {s: [x["sha256"] for x in splits[s]["shards"]] for s in ("train", "validation")},
    }
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    return opts.out / "models" / f"{CONFIG}-{name}-s{seed}-unet-{key}.safetensors"


def _trained(
    opts: TransferOptions, pkg: Path, path: Path, seed: int, device: torch.device
) -> tuple[torch.nn.Module, dict[str, Any], bool]:
    """(model in eval mode, its training record, whether it was trained now): loaded from
    ``path`` when an earlier run made it."""
    from builder.assembly.reference import fit_reference, read_split
    from synthesis.models.unet import load_model

    record_path = path.with_name(path.stem + ".train.json")
    if path.exists():
        model, meta = load_model(path, device=device)
        record = _read_json(record_path) if record_path.exists() else {}
        record.setdefault("val_iou", float(meta["val_iou"]))
        logger.info("mito-transfer: reusing %s", path.name)
        return model.eval(), record, False
    path.parent.mkdir(parents=True, exist_ok=True)
    train, val = read_split(str(pkg), CONFIG, "train"), read_split(str(pkg), CONFIG, "validation")
    logger.info("mito-transfer: training %s (%d train tiles)", path.name, train[0].shape[0])
    t0 = time.perf_counter()
    model, saved = fit_reference(
        *train,
        *val,
        path=path,
        config=CONFIG,
        seed=seed,
        device=device,
        epochs=opts.epochs,
        extra={"seed": seed, "trained_on": pkg.name},
    )
    record = {
        "seconds": round(time.perf_counter() - t0, 1),
        "val_iou": float(saved["val_iou"]),
        "best_epoch": int(saved["best_epoch"]),
        "machine": _common.machine(device, threads=True, load=True),
    }
    _write_json(record_path, record)
    logger.info("mito-transfer: trained %s in %.0f s", path.name, record["seconds"])
    return model.eval(), record, True


# ----------------------------------------------------------------------------- scoring


def score_real(
    model: torch.nn.Module, real: dict[str, dict[str, Any]], device: torch.device
) -> dict[str, Any]:
    """IoU, precision, recall over all real tiles and per real image, and the shares of
    real pixels predicted foreground and pseudo-mask foreground."""
    import torch

    from builder.evaluation.scoring import tensor_counts
    from builder.experiments.fidelity import split_scores
    from synthesis.normalize import zscore

    counts: dict[str, tuple[int, int, int, int]] = {}
    per_image: dict[str, Any] = {}
    for stem, v in real.items():
        if not v["ids"]:
            continue
        c = tensor_counts(
            v["ids"],
            torch.from_numpy(v["images"])[:, None],
            torch.from_numpy(v["masks"])[:, None],
            model,
            zscore,
            device=device,
        )
        per_image[stem] = split_scores(c)
        counts.update(c)
    pixels = sum(v["masks"].size for v in real.values())
    out: dict[str, Any] = dict(split_scores(counts))
    out["per_image"] = per_image
    out["predicted_fraction"] = sum(c[2] for c in counts.values()) / pixels
    out["pseudo_fraction"] = sum(c[3] for c in counts.values()) / pixels
    return out


def unit(
    opts: TransferOptions,
    pkg: Path,
    name: str,
    seed: int,
    real: dict[str, dict[str, Any]],
    real_key: str,
    device: torch.device,
) -> dict[str, Any]:
    """The scores of one (condition, training seed) U-Net, with its training record and
    ``trained_now``: read from ``.scores.json`` when it was written for this model file and
    these real tiles; otherwise the model is trained (or loaded) and scored."""
    from synthesis.runtime.files import sha256_file

    path = _model_path(opts, pkg, name, seed)
    cache = path.with_name(path.stem + ".scores.json")
    if path.exists() and cache.exists():
        stored = _read_json(cache)
        if stored.get("real") == real_key and stored.get("model_sha256") == sha256_file(path):
            logger.info("mito-transfer: reusing the scores of %s", path.name)
            return {**stored["result"], "trained_now": False}
    model, record, trained_now = _trained(opts, pkg, path, seed, device)
    res = json.loads(json.dumps({**score_real(model, real, device), "training": record}))
    stored = {"model": path.name, "model_sha256": sha256_file(path), "real": real_key}
    _write_json(cache, {**stored, "result": res})
    return {**res, "trained_now": trained_now}


def aggregate(per_seed: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean and sd over seeds of the scores (:func:`builder.experiments.fidelity.mean_sd`)."""
    from builder.experiments.fidelity import mean_sd

    runs = list(per_seed.values())
    keys = ("iou", "precision", "recall", "predicted_fraction", "pseudo_fraction")
    out: dict[str, Any] = {k: mean_sd([r[k] for r in runs]) for k in keys}
    stems = list(dict.fromkeys(s for r in runs for s in r["per_image"]))
    out["per_image"] = {s: mean_sd([r["per_image"][s]["iou"] for r in runs]) for s in stems}
    out["val_iou"] = mean_sd([r["training"].get("val_iou") for r in runs])
    out["train_seconds"] = mean_sd([r["training"].get("seconds") for r in runs])
    return out


def verdict(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``a`` against ``b`` on the real IoU: the difference of the means and whether it is
    larger than the spread (None with one seed)."""
    from builder.experiments.fidelity import differs

    x, y = a["iou"], b["iou"]
    d = differs(x["mean"], x["sd"], y["mean"], y["sd"])
    return {"difference": x["mean"] - y["mean"], "differs": d}


def transfer(opts: TransferOptions) -> dict[str, Any]:
    """Run the comparison (resuming what ``opts.out`` holds); return the results.

    Raises:
        NoRealImages: no real images at ``opts.real``.
    """
    import torch

    device = torch.device(opts.device)
    real = load_real(opts)  # first: nothing is built without the test tiles
    key = _real_key(real)
    seeds = list(range(opts.seeds))
    result: dict[str, Any] = {
        "pixel_size_um": PIXEL_SIZE_UM[CONFIG],
        "pseudo_mask": METHOD.to_dict(),
        "real": {
            s: {"factor": v["factor"], "scale": v["scale"], "tiles": len(v["ids"])}
            for s, v in real.items()
        },
        "settings": {
            "train": opts.train,
            "validation": opts.validation,
            "epochs": opts.epochs,
            "build_seed": opts.seed,
            "seeds": seeds,
            "device": str(device),
        },
        "conditions": {},
    }
    packages: dict[str, Path] = {}
    for renderer, masks in opts.conditions:
        name = condition_name(renderer, masks)
        packages[name], seconds = build_package(opts, renderer, masks)
        result["conditions"][name] = {
            "renderer": renderer,
            "masks": masks,
            "build_seconds": round(seconds, 1),
            "seeds": {},
        }
    # Seed by seed, so an interrupted run has every condition at the same number of seeds.
    for seed in seeds:
        for name, pkg in packages.items():
            r = unit(opts, pkg, name, seed, real, key, device)
            result["conditions"][name]["seeds"][str(seed)] = r
            logger.info("mito-transfer: %s seed %d: real IoU %.3f", name, seed, r["iou"])
    for c in result["conditions"].values():
        c["aggregate"] = aggregate(c["seeds"])
    conds = result["conditions"]
    base = condition_name(*opts.conditions[0])
    for name, c in conds.items():
        if name != base:
            c["vs_baseline"] = verdict(c["aggregate"], conds[base]["aggregate"])
        worms = condition_name(c["renderer"], "worms")
        if c["masks"] != "worms" and worms in conds:
            c["vs_worms_same_renderer"] = verdict(c["aggregate"], conds[worms]["aggregate"])
    result["baseline"] = base
    return result


# ----------------------------------------------------------------------------- report


def _ms(s: dict[str, Any], f: str = "{:.3f}") -> str:
    if s.get("mean") is None:
        return "n/a"
    return f.format(s["mean"]) + ("" if s.get("sd") is None else " ± " + f.format(s["sd"]))


def _verdict_cell(v: dict[str, Any] | None) -> str:
    if v is None:
        return "—"
    word = {True: "differs", False: "within spread", None: "one seed: no spread"}[v["differs"]]
    return f"{v['difference']:+.3f} ({word})"


def markdown(r: dict[str, Any]) -> str:
    """The summary table (mean ± sd over seeds) and the per-seed table."""
    stems = list(r["real"])
    lines = [
        f"Real test tiles at {r['pixel_size_um']} um/px, pseudo-masks `{r['pseudo_mask']['name']}`: "
        + "; ".join(
            f"{s} x{v['factor']:g} ({v['scale']}): {v['tiles']} tiles" for s, v in r["real"].items()
        ),
        f"Training: {r['settings']['train']} train / {r['settings']['validation']} validation "
        f"tiles per condition (build seed {r['settings']['build_seed']}), "
        f"{r['settings']['epochs']} epochs, training seeds {r['settings']['seeds']}, "
        f"device {r['settings']['device']}.",
        "",
        "| trained on (renderer, masks) | IoU real | precision | recall | "
        + " | ".join(f"IoU {s}" for s in stems)
        + " | IoU per seed | vs physics-worms | vs worms, same renderer | predicted fg "
        "/ pseudo fg | val IoU (synthetic) | s / training |",
        "|---|---:|---:|---:|" + "---:|" * len(stems) + "---|---|---|---:|---:|---:|",
    ]
    for name, c in r["conditions"].items():
        a = c["aggregate"]
        per_seed = ", ".join(f"{v['iou']:.3f}" for v in c["seeds"].values())
        cells = [
            f"{c['renderer']}, {c['masks']}",
            _ms(a["iou"]),
            _ms(a["precision"]),
            _ms(a["recall"]),
            *(_ms(a["per_image"].get(s, {})) for s in stems),
            per_seed,
            "baseline" if name == r["baseline"] else _verdict_cell(c.get("vs_baseline")),
            _verdict_cell(c.get("vs_worms_same_renderer")),
            f"{a['predicted_fraction']['mean']:.3f} / {a['pseudo_fraction']['mean']:.3f}",
            _ms(a["val_iou"]),
            _ms(a["train_seconds"], "{:.0f}"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| trained on | seed | IoU real | precision | recall | "
        + " | ".join(f"IoU {s}" for s in stems)
        + " | predicted fg | val IoU | best epoch | s |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(stems) + "---:|---:|---:|---:|",
    ]
    for name, c in r["conditions"].items():
        for seed, v in c["seeds"].items():
            t = v["training"]
            cells = [
                name,
                seed,
                f"{v['iou']:.3f}",
                f"{v['precision']:.3f}",
                f"{v['recall']:.3f}",
                *(
                    f"{v['per_image'][s]['iou']:.3f}" if s in v["per_image"] else "n/a"
                    for s in stems
                ),
                f"{v['predicted_fraction']:.3f}",
                f"{t.get('val_iou', float('nan')):.3f}",
                str(t.get("best_epoch", "n/a")),
                f"{t['seconds']:.0f}" if "seconds" in t else "n/a",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Build seconds per condition: "
        + ", ".join(f"{n} {c['build_seconds']:.0f}" for n, c in r["conditions"].items())
        + " (0-ish when resumed)."
    )
    if "machine" in r:
        lines.append(f"Machine: {r['machine']}; {r.get('seconds', 'n/a')} s this run.")
    return "\n".join(lines) + "\n"


def report(r: dict[str, Any]) -> None:
    print(markdown(r), end="")


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = _common.parser(__doc__)
    p.add_argument("--real", type=Path, default=MITO_DATA, help="folder with images/")
    p.add_argument("--out", type=Path, default=Path("out/mito-transfer"))
    p.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--train", type=int, default=160, help="training tiles per condition")
    p.add_argument("--validation", type=int, default=20)
    p.add_argument("--seed", type=int, default=0, help="build seed of the packages")
    p.add_argument(
        "--conditions",
        nargs="+",
        default=[f"{r}:{m}" for r, m in CONDITIONS],
        metavar="RENDERER:MASKS",
        help="training conditions (default all four)",
    )
    _common.add_device(p, "cpu")
    _common.add_threads(p)
    _common.add_json(p)
    args = p.parse_args(argv)
    _common.set_threads(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    conditions = tuple(tuple(c.split(":", 1)) for c in args.conditions)
    bad = [c for c in conditions if c not in CONDITIONS]
    if bad:
        p.error(f"--conditions: unknown {bad}; choose from {[':'.join(c) for c in CONDITIONS]}")
    opts = TransferOptions(
        real=args.real,
        out=args.out,
        conditions=conditions,
        seeds=args.seeds,
        epochs=args.epochs,
        train=args.train,
        validation=args.validation,
        seed=args.seed,
        device=args.device,
    )
    t0 = time.perf_counter()
    try:
        result = transfer(opts)
    except NoRealImages as e:
        msg = f"mito-transfer skipped: {e} (see --real)"
        logger.warning(msg)
        _common.emit({"skipped": msg}, args.json, lambda r: print(r["skipped"]))
        return 0
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["machine"] = _common.machine(opts.device, threads=True, load=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mito_transfer.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "mito_transfer.md").write_text(markdown(result))
    _common.emit(result, args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

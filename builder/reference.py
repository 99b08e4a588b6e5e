"""The reference U-Net shipped with a package: trained on ``train``, checkpointed on
``validation``, saved as ``models/<config>-unet.safetensors`` with a model card.

The attack splits are transfer attacks against this model; its sha256 goes into every
attacked row. ``build`` trains it when attack splits are requested; ``fluorobench-c
train-reference`` trains it from an existing package's ``train``/``validation`` splits.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.shards import atomic_write_bytes, sha256_file

if TYPE_CHECKING:
    import torch

    from builder.build import _ConfigBuild
    from synthesis.unet import UNet

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReferenceTraining:
    """Settings of the reference model (a small U-Net that trains on CPU in minutes)."""

    base_channels: int = 16
    depth: int = 4
    epochs: int = 30
    batch_size: int = 8
    lr: float = 2e-3
    crop: int = 128
    loss: str = "bce_dice"


REFERENCE = ReferenceTraining()


def model_path(out: Path, config: str) -> Path:
    return out / "models" / f"{config}-unet.safetensors"


def train_reference(
    train_adu: torch.Tensor,
    train_mask: torch.Tensor,
    val_adu: torch.Tensor,
    val_mask: torch.Tensor,
    *,
    seed: int,
    device: torch.device | str,
    epochs: int | None = None,
    settings: ReferenceTraining = REFERENCE,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[UNet, Any]:
    """Train the reference U-Net on ADU images (per-image z-score, the authors' convention).

    Returns ``(model, TrainResult)``; the model holds the best-validation-IoU weights.
    """
    from synthesis.training import normalize, train_segmenter
    from synthesis.unet import UNet

    model = UNet(
        in_channels=1, out_channels=1, base_channels=settings.base_channels, depth=settings.depth
    )
    result = train_segmenter(
        model,
        normalize(train_adu.float()),
        train_mask,
        normalize(val_adu.float()),
        val_mask,
        epochs=epochs or settings.epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        seed=seed,
        device=device,
        loss=settings.loss,
        crop=settings.crop if settings.crop < train_adu.shape[-1] else None,
        progress=progress,
    )
    return model, result


def save_reference(
    path: Path, config: str, model: UNet, result: Any, extra: dict[str, Any]
) -> dict[str, Any]:
    """Write the weights to ``path`` and their model card beside them (``.md``).

    Returns ``{"sha256", "val_iou", "best_epoch"}``.
    """
    from synthesis.unet import save_model

    meta = {
        "config": config,
        "val_iou": result.best_val_iou,
        "best_epoch": result.best_epoch,
        "training": result.settings,
        "architecture": dict(model.hparams),
        "input": "per-image z-score of the ADU image",
        "output": "1-channel logits (foreground where logit > 0)",
        **extra,
    }
    sha = save_model(model, path, metadata=meta)
    card = _model_card(config, sha, meta, result.history)
    atomic_write_bytes(path.with_suffix(".md"), card.encode())
    return {
        "sha256": sha,
        "val_iou": float(result.best_val_iou),
        "best_epoch": int(result.best_epoch),
    }


def _model_card(
    config: str, sha: str, meta: dict[str, Any], history: list[dict[str, float]]
) -> str:
    rows = "\n".join(
        f"| {h['epoch']} | {h['train_loss']:.4f} | {h['val_loss']:.4f} | {h['val_iou']:.4f} |"
        for h in history
    )
    return f"""# Reference U-Net for FluoroBench-C `{config}`

The model the attack splits of this package were generated against (transfer attacks).

- Weights: `{config}-unet.safetensors`, sha256 `{sha}`
- Architecture: plain-torch U-Net with batch norm, `{json.dumps(meta["architecture"], sort_keys=True)}`
- Input: {meta["input"]}; output: {meta["output"]}
- Trained on the `train` split (reference condition, SNR 8), best epoch by validation IoU:
  epoch {meta["best_epoch"]}, validation IoU {meta["val_iou"]:.4f}
- Training settings: `{json.dumps(meta["training"], sort_keys=True)}`

| epoch | train loss | val loss | val IoU |
|---:|---:|---:|---:|
{rows}

Load it with `synthesis.unet.load_model(path)`.
"""


def ensure_reference_model(cb: _ConfigBuild) -> tuple[torch.nn.Module, str]:
    """The config's reference model: reused when the build already saved it, else trained."""
    from synthesis.unet import load_model

    out, config = cb.opts.out, cb.config
    entry = cb.manifest["configs"][config]
    path = model_path(out, config)
    recorded = entry.get("model")
    if recorded and path.exists() and sha256_file(path) == recorded["sha256"]:
        model, _ = load_model(path, device=cb.device)
        return model, recorded["sha256"]
    logger.info("training the reference U-Net of %s", config)
    train_adu, train_mask = cb.reference_images("train")
    val_adu, val_mask = cb.reference_images("validation")
    from synthesis.rng import derive_seed

    seed = derive_seed(cb.opts.seed, config, "reference-unet") % (2**31)
    factory = cb.opts.progress
    bar = (
        factory(cb.opts.train_epochs or REFERENCE.epochs, f"{config} reference U-Net")
        if factory
        else None
    )
    model, result = train_reference(
        train_adu,
        train_mask,
        val_adu,
        val_mask,
        seed=seed,
        device=cb.device,
        epochs=cb.opts.train_epochs,
        progress=(lambda epoch, record: bar.update(1)) if bar is not None else None,
    )
    if bar is not None:
        bar.close()
    extra = {"seed": seed, "reference_settings": asdict(REFERENCE)}
    saved = save_reference(path, config, model, result, extra)
    entry["model"] = {"path": path.relative_to(out).as_posix(), **saved}
    from builder.manifest import write_manifest

    write_manifest(out, cb.manifest)
    model.eval()
    return model, entry["model"]["sha256"]


# --------------------------------------------------------------------------- CLI
def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-reference", help="train the reference U-Net of a package's config")
    p.add_argument("data", help="package folder or Hub repo id")
    p.add_argument("--config", required=True, choices=["er", "mito", "nucleus"])
    p.add_argument(
        "--out", type=Path, default=None, help="folder for the weights (default: DATA/models)"
    )
    p.add_argument("--epochs", type=int, default=REFERENCE.epochs)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run)


def _read_split(data: str, config: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    import fluorobench_c

    rows = list(fluorobench_c.load(data, config, split))
    batch = fluorobench_c.collate(rows)
    return batch["image"], batch["mask"] != 0


def run(args: argparse.Namespace) -> int:
    import torch

    from builder.cli import UsageError

    if args.out is None and not Path(args.data).is_dir():
        raise UsageError(f"--out is needed when DATA is a Hub repo id. Got {args.data}")
    folder = args.out if args.out is not None else Path(args.data) / "models"
    target = folder / f"{args.config}-unet.safetensors"
    if target.exists() and not args.overwrite:
        raise UsageError(
            f"{target} exists (the package's attack splits were made against it); "
            "pass --overwrite to replace it"
        )
    if args.epochs < 1:
        raise UsageError(f"--epochs must be >= 1. Got {args.epochs}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    train_adu, train_mask = _read_split(args.data, args.config, "train")
    val_adu, val_mask = _read_split(args.data, args.config, "validation")
    from tqdm.auto import tqdm

    with tqdm(total=args.epochs, desc=f"{args.config} reference U-Net", unit="epoch") as bar:

        def progress(epoch: int, record: dict[str, float]) -> None:
            bar.update(1)
            bar.set_postfix(val_iou=f"{record['val_iou']:.3f}")

        model, result = train_reference(
            train_adu,
            train_mask,
            val_adu,
            val_mask,
            seed=args.seed,
            device=device,
            epochs=args.epochs,
            progress=progress,
        )
    saved = save_reference(target, args.config, model, result, {"seed": args.seed})
    print(
        f"{args.config}: validation IoU {result.best_val_iou:.4f} (epoch {result.best_epoch}); "
        f"weights {target} sha256 {saved['sha256']}"
    )
    return 0

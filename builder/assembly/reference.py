"""The reference U-Net shipped with a package: trained on ``train``, checkpointed on
``validation``, saved as ``models/<config>-unet.safetensors`` with a model card.

The attack splits are transfer attacks against this model; its sha256 goes into every
attacked row. Training takes tensors (ADU images and masks): ``build`` passes the images it
makes, ``fluorobench-c train-reference`` those of an existing package
(:func:`read_split`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthesis.runtime.files import atomic_write_bytes
from synthesis.runtime.progress import ProgressFactory, no_progress

if TYPE_CHECKING:
    import torch

    from synthesis.models.unet import UNet

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
    #: CPU threads training runs on, whatever the process has (recorded with the weights):
    #: :data:`synthesis.thread_invariant.MODEL_THREADS`, which :func:`train_segmenter` pins
    #: (docs/definitions.md#determinism).
    threads: int = 2


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

    from synthesis.models.training import train_segmenter
    from synthesis.models.unet import UNet
    from synthesis.normalize import zscore

    model = UNet(
        in_channels=1, out_channels=1, base_channels=settings.base_channels, depth=settings.depth
    )
    result = train_segmenter(
        model,
        zscore(train_adu.float()),
        train_mask,
        zscore(val_adu.float()),
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
    from synthesis.models.unet import save_model

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

Load it with `synthesis.models.unet.load_model(path)`.
"""


def fit_reference(
    train_adu: torch.Tensor,
    train_mask: torch.Tensor,
    val_adu: torch.Tensor,
    val_mask: torch.Tensor,
    *,
    path: Path,
    config: str,
    seed: int,
    device: torch.device | str,
    epochs: int | None = None,
    progress: ProgressFactory | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[UNet, dict[str, Any]]:
    """Train the reference U-Net on ADU tensors and save it (with its card) to ``path``.

    Returns ``(model in eval mode, {"sha256", "val_iou", "best_epoch"})``.
    """
    bar = (progress or no_progress)(
        epochs or REFERENCE.epochs, f"{config} reference U-Net", "epoch"
    )
    try:
        model, result = train_reference(
            train_adu,
            train_mask,
            val_adu,
            val_mask,
            seed=seed,
            device=device,
            epochs=epochs,
            progress=lambda epoch, record: bar.update(1),
        )
    finally:
        bar.close()
    saved = save_reference(path, config, model, result, {"seed": seed} if extra is None else extra)
    return model.eval(), saved


def read_split(data: str, config: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(ADU float32, mask bool), both ``(N, 1, H, W)``, of a package split (folder or repo)."""
    import fluorobench_c

    rows = list(fluorobench_c.load(data, config, split, columns=fluorobench_c.MODEL_COLUMNS))
    batch = fluorobench_c.collate(rows)
    return batch["image"], batch["mask"] != 0

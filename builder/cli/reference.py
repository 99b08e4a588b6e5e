"""``fluorobench-c train-reference``: train the reference U-Net of a package's config."""

from __future__ import annotations

import argparse
from pathlib import Path

from builder.assembly.reference import REFERENCE
from builder.cli import common
from synthesis.runtime.errors import InputError, RefusedError


def add_parser(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("data", help="package folder or Hub repo id")
    common.add_config(p)
    p.add_argument(
        "--out", type=Path, default=None, help="folder for the weights (default: DATA/models)"
    )
    p.add_argument("--epochs", type=common.counts, default=REFERENCE.epochs, help="training epochs")
    common.add_seed(p)
    common.add_device(p)
    p.add_argument("--overwrite", action="store_true", help="replace existing weights")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from builder.assembly.reference import fit_reference, read_split
    from synthesis.runtime.device import resolve_device

    if args.out is None and not Path(args.data).is_dir():
        raise InputError(f"--out is needed when DATA is a Hub repo id. Got {args.data}")
    folder = args.out if args.out is not None else Path(args.data) / "models"
    target = folder / f"{args.config}-unet.safetensors"
    if target.exists() and not args.overwrite:
        raise RefusedError(
            f"{target} exists (the package's attack splits were made against it); "
            "pass --overwrite to replace it"
        )
    device = resolve_device(args.device)
    train = read_split(args.data, args.config, "train")
    val = read_split(args.data, args.config, "validation")
    model, saved = fit_reference(
        *train,
        *val,
        path=target,
        config=args.config,
        seed=args.seed,
        device=device,
        epochs=args.epochs,
        progress=common.progress,
    )
    print(
        f"{args.config}: validation IoU {saved['val_iou']:.4f} (epoch {saved['best_epoch']}); "
        f"weights {target} sha256 {saved['sha256']}"
    )
    return 0

"""``fluorobench-c train-synthesizer``: train the mask-to-image GAN and its denoiser.

    fluorobench-c train-synthesizer --config nucleus --source PATH --out DIR [--preset cpu]

Writes the generator, the denoiser, their model card and ``metrics.json`` into ``DIR``
(resumable: re-run the same command after an interruption). The library side is
:mod:`builder.experiments.synthesizer`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from builder.cli import common

#: Settings a flag can override (None keeps the preset's): flag dest -> settings field.
_OVERRIDES = {
    "steps": "generator steps",
    "batch_size": "images per step",
    "crop": "training crop side (px)",
    "ngf": "generator width (64 in pix2pix)",
    "ndf": "discriminator width",
    "num_downs": "U-Net levels (8: unet_256)",
    "checkpoint_every": "steps between checkpoints",
    "sample_every": "steps between sample grids",
}


def add_parser(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    from synthesis.models.gan_training import PRESETS

    p = sub.add_parser(name, help=help_text, description=__doc__.split("\n\n")[0])
    common.add_config(p)
    p.add_argument("--source", required=True, help="real data: BBBC038 stage1_train, or any source")
    p.add_argument("--out", type=Path, required=True, help="weights folder (resumable)")
    p.add_argument(
        "--preset",
        default="auto",
        choices=["auto", *PRESETS],
        help="reference (authors' settings, GPU), cpu (minutes), tiny (tests); auto: "
        "reference on CUDA, cpu otherwise",
    )
    for dest, what in _OVERRIDES.items():
        flag = "--" + dest.replace("_", "-")
        p.add_argument(flag, type=common.counts, default=None, help=f"{what} (default: preset's)")
    p.add_argument(
        "--denoiser-steps",
        type=common.counts,
        default=None,
        help="denoiser steps (default: preset's)",
    )
    p.add_argument(
        "--max-tiles", type=common.counts, default=None, help="at most this many training tiles"
    )
    p.add_argument("--no-denoiser", action="store_true", help="train the generator only")
    p.add_argument("--no-amp", action="store_true", help="full precision on CUDA")
    common.add_seed(p)
    common.add_device(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from builder.experiments.synthesizer import generator_settings, train_synthesizer
    from synthesis.runtime.device import resolve_device

    device = resolve_device(args.device)
    overrides = {dest: getattr(args, dest) for dest in _OVERRIDES}
    overrides.update(seed=args.seed, amp=False if args.no_amp else None)
    gen, den = generator_settings(
        args.preset, device, overrides=overrides, denoiser_steps=args.denoiser_steps
    )
    train_synthesizer(
        args.config,
        args.source,
        args.out,
        gen,
        den,
        device,
        seed=args.seed,
        max_tiles=args.max_tiles,
        denoiser=not args.no_denoiser,
        progress=common.progress,
    )
    print(
        f"weights ready: {args.out} (use: fluorobench-c build OUT --renderer gan --weights {args.out})"
    )
    return 0

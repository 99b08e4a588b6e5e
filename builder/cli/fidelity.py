"""``fluorobench-c fidelity``: does a model's drop on synthetic splits predict its drop on
real images degraded the same way? (docs/definitions.md#fidelity)"""

from __future__ import annotations

import argparse
from pathlib import Path

from builder.build.options import RENDERERS
from builder.cli import common
from synthesis.levels import CONFIGS


def add_parser(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument(
        "--source",
        required=True,
        help="real images with masks: a BBBC038 stage1_train folder or zip, Luo pair lists, "
        "or a folder of images/ + masks/",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder for packages/, models/, fidelity.json, fidelity.md, fidelity.png "
        "(a rerun with the same settings resumes)",
    )
    p.add_argument("--config", default="nucleus", choices=list(CONFIGS), help="the structure")
    p.add_argument(
        "--renderers",
        action=common.ListAction,
        default=["physics", "naive", "gan"],
        metavar="NAME",
        help=f"renderers to compare ({', '.join(RENDERERS)}; gan needs --weights)",
    )
    p.add_argument("--weights", default=None, help="GAN weights folder (default: gan skipped)")
    p.add_argument("--train", type=common.counts, default=160, help="training tiles")
    p.add_argument("--validation", type=common.counts, default=20, help="validation tiles")
    p.add_argument(
        "--test", type=common.counts, default=1000, help="at most this many real test tiles"
    )
    p.add_argument("--epochs", type=common.counts, default=15, help="U-Net epochs per renderer")
    common.add_seed(p)
    p.add_argument(
        "--real-model",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also train the U-Net on the real train tiles (the transfer upper bound)",
    )
    common.add_device(p)
    p.add_argument(
        "--overwrite", action="store_true", help="replace results made with other settings"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from builder.experiments.fidelity import (
        FidelityOptions,
        fidelity,
        fidelity_markdown,
        write_fidelity_reports,
    )

    opts = FidelityOptions(
        source=args.source,
        work=args.out,
        config=args.config,
        renderers=tuple(args.renderers),
        weights=args.weights,
        train=args.train,
        validation=args.validation,
        test=args.test,
        epochs=args.epochs,
        seed=args.seed,
        real_model=args.real_model,
        device=args.device,
        overwrite=args.overwrite,
    )
    results = fidelity(opts, progress=common.progress)
    paths = write_fidelity_reports(args.out, results)
    print(fidelity_markdown(results))
    print("written:", ", ".join(str(p) for p in paths))
    return 0

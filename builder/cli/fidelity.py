"""``fluorobench-c fidelity``: does a model's drop on synthetic splits predict its drop on
real images degraded the same way? (docs/definitions.md#fidelity)"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from builder.assembly.options import RENDERERS
from builder.cli import common, launch
from synthesis.levels import CONFIGS

if TYPE_CHECKING:
    from builder.experiments.fidelity import FidelityOptions


def add_parser(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text)
    add_arguments(p)
    launch.add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(
    p: argparse.ArgumentParser, *, source: Path | None = None, out: Path | None = None
) -> None:
    """The options of a fidelity run (also used by ``benchmarks/fidelity.py``, which gives
    ``source`` and ``out`` defaults; here they are required)."""
    p.add_argument(
        "--source",
        type=Path,
        required=source is None,
        default=source,
        help="real images with masks: a BBBC038 stage1_train folder or zip, Luo pair lists, "
        "or a folder of images/ + masks/; or a folder of images/ alone (pseudo-masks)",
    )
    common.add_source_pixel_size(p)
    p.add_argument(
        "--out",
        type=Path,
        required=out is None,
        default=out,
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
        "--seeds",
        type=common.counts,
        default=3,
        help="train each U-Net this many times, with the training seeds SEED, SEED+1, ... "
        "(the packages are built once with --seed); scores are mean ± sd over them. A rerun "
        "with more seeds reuses the models that exist",
    )
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


def options(args: argparse.Namespace) -> FidelityOptions:
    """The :class:`FidelityOptions` of parsed :func:`add_arguments` options."""
    from builder.experiments.fidelity import FidelityOptions

    return FidelityOptions(
        source=str(args.source),
        work=args.out,
        config=args.config,
        renderers=tuple(args.renderers),
        weights=args.weights,
        train=args.train,
        validation=args.validation,
        test=args.test,
        epochs=args.epochs,
        seed=args.seed,
        seeds=args.seeds,
        real_model=args.real_model,
        device=args.device,
        overwrite=args.overwrite,
        source_pixel_size=common.source_pixel_sizes(getattr(args, "source_pixel_size", None)),
    )


def run(args: argparse.Namespace) -> int:
    """One process, or every rank of a ``torchrun`` launch (or ``--workers N``): the ranks
    share the builds' units and the U-Nets; rank 0 writes and prints the reports."""
    from builder import distributed
    from builder.experiments.fidelity import fidelity, fidelity_markdown, write_fidelity_reports
    from synthesis.runtime.device import resolve_device

    if args.workers > 1 and not distributed.launched():
        return launch.spawn(run, args)
    device = resolve_device(args.device)
    with distributed.join(
        device_type=device.type, timeout_s=args.rendezvous_timeout, job="fidelity"
    ) as ctx:
        ctx.agree("arguments", {k: str(v) for k, v in sorted(vars(args).items()) if k != "func"})
        progress = common.progress if ctx.is_main else None
        results = fidelity(options(args), progress=progress, ctx=ctx)
        ctx.leave()
    if not ctx.is_main:
        return 0
    paths = write_fidelity_reports(args.out, results)
    print(fidelity_markdown(results))
    print("written:", ", ".join(str(p) for p in paths))
    return 0

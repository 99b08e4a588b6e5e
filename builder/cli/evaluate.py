"""``fluorobench-c evaluate``: stream a benchmark into a model; IoU, Dice, robustness."""

from __future__ import annotations

import argparse
from pathlib import Path

from builder.cli import common
from builder.evaluation.scoring import WHITEBOX_METHODS
from synthesis.levels import CONFIGS
from synthesis.normalize import NORMALIZATIONS


def add_parser(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--data", required=True, help="package folder or Hub repo id")
    p.add_argument("--config", required=True, choices=list(CONFIGS), help="the config")
    p.add_argument(
        "--model",
        default=None,
        help="TorchScript file, .safetensors U-Net, or module.py:factory "
        "(default: the package's reference U-Net)",
    )
    common.add_splits(
        p, "splits, e.g. 'test snr_1' or 'test,snr_1' (default: every split but train/validation)"
    )
    p.add_argument(
        "--attacks",
        action=common.ListAction,
        default=None,
        metavar="METHOD:EPS",
        help="white-box attacks on the model, e.g. 'pgd:8 segpgd:8' "
        f"({', '.join(WHITEBOX_METHODS)})",
    )
    p.add_argument(
        "--normalize",
        default="zscore",
        choices=list(NORMALIZATIONS),
        help="model input: per-image z-score (as the reference models), min-max or none",
    )
    common.add_device(p)
    p.add_argument("--batch-size", type=common.counts, default=16, help="images per batch")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder for results.json, results.md, robustness.png",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from builder.evaluation import evaluate, results_markdown, write_reports
    from builder.evaluation.scoring import parse_attacks

    results = evaluate(
        args.data,
        args.config,
        model=args.model,
        splits=args.splits,
        attacks=parse_attacks(args.attacks),
        normalize=args.normalize,
        device=args.device,
        batch_size=args.batch_size,
        progress=common.progress,
    )
    write_reports(args.out, results)
    print(results_markdown(results))
    print(f"results written to {args.out}")
    return 0

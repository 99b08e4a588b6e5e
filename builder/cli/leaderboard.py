"""``fluorobench-c leaderboard``: train a zoo of architectures on a package with one recipe,
evaluate each on every split and under white-box attacks, and rank them
(:mod:`builder.experiments.leaderboard`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from builder.cli import common
from synthesis.levels import CONFIGS


def add_parser(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    from builder.experiments.leaderboard import DEFAULT_MODELS, RECIPES

    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--data", required=True, help="package folder or Hub dataset id")
    p.add_argument("--config", default="mito", choices=list(CONFIGS), help="the config")
    p.add_argument(
        "--models",
        action=common.ListAction,
        default=list(DEFAULT_MODELS),
        metavar="NAME",
        help=f"zoo models, e.g. 'unet,res_unet' (default: all: {', '.join(DEFAULT_MODELS)})",
    )
    p.add_argument(
        "--preset",
        default="small",
        choices=list(RECIPES),
        help="small: narrow models, short schedule (about 20 min per config on a 2-core CPU, "
        "indicative); full: original widths and schedule, for a GPU",
    )
    p.add_argument("--epochs", type=common.counts, default=None, help="override the preset")
    p.add_argument("--batch-size", type=common.counts, default=None, help="override the preset")
    common.add_seed(p)
    common.add_device(p)
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder for models/, results/, leaderboard.json/.md/.png (a rerun resumes)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="retrain models saved with other settings"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from builder.experiments.leaderboard import (
        LeaderboardOptions,
        leaderboard,
        leaderboard_markdown,
    )

    board = leaderboard(
        LeaderboardOptions(
            data=str(args.data),
            config=args.config,
            out=args.out,
            models=list(args.models),
            preset=args.preset,
            epochs=args.epochs,
            batch_size=args.batch_size,
            seed=args.seed,
            device=args.device,
            overwrite=args.overwrite,
        ),
        progress=common.progress,
    )
    print(leaderboard_markdown(board))
    print(f"leaderboard written to {args.out}")
    return 0

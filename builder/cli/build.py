"""``fluorobench-c build``: masks -> images -> corruptions -> a Hub package folder."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from builder.assembly.options import RENDERERS
from builder.assembly.reference import REFERENCE
from builder.cli import common, launch
from synthesis.groundtruth.masks import MITO_MASKS
from synthesis.levels import CONFIGS


def add_parser(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    from builder.package.plan import FAMILIES

    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("out", type=Path, help="output folder (the Hub package)")
    common.add_config(p, many=True)
    p.add_argument(
        "--source",
        default="procedural",
        help="'procedural' (embedded default, no download) or a path: BBBC038 stage1_train "
        "folder/zip, Luo et al. pair lists, a folder with images/ and masks/, or a folder "
        "with images/ alone (pseudo-masks)",
    )
    common.add_splits(
        p,
        f"split names or families ({' '.join(FAMILIES)}), e.g. 'snr sib_3' or 'snr,sib_3'; "
        "default: all",
    )
    p.add_argument("--train", type=common.counts, default=160, help="train images (per config)")
    p.add_argument("--validation", type=common.counts, default=20, help="validation images")
    p.add_argument("--test", type=common.counts, default=40, help="test images")
    common.add_seed(p)
    common.add_device(p)
    p.add_argument("--batch-size", type=common.counts, default=16, help="images per batch")
    p.add_argument(
        "--rows-per-shard",
        "--shard-size",
        dest="shard_size",
        type=common.counts,
        default=256,
        help="rows per Parquet shard (a shard is a unit of work: more shards, more parallelism)",
    )
    launch.add_arguments(p)
    p.add_argument(
        "--renderer",
        default="physics",
        choices=list(RENDERERS),
        help="mask-to-image renderer (naive: mask + Gaussian blur, the realism baseline)",
    )
    p.add_argument("--weights", default=None, help="generator weights folder (--renderer gan)")
    p.add_argument(
        "--mito-masks",
        default="worms",
        choices=list(MITO_MASKS),
        help="mito mask generator (procedural source): worms spread over the tile, or cells "
        "(nuclei, networks packed around them, empty space between cells; 0.085 um/px)",
    )
    common.add_source_pixel_size(p)
    p.add_argument(
        "--noise-model",
        default="poisson_gaussian",
        choices=["poisson_gaussian", "gaussian"],
        help="camera noise (gaussian: the first release's signal-independent noise)",
    )
    p.add_argument(
        "--train-epochs",
        type=common.counts,
        default=None,
        help=f"reference U-Net epochs (default: the reference settings' {REFERENCE.epochs})",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a different build in OUT")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from builder.assembly import BuildOptions, build
    from builder.distributed import launched

    if args.workers > 1 and not launched():
        return launch.spawn(run, args)  # rank 0 prints the summary

    opts = BuildOptions(
        out=args.out,
        configs=args.config or list(CONFIGS),
        source=args.source,
        splits=args.splits,
        counts={"train": args.train, "validation": args.validation, "test": args.test},
        seed=args.seed,
        device=args.device,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        overwrite=args.overwrite,
        renderer=args.renderer,
        weights=args.weights,
        noise_model=args.noise_model,
        train_epochs=args.train_epochs,
        mito_masks=args.mito_masks,
        source_pixel_size=common.source_pixel_sizes(args.source_pixel_size),
        progress=common.progress,
        rendezvous_timeout=args.rendezvous_timeout,
    )
    manifest = build(opts)
    if int(os.environ.get("RANK", "0")) > 0:
        return 0  # rank 0 reports
    for config, entry in manifest["configs"].items():
        rows = sum(s["num_rows"] for s in entry["splits"].values() if not s.get("alias_of"))
        skipped = entry.get("skipped") or {}
        extra = f", skipped inputs: {skipped}" if skipped else ""
        print(f"{config}: {len(entry['splits'])} splits, {rows} rows{extra}")
    print(
        f"package ready: {args.out} "
        f"(load with datasets.load_dataset({str(args.out)!r}, CONFIG, split=...))"
    )
    return 0

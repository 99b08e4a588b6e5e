"""``fluorobench-c export``: a package's splits as OME-Zarr or OME-TIFF, to look at in napari."""

from __future__ import annotations

import argparse
from pathlib import Path

from builder.cli import common
from builder.package.ome_export import FORMATS
from synthesis.levels import CONFIGS


def add_parser(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("package", type=Path, help="the package folder")
    p.add_argument("--config", required=True, choices=list(CONFIGS), help="the config")
    common.add_splits(
        p, "splits or families, e.g. 'snr_2 sib_3' or 'snr' (default: every split of the config)"
    )
    p.add_argument(
        "--format",
        required=True,
        choices=list(FORMATS),
        help="ome-zarr: one NGFF 0.5 store, each split an image with its masks as labels; "
        "ome-tiff: a folder of one <split>.ome.tif per split (needs nothing extra)",
    )
    p.add_argument("out", type=Path, help="the store (OUT.zarr) or folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from builder.package.ome_export import export_ome

    out = export_ome(
        args.package,
        args.config,
        args.out,
        fmt=args.format,
        splits=args.splits,
        overwrite=args.overwrite,
    )
    print(f"{args.format} written to {out}")
    if args.format == "ome-zarr":
        print(f"look at a split: napari --plugin napari-ome-zarr {out}/<split>")
    return 0

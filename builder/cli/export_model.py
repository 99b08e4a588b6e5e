"""``fluorobench-c export-model``: a package's reference U-Net as a bioimage.io model package."""

from __future__ import annotations

import argparse
from pathlib import Path

from synthesis.levels import CONFIGS


def add_parser(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("package", type=Path, help="the package folder")
    p.add_argument("--config", required=True, choices=list(CONFIGS), help="the config")
    p.add_argument(
        "--format",
        default="bioimageio",
        choices=["bioimageio"],
        help="bioimageio: rdf.yaml (format 0.5), pytorch_state_dict and TorchScript weights, "
        "test tensors, documentation (needs the bioimageio extra)",
    )
    p.add_argument("out", type=Path, help="the package folder to write, or OUT.zip for a zip")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from builder.evaluation.bioimageio_export import export_bioimageio

    out = export_bioimageio(args.package, args.config, args.out, overwrite=args.overwrite)
    rdf = out if out.suffix == ".zip" else out / "rdf.yaml"
    print(f"bioimage.io model package written to {out}")
    print(f"test it: bioimageio test {rdf}")
    return 0

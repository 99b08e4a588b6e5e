"""The ``fluorobench-c`` command line: one entry point, one sub-command per job.

The command line is the only place that parses arguments, prints, draws progress bars and
chooses exit codes; nothing imports it. Library code raises the typed errors of
:mod:`synthesis.runtime.errors`, and :func:`main` maps them: 0 success, 1 the job failed (e.g.
``verify`` found problems, an upload broke off), 2 bad arguments or a refused job (one clear
line on stderr, nothing written).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

# torch's OpenMP threads spin while waiting by default: on a busy 2-core machine that made
# 2 threads 5-10x slower than 1. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from builder import __version__
from builder.cli.common import Parser
from synthesis.runtime.errors import FluoroBenchError

logger = logging.getLogger("fluorobench_c")

#: Sub-command -> (one-line help, module with ``add_parser(sub, help)`` and ``run(args)``).
#: A module is imported only for the command being run (torch makes imports take seconds).
COMMANDS: dict[str, tuple[str, str]] = {
    "build": ("build ER-C / Mito-C / Nucleus-C into a Hub package folder", "builder.cli.build"),
    "verify": (
        "re-hash shards and check counts, schema, YAML, loading, id pairing",
        "builder.cli.verify",
    ),
    "train-reference": (
        "train the reference U-Net of a package's config",
        "builder.cli.reference",
    ),
    "evaluate": (
        "stream a benchmark into a model; IoU, Dice, robustness",
        "builder.cli.evaluate",
    ),
    "publish": (
        "upload a verified package to the Hugging Face Hub (resumable, idempotent)",
        "builder.cli.publish",
    ),
    "fidelity": (
        "compare robustness on synthetic and on real degraded images, per renderer",
        "builder.cli.fidelity",
    ),
    "leaderboard": (
        "train a zoo of architectures with one recipe and rank their robustness",
        "builder.cli.leaderboard",
    ),
    "train-synthesizer": (
        "train the pix2pix mask-to-image generator and its denoiser on real pairs",
        "builder.cli.synthesizer",
    ),
    "export": (
        "write a package's splits as OME-Zarr or OME-TIFF (to look at in napari)",
        "builder.cli.export",
    ),
    "export-model": (
        "write a package's reference U-Net as a bioimage.io model package",
        "builder.cli.export_model",
    ),
}


def make_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or (``only``) one with just that sub-command's options loaded."""
    parser = Parser(prog="fluorobench-c", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, (help_text, module) in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=help_text)
        else:
            importlib.import_module(module).add_parser(sub, name, help_text)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if arg in ("-h", "--help", "--version"):
            return None
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = make_parser(_command_of(argv)).parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (already printed)
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("datasets", "huggingface_hub", "fsspec", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return run_command(args.func, args)


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """``func(args)``, with the typed errors turned into one line on stderr and an exit code.

    In a multi-process job an error every rank raised alike is reported by rank 0 only.
    """
    try:
        return int(func(args))
    except FluoroBenchError as exc:
        if not (exc.collective and int(os.environ.get("RANK", "0")) > 0):
            print(f"fluorobench-c: error: {exc}", file=sys.stderr)
        return exc.exit_code

"""The ``fluorobench-c`` command line: one entry point, one sub-command per job.

Exit codes: 0 success, 1 the job failed (e.g. ``verify`` found problems), 2 bad arguments
or a refused build (one clear line on stderr, nothing written).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

# torch's OpenMP threads spin while waiting by default: on a busy 2-core machine that made
# 2 threads 5-10x slower than 1. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from builder import __version__

logger = logging.getLogger("fluorobench_c")


class UsageError(Exception):
    """Bad arguments: reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _counts(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number. Got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1. Got {n}")
    return n


def _progress(total: int | None, desc: str) -> object:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", leave=False, dynamic_ncols=True)


# --------------------------------------------------------------------------- build
def _add_build(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build", help="build ER-C / Mito-C / Nucleus-C into a Hub package folder")
    p.add_argument("out", type=Path, help="output folder (the Hub package)")
    p.add_argument(
        "--config", nargs="+", default=None, metavar="NAME", help="er, mito, nucleus (default: all)"
    )
    p.add_argument(
        "--source",
        default="procedural",
        help="'procedural' (embedded default, no download) or a path: BBBC038 stage1_train "
        "folder/zip, Luo et al. pair lists, or a folder with images/ and masks/",
    )
    p.add_argument(
        "--splits",
        nargs="+",
        default=None,
        metavar="NAME",
        help="split names or families: reference clean snr sib svb attacks real (default: all)",
    )
    p.add_argument("--train", type=_counts, default=160, help="train images (procedural)")
    p.add_argument("--validation", type=_counts, default=20, help="validation images (procedural)")
    p.add_argument("--test", type=_counts, default=40, help="test images (procedural)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--batch-size", type=_counts, default=16)
    p.add_argument("--shard-size", type=_counts, default=256, help="rows per Parquet shard")
    p.add_argument("--renderer", default="physics", choices=["physics", "gan"])
    p.add_argument("--weights", default=None, help="generator weights folder (--renderer gan)")
    p.add_argument(
        "--noise-model", default="poisson_gaussian", choices=["poisson_gaussian", "gaussian"]
    )
    p.add_argument("--train-epochs", type=_counts, default=None, help="reference U-Net epochs")
    p.add_argument("--overwrite", action="store_true", help="replace a different build in OUT")
    p.set_defaults(func=_run_build)


def _run_build(args: argparse.Namespace) -> int:
    from builder.build import BuildOptions, build
    from builder.manifest import BuildError
    from builder.plan import CONFIGS

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
        progress=_progress,
    )
    try:
        opts.validate()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        manifest = build(opts)
    except BuildError as exc:
        raise UsageError(str(exc)) from None
    for config, entry in manifest["configs"].items():
        rows = sum(s["num_rows"] for s in entry["splits"].values() if not s.get("alias_of"))
        skipped = entry.get("skipped") or {}
        extra = f", skipped inputs: {skipped}" if skipped else ""
        print(f"{config}: {len(entry['splits'])} splits, {rows} rows{extra}")
    print(
        f"package ready: {args.out} (load with datasets.load_dataset({str(args.out)!r}, CONFIG, split=...))"
    )
    return 0


# --------------------------------------------------------------------------- verify
def _add_verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify", help="re-hash shards and check counts, schema, YAML, loading, id pairing"
    )
    p.add_argument("out", type=Path)
    p.add_argument("--no-load", action="store_true", help="skip loading every split via datasets")
    p.set_defaults(func=_run_verify)


def _run_verify(args: argparse.Namespace) -> int:
    from builder.verify import verify

    if not args.out.is_dir():
        raise UsageError(f"{args.out}: no such folder")
    problems = verify(args.out, load=not args.no_load)
    for p in problems:
        print(f"ERROR {p}", file=sys.stderr)
    if problems:
        print(f"{args.out}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{args.out}: OK")
    return 0


#: Sub-commands: name -> (help, parser builder or the module whose ``add_parser`` adds it).
#: Modules are imported only for the command being run (torch makes imports take seconds).
COMMANDS: dict[str, tuple[str, Callable[[argparse._SubParsersAction], None] | str]] = {
    "build": ("build ER-C / Mito-C / Nucleus-C into a Hub package folder", _add_build),
    "verify": ("re-hash shards and check counts, schema, YAML, loading, id pairing", _add_verify),
    "train-reference": ("train the reference U-Net of a package's config", "builder.reference"),
    "evaluate": ("stream a benchmark into a model; IoU, Dice, robustness", "builder.evaluate"),
    "publish": ("upload a verified package to the Hugging Face Hub", "builder.publish"),
    "train-synthesizer": ("train the pix2pix mask-to-image generator", "builder.synthesizer"),
}


def make_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or (``only``) one with just that sub-command's options loaded."""
    parser = _Parser(prog="fluorobench-c", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (help_text, add) in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=help_text)
        elif isinstance(add, str):
            importlib.import_module(add).add_parser(sub)
        else:
            add(sub)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if arg in ("-h", "--help", "--version"):
            return None
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = make_parser(_command_of(argv)).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("datasets", "huggingface_hub", "fsspec", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"fluorobench-c: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # Under ``python -m builder.cli`` this file runs as __main__ *and* is imported as
    # builder.cli by the sub-commands: use the imported one, so its UsageError is caught.
    from builder.cli import main as _main

    sys.exit(_main())

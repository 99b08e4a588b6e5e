"""``fluorobench-c verify``: re-hash shards and check counts, schema, YAML, loading, pairing."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from synthesis.runtime.errors import InputError


def add_parser(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("out", type=Path, help="the package folder")
    p.add_argument("--no-load", action="store_true", help="skip loading every split via datasets")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from builder.package.verify import verify

    if not args.out.is_dir():
        raise InputError(f"{args.out}: no such folder")
    problems = verify(args.out, load=not args.no_load)
    for p in problems:
        print(f"ERROR {p}", file=sys.stderr)
    if problems:
        print(f"{args.out}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{args.out}: OK")
    return 0

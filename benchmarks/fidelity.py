"""Fidelity: does a model's drop on a synthetic split predict its drop on real images
degraded the same way? The benchmark run of ``fluorobench-c fidelity``
(:mod:`builder.experiments.fidelity`, docs/definitions.md#fidelity), timed, with the machine,
on BBBC038 from the shared data by default; the curves go to docs/images.

    python benchmarks/fidelity.py [fluorobench-c fidelity options] [--plot PNG] [--json]
"""

from __future__ import annotations

import time
from pathlib import Path

import _common

from builder.cli.fidelity import add_arguments, options
from builder.experiments.fidelity import (
    fidelity,
    fidelity_markdown,
    plot_curves,
    write_fidelity_reports,
)

PLOT = _common.ROOT / "docs" / "images" / "fidelity_nucleus.png"


def main() -> int:
    ap = _common.parser(__doc__)
    add_arguments(ap, source=_common.BBBC038, out=Path("out/fidelity"))
    ap.add_argument("--plot", type=Path, default=PLOT, help="the curves (PNG)")
    _common.add_threads(ap)
    _common.add_json(ap)
    args = ap.parse_args()
    _common.set_threads(args)
    if not args.source.exists():
        raise SystemExit(f"{args.source}: no such source (BBBC038 stage1_train or any real source)")
    opts = options(args)
    t0 = time.perf_counter()
    results = fidelity(opts)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    results["machine"] = _common.machine()
    write_fidelity_reports(args.out, results)
    plot_curves(results, args.plot)
    results["plot"] = _common.shown(args.plot)
    _common.emit(results, args.json, report)
    return 0


def report(r: dict) -> None:
    print(fidelity_markdown(r))
    print(f"{r['machine']}; {r['seconds']} s; plot: {r['plot']}")


if __name__ == "__main__":
    raise SystemExit(main())

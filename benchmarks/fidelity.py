"""Fidelity: does a model's drop on a synthetic split predict its drop on real images
degraded the same way? The benchmark run of ``fluorobench-c fidelity``
(:mod:`builder.experiments.fidelity`, docs/definitions.md#fidelity), timed, with the machine,
on BBBC038 from the shared data by default; the curves go to docs/images.

    python benchmarks/fidelity.py [--train 160 --validation 20 --epochs 15] [--json]
"""

from __future__ import annotations

import time
from pathlib import Path

import _common

from builder.experiments.fidelity import (
    FidelityOptions,
    fidelity,
    fidelity_markdown,
    plot_curves,
    write_fidelity_reports,
)

PLOT = _common.ROOT / "docs" / "images" / "fidelity_nucleus.png"


def main() -> int:
    ap = _common.parser(__doc__)
    ap.add_argument("--source", type=Path, default=_common.BBBC038, help="real masks and images")
    ap.add_argument("--config", default="nucleus")
    ap.add_argument("--train", type=int, default=160, help="training tiles")
    ap.add_argument("--validation", type=int, default=20, help="validation tiles")
    ap.add_argument("--test", type=int, default=1000, help="at most this many real test tiles")
    ap.add_argument("--epochs", type=int, default=15, help="U-Net epochs per renderer")
    ap.add_argument("--seed", type=int, default=0, help="build and training seed")
    ap.add_argument("--renderers", nargs="+", default=["physics", "naive", "gan"])
    ap.add_argument("--weights", default=None, help="GAN weights folder (gan is skipped without)")
    ap.add_argument("--work", type=Path, default=Path("out/fidelity"), help="packages, models")
    ap.add_argument("--plot", type=Path, default=PLOT, help="the curves (PNG)")
    ap.add_argument("--no-real-model", dest="real_model", action="store_false")
    ap.add_argument("--overwrite", action="store_true")
    _common.add_threads(ap)
    _common.add_json(ap)
    args = ap.parse_args()
    _common.set_threads(args)
    if not args.source.exists():
        raise SystemExit(f"{args.source}: no such source (BBBC038 stage1_train or any real source)")
    opts = FidelityOptions(
        source=str(args.source),
        work=args.work,
        config=args.config,
        renderers=tuple(args.renderers),
        weights=args.weights,
        train=args.train,
        validation=args.validation,
        test=args.test,
        epochs=args.epochs,
        seed=args.seed,
        real_model=args.real_model,
        overwrite=args.overwrite,
    )
    t0 = time.perf_counter()
    results = fidelity(opts)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    results["machine"] = _common.machine()
    write_fidelity_reports(args.work, results)
    plot_curves(results, args.plot)
    results["plot"] = _common.shown(args.plot)
    _common.emit(results, args.json, report)
    return 0


def report(r: dict) -> None:
    print(fidelity_markdown(r))
    print(f"{r['machine']}; {r['seconds']} s; plot: {r['plot']}")


if __name__ == "__main__":
    raise SystemExit(main())

"""Renderer ablation (issue 27): which renderer component costs real-image IoU?

The real-image IoU (native noise) of U-Nets trained on the physics renderer with one
component removed or swapped, and on the naive rendering with one added
(:mod:`builder.experiments.ablation`), on BBBC038 from the shared data by default, with the
wall time of each variant and the machine.

    python benchmarks/ablation.py [--variants physics,-texture ...] [--seeds 3] [--epochs 15]
        [--out out/ablation] [--json]

Per variant, once, the realism measures of its train images against the real train tiles
(``synthesis.realism``: five distances, the domain score, and the feature distance in a U-Net
trained on the real train tiles), its quick transfer (a U-Net trained 3 epochs on it,
scored on the real train tiles) and, per measure, the Spearman
correlation across the variants with the real-image IoU: which measures agree with transfer.

Variants by name or file name (``-texture`` or ``no-texture``; a name starting with ``-``
needs ``--variants=-texture`` or a comma list). A rerun with the same settings reuses every
model, score and measure in ``--out/models`` (measures missing there are computed, without
training); ``ablation.json`` and ``ablation.md`` go to ``--out``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import _common

from builder.cli import common
from builder.experiments.ablation import (
    VARIANTS,
    AblationOptions,
    ablation,
    ablation_markdown,
    variant_by_name,
    write_ablation_reports,
)
from synthesis.runtime.errors import InputError


def main() -> int:
    ap = _common.parser(__doc__)
    ap.add_argument("--source", type=Path, default=_common.BBBC038, help="real source")
    ap.add_argument("--out", type=Path, default=Path("out/ablation"), help="models and reports")
    ap.add_argument(
        "--variants",
        action=common.ListAction,
        default=list(VARIANTS),
        metavar="NAME",
        help="variants (default all): " + ", ".join(VARIANTS),
    )
    ap.add_argument("--seeds", type=common.counts, default=3, help="training seeds 0..N-1")
    ap.add_argument("--epochs", type=common.counts, default=15, help="U-Net epochs")
    ap.add_argument("--train", type=common.counts, default=160, help="training tiles")
    ap.add_argument("--validation", type=common.counts, default=20, help="validation tiles")
    ap.add_argument("--test", type=common.counts, default=1000, help="at most this many test tiles")
    common.add_seed(ap)
    common.add_device(ap)
    _common.add_threads(ap)
    _common.add_json(ap)
    args = ap.parse_args()
    _common.set_threads(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not args.source.exists():
        raise SystemExit(f"{args.source}: no such source (BBBC038 stage1_train or any real source)")
    try:
        names = tuple(variant_by_name(n).name for n in args.variants)
    except InputError as e:
        raise SystemExit(str(e)) from None
    opts = AblationOptions(
        source=str(args.source),
        out=args.out,
        variants=names,
        seeds=args.seeds,
        epochs=args.epochs,
        train=args.train,
        validation=args.validation,
        test=args.test,
        seed=args.seed,
        device=args.device,
    )
    t0 = time.perf_counter()
    results = ablation(opts)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    results["machine"] = _common.machine(results["device"], threads=True)
    write_ablation_reports(args.out, results)
    _common.emit(results, args.json, report)
    return 0


def report(r: dict) -> None:
    print(ablation_markdown(r))
    print(f"{r['machine']}; {r['seconds']} s")


if __name__ == "__main__":
    raise SystemExit(main())

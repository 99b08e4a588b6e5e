"""Renderer fit: the physics renderer's background and haze ranges for nuclei, and the SNR
range of the train split, fitted by code to the BBBC038 *train* tiles
(:mod:`synthesis.render.fit`, docs/definitions.md#renderer-fit).

Prints every candidate's distance to the real statistics, the winner, the shipped settings'
distance, and the quantiles of each statistic for real tiles and for renders, with the
machine and the time. The test tiles are never read.

    python benchmarks/fit_renderer.py [--train 160] [--json]
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import _common

from synthesis.groundtruth.sources import open_source, stack_items
from synthesis.levels import TRAIN_SNR
from synthesis.render.fit import GRID, fit_background, fit_train_snr
from synthesis.render.physics import RENDER_SETTINGS


def main() -> int:
    ap = _common.parser(__doc__)
    ap.add_argument("--source", type=Path, default=_common.BBBC038)
    ap.add_argument("--train", type=int, default=160, help="train tiles fitted on")
    ap.add_argument("--seed", type=int, default=0)
    _common.add_threads(ap)
    _common.add_json(ap)
    args = ap.parse_args()
    _common.set_threads(args)
    if not args.source.exists():
        raise SystemExit(f"{args.source}: no such source")
    src = open_source(
        str(args.source), "nucleus", seed=args.seed, counts={"train": args.train, "validation": 1}
    )
    items = src.load(src.ids("train"))
    x, m, inst = stack_items(items)
    t0 = time.perf_counter()
    fit = fit_background(x, m, instances=inst, seed=args.seed)
    snr_range, native = fit_train_snr(x, m)
    shipped = RENDER_SETTINGS["nucleus"]
    shipped_key = {k: getattr(shipped, k) for k in GRID}
    result = {
        "machine": _common.machine(),
        "tiles": len(items),
        "seconds": round(time.perf_counter() - t0, 1),
        "fitted": {k: getattr(fit.settings, k) for k in GRID},
        "distance": fit.distance,
        "shipped": shipped_key,
        "shipped_distance": next((d for r, d in fit.table if r == shipped_key), None),
        "shipped_is_fitted": asdict(fit.settings) == asdict(shipped),
        "table": [[r, d] for r, d in fit.table],
        "real": fit.real,
        "rendered": fit.rendered,
        "train_snr_fitted": list(snr_range),
        "train_snr_shipped": list(TRAIN_SNR["nucleus"]),
        "native_snr_quantiles": {
            str(q): float(native.quantile(q)) for q in (0.05, 0.25, 0.5, 0.75, 0.95)
        },
    }
    _common.emit(result, args.json, report)
    return 0


def report(r: dict) -> None:
    print(f"{r['machine']}; {r['tiles']} train tiles; {r['seconds']} s")
    for ranges, d in r["table"][:8]:
        print(f"  {d:.4f}  {ranges}")
    print(f"fitted {r['fitted']} distance {r['distance']:.4f}")
    print(f"shipped {r['shipped']} distance {r['shipped_distance']}")
    print("shipped settings are the fitted ones:", r["shipped_is_fitted"])
    for name in r["real"]:
        real = " ".join(f"{v:.3f}" for v in r["real"][name])
        rend = " ".join(f"{v:.3f}" for v in r["rendered"][name])
        print(f"  {name:7s} real {real} | rendered {rend}  (quantiles 5 25 50 75 95 %)")
    print(
        f"train SNR range: fitted {r['train_snr_fitted']}, shipped {r['train_snr_shipped']} "
        f"(native SNR of the train tiles, quantiles 5 25 50 75 95 %: "
        + " ".join(f"{v:.1f}" for v in r["native_snr_quantiles"].values())
        + ")"
    )


if __name__ == "__main__":
    raise SystemExit(main())

"""Renderer fit: the physics renderer's background and haze ranges, and the SNR range of the
train split, fitted by code to a real source's *train* tiles (:mod:`synthesis.render.fit`,
docs/definitions.md#renderer-fit), and checked on its held-out *test* tiles.

Nucleus (default): BBBC038 and its masks. Mito (``--config mito``): the shared real
mitochondria, an images-only source (pseudo-masks), resampled to Mito-C's stated pixel size
(``--source-pixel-size``, default ``hcs_wt_mito=0.136`` as the fidelity run).

Prints every candidate's distance to the real statistics, the winner, the shipped settings'
distance, the quantiles of each statistic for real tiles and for renders, and the fitted and
shipped settings' distance to the held-out test tiles (never fitted on), with the machine and
the time.

    python benchmarks/fit_renderer.py [--config nucleus|mito] [--train N] [--json]
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import _common

from builder.cli import common
from synthesis.groundtruth.sources import open_source, stack_items
from synthesis.levels import TRAIN_SNR
from synthesis.render.fit import GRID, fit_background, fit_train_snr, settings_distance
from synthesis.render.physics import RENDER_SETTINGS

SOURCES = {"nucleus": _common.BBBC038, "mito": _common.MITO_DATA}
#: The HCS field states no pixel size; the fidelity run's estimate (benchmarks/RESULTS.md).
PIXEL_SIZES = {"nucleus": [], "mito": ["hcs_wt_mito=0.136"]}


def main() -> int:
    ap = _common.parser(__doc__)
    ap.add_argument("--config", choices=sorted(SOURCES), default="nucleus")
    ap.add_argument("--source", type=Path, default=None, help="default: the config's shared data")
    ap.add_argument("--train", type=int, default=None, help="train tiles fitted on (default all)")
    common.add_source_pixel_size(ap)
    ap.add_argument("--seed", type=int, default=0)
    _common.add_threads(ap)
    _common.add_json(ap)
    args = ap.parse_args()
    _common.set_threads(args)
    source = args.source or SOURCES[args.config]
    if not source.exists():
        raise SystemExit(f"{source}: no such source")
    sizes = common.source_pixel_sizes(args.source_pixel_size or PIXEL_SIZES[args.config])
    src = open_source(
        str(source),
        args.config,
        seed=args.seed,
        counts={"train": args.train or 0, "validation": 1},
        pixel_sizes=sizes or None,
    )
    x, m, inst = stack_items(src.load(src.ids("train")))
    t0 = time.perf_counter()
    fit = fit_background(x, m, instances=inst, structure=args.config, seed=args.seed)
    snr_range, native = fit_train_snr(x, m)
    shipped = RENDER_SETTINGS[args.config]
    shipped_key = {k: getattr(shipped, k) for k in GRID}
    result = {
        "machine": _common.machine(),
        "config": args.config,
        "source": str(source),
        "pixel_sizes": sizes,
        "tiles": int(x.shape[0]),
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
        "train_snr_shipped": list(TRAIN_SNR[args.config]),
        "native_snr_quantiles": {
            str(q): float(native.quantile(q)) for q in (0.05, 0.25, 0.5, 0.75, 0.95)
        },
        "held_out": held_out(src, args.config, fit.settings, shipped, args.seed),
    }
    _common.emit(result, args.json, report)
    return 0


def held_out(src, config: str, fitted, shipped, seed: int) -> dict:
    """The fitted and shipped settings' statistics distance to the test tiles (not fitted on)."""
    ids = src.ids("test")
    if not ids:
        return {"tiles": 0}
    x, m, inst = stack_items(src.load(ids))
    out: dict = {"tiles": len(ids)}
    for name, settings in (("fitted", fitted), ("shipped", shipped)):
        out[name] = settings_distance(settings, x, m, instances=inst, structure=config, seed=seed)
    return out


def report(r: dict) -> None:
    print(f"{r['machine']}; {r['config']}: {r['tiles']} train tiles; {r['seconds']} s")
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
    h = r["held_out"]
    if h["tiles"]:
        print(
            f"held-out test tiles ({h['tiles']}): distance fitted {h['fitted']:.4f}, "
            f"shipped {h['shipped']:.4f}"
        )


if __name__ == "__main__":
    raise SystemExit(main())

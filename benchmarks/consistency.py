"""Does consistency track the label-based curves? Per family, on a package with true masks.

Consistency (``docs/definitions.md#consistency``) scores a model without labels: the IoU of
its prediction on a degraded tile against its own prediction on the same tile undegraded. It
is what ``fluorobench-c evaluate --consistency`` reports for real images that have only
pseudo-masks. On a synthetic package every mask is exact, so both curves can be measured on
the same splits: this script evaluates a model (the package's reference U-Net by default)
with consistency on, and per family compares, across the family's degraded levels,

- ``100 x consistency`` with ``robustness = 100 x IoU / IoU(test)`` (both 100 undegraded):
  Pearson's r and Spearman's rho (the same against IoU, of which robustness is a multiple),
  and the mean absolute difference in points;
- and the same over every degraded split of every family pooled.

The undegraded point (``snr_8`` = ``test``, 100 on both) is left out: it would agree by
construction. A correlation is undefined (``—``) where a curve is flat or has under 3 levels.

    fluorobench-c build PKG --config mito --test 16 --train 32 --validation 8 --train-epochs 6
    python benchmarks/consistency.py PKG [--config mito] [--attacks pgd:2 pgd:8] [--json]
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import _common

#: Families that are no degradation (no curve).
_SKIP = ("reference", "clean", "real", "other")


def _correlations(c: list[float], r: list[float]) -> dict[str, float | None]:
    """Pearson's r, Spearman's rho (average ranks for ties) and the mean |c - r|."""
    from scipy import stats

    out: dict[str, float | None] = {"pearson": None, "spearman": None}
    if len(c) >= 3 and len(set(c)) > 1 and len(set(r)) > 1:
        out["pearson"] = float(stats.pearsonr(c, r).statistic)
        out["spearman"] = float(stats.spearmanr(c, r).statistic)
    out["mean_abs_diff"] = sum(abs(a - b) for a, b in zip(c, r, strict=True)) / len(c)
    return out


def compare(results: dict[str, Any]) -> dict[str, Any]:
    """Per family (and pooled): the levels, both curves and how they agree."""
    curves: dict[str, list[tuple[float, str, float, float, float]]] = {}
    for split, r in results["splits"].items():
        if r["family"] in _SKIP or r.get("consistency") is None or r["robustness"] is None:
            continue
        if split == "snr_8":  # the test files: 100 on both by construction
            continue
        point = (r["level"], split, r["iou"], r["robustness"], 100 * r["consistency"])
        curves.setdefault(r["family"], []).append(point)
    families: dict[str, Any] = {}
    pooled_c: list[float] = []
    pooled_r: list[float] = []
    for family, pts in curves.items():
        pts.sort()
        rob = [p[3] for p in pts]
        con = [p[4] for p in pts]
        pooled_r += rob
        pooled_c += con
        families[family] = {
            "levels": [p[0] for p in pts],
            "splits": [p[1] for p in pts],
            "iou": [p[2] for p in pts],
            "robustness": rob,
            "consistency_x100": con,
            **_correlations(con, rob),
        }
    pooled = _correlations(pooled_c, pooled_r) if pooled_c else {}
    return {"families": families, "pooled": {"splits": len(pooled_c), **pooled}}


def _cell(value: float | None, digits: int = 2) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def report(result: dict[str, Any]) -> None:
    print(f"# consistency vs label-based robustness: {result['config']}, {result['model']}")
    print(
        f"package {result['package']}: {result['test_images']} test images, test IoU "
        f"{result['test_iou']:.3f}; evaluate with --consistency: {result['seconds']:.0f} s"
    )
    print(f"machine: {result['machine']}")
    print()
    print("| family | levels | Pearson r | Spearman rho | mean abs diff (points) |")
    print("|---|---:|---:|---:|---:|")
    for family, f in result["families"].items():
        print(
            f"| {family} | {len(f['levels'])} | {_cell(f['pearson'])} | {_cell(f['spearman'])} "
            f"| {_cell(f['mean_abs_diff'], 1)} |"
        )
    p = result["pooled"]
    if p:
        print(
            f"| all, pooled | {p['splits']} | {_cell(p['pearson'])} | {_cell(p['spearman'])} "
            f"| {_cell(p['mean_abs_diff'], 1)} |"
        )
    print()
    print("| split | IoU | robustness | 100 x consistency | difference |")
    print("|---|---:|---:|---:|---:|")
    for f in result["families"].values():
        for split, iou, rob, con in zip(
            f["splits"], f["iou"], f["robustness"], f["consistency_x100"], strict=True
        ):
            print(f"| `{split}` | {iou:.3f} | {rob:.1f} | {con:.1f} | {con - rob:+.1f} |")


def main(argv: list[str] | None = None) -> None:
    parser = _common.parser(__doc__)
    parser.add_argument("package", help="a built package folder (true masks)")
    parser.add_argument("--config", default="mito")
    parser.add_argument("--model", default=None, help="as evaluate's --model (default: reference)")
    parser.add_argument(
        "--attacks", nargs="*", default=[], metavar="METHOD:EPS", help="white-box attacks too"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    _common.add_device(parser, "cpu")
    _common.add_threads(parser)
    _common.add_json(parser)
    args = parser.parse_args(argv)
    _common.set_threads(args)

    from builder.evaluation.scoring import evaluate, parse_attacks

    t0 = time.perf_counter()
    results = evaluate(
        args.package,
        args.config,
        model=args.model,
        attacks=parse_attacks(args.attacks),
        device=args.device,
        batch_size=args.batch_size,
        consistency=True,
    )
    seconds = time.perf_counter() - t0
    result = {
        "config": args.config,
        "package": _common.shown(Path(args.package).resolve()),
        "model": results["model"]["description"],
        "test_images": results["splits"]["test"]["images"],
        "test_iou": results["splits"]["test"]["iou"],
        "seconds": seconds,
        "machine": _common.machine(args.device, threads=True, load=True),
        **compare(results),
    }
    _common.emit(result, args.json, report)


if __name__ == "__main__":
    main()

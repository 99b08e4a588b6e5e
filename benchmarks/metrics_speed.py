"""What the structure metrics add to ``evaluate``'s time: IoU only against every metric.

``fluorobench-c evaluate`` scores every split by IoU and Dice and, by default
(``--metrics all``), by the structure metrics of ``synthesis.structure_metrics``: clDice and
the Betti-number errors (er, mito) or AP, F1 and PQ (nucleus), and HD95 and NSD
(``docs/definitions.md#structure-metrics-in-evaluate``). This script times ``evaluate`` on a
package with ``metrics="iou"`` and with ``metrics="all"``, per config, the two interleaved
(each round runs both, so both see the same load on a shared machine), keeps the best of
``--repeats`` rounds, and prints the ratio all / iou per config and over the configs
together, of wall time and of this process's CPU time (``time.process_time``: all its
threads; on a machine shared with other jobs it moves far less with their load than the wall
time does). Target: at most 1.2. It also reports how much of the ``all`` run the structure
metrics themselves took (the accumulators' ``update``: skeletons, Betti numbers, object
matching, HD95/NSD), and the one-time cost of importing MONAI (HD95 and NSD are MONAI's),
measured in a fresh process that has imported torch already: an in-process best of several
rounds does not see it, a single ``fluorobench-c evaluate`` pays it once.

The quickstart package is built when ``--package`` is not given (the README's quickstart
command, in ``--build-into``, default ``fluorobench-c``; a complete build there is reused).

    python benchmarks/metrics_speed.py [--package PKG | --build-into DIR] [--configs er mito nucleus]
                                       [--repeats 2] [--device cpu] [--json]
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common

#: The README's quickstart build (all configs, every split).
QUICKSTART = ["--train", "32", "--validation", "8", "--test", "4", "--train-epochs", "6"]


def _package(args: Any) -> Path:
    if args.package:
        return Path(args.package)
    from builder.cli import main as cli

    out = Path(args.build_into)
    code = cli(["build", str(out), *QUICKSTART, "--device", args.device])
    if code != 0:
        raise SystemExit(f"the quickstart build into {out} failed (exit {code})")
    return out


def monai_import_seconds() -> float:
    """Wall time of ``import monai.metrics.utils`` in a fresh process after ``import torch``."""
    code = (
        "import time, torch; t = time.perf_counter(); import monai.metrics.utils; "
        "print(time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def measure(package: Path, configs: list[str], repeats: int, device: str) -> dict[str, Any]:
    """Per config the best time of ``evaluate`` with IoU only and with every metric, and the
    time spent inside the structure metrics in the best ``all`` run."""
    from builder.evaluation import scoring

    inside = [0.0]
    original = scoring.StructureScores.update

    def timed_update(self: Any, *a: Any, **k: Any) -> None:
        t0 = time.perf_counter()
        original(self, *a, **k)
        inside[0] += time.perf_counter() - t0

    scoring.StructureScores.update = timed_update  # type: ignore[method-assign]
    per_config: dict[str, Any] = {}
    try:
        for config in configs:
            best = {"iou": float("inf"), "all": float("inf")}
            cpu = {"iou": float("inf"), "all": float("inf")}
            structure = float("inf")
            images = 0
            for _ in range(repeats):
                for metrics in ("iou", "all"):
                    inside[0] = 0.0
                    t0, c0 = time.perf_counter(), time.process_time()
                    results = scoring.evaluate(str(package), config, device=device, metrics=metrics)
                    seconds = time.perf_counter() - t0
                    cpu[metrics] = min(cpu[metrics], time.process_time() - c0)
                    if seconds < best[metrics]:
                        best[metrics] = seconds
                        if metrics == "all":
                            structure = inside[0]
                    images = sum(r["images"] for r in results["splits"].values())
            per_config[config] = {
                "iou_s": best["iou"],
                "all_s": best["all"],
                "ratio": best["all"] / best["iou"],
                "iou_cpu_s": cpu["iou"],
                "all_cpu_s": cpu["all"],
                "cpu_ratio": cpu["all"] / cpu["iou"],
                "structure_s": structure,
                "images": images,
            }
    finally:
        scoring.StructureScores.update = original  # type: ignore[method-assign]
    total = {k: sum(v[k] for v in per_config.values()) for k in ("iou_s", "all_s")}
    total_cpu = {k: sum(v[k] for v in per_config.values()) for k in ("iou_cpu_s", "all_cpu_s")}
    return {
        "configs": per_config,
        "total": {
            **total,
            "ratio": total["all_s"] / total["iou_s"],
            **total_cpu,
            "cpu_ratio": total_cpu["all_cpu_s"] / total_cpu["iou_cpu_s"],
        },
    }


def report(result: dict[str, Any]) -> None:
    print(f"# evaluate: IoU only vs every metric ({result['package']})")
    print(f"machine: {result['machine']}; best of {result['repeats']} interleaved rounds")
    print()
    print(
        "| config | images scored | IoU only (s) | all metrics (s) | ratio (wall) "
        "| IoU only (CPU s) | all metrics (CPU s) | ratio (CPU) | in the structure metrics (s) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for config, v in result["configs"].items():
        print(
            f"| {config} | {v['images']} | {v['iou_s']:.1f} | {v['all_s']:.1f} | "
            f"{v['ratio']:.3f} | {v['iou_cpu_s']:.1f} | {v['all_cpu_s']:.1f} | "
            f"{v['cpu_ratio']:.3f} | {v['structure_s']:.1f} |"
        )
    t = result["total"]
    print(
        f"| all configs | | {t['iou_s']:.1f} | {t['all_s']:.1f} | {t['ratio']:.3f} "
        f"| {t['iou_cpu_s']:.1f} | {t['all_cpu_s']:.1f} | {t['cpu_ratio']:.3f} | |"
    )
    print()
    print(
        f"importing MONAI (once per process, not in the times above): "
        f"{result['monai_import_s']:.1f} s"
    )
    for name, key in (("wall", "ratio"), ("CPU", "cpu_ratio")):
        verdict = "meets" if t[key] <= 1.2 else "misses"
        print(f"ratio all / iou ({name}): {t[key]:.3f} ({verdict} the target of at most 1.2)")


def main(argv: list[str] | None = None) -> None:
    parser = _common.parser(__doc__)
    parser.add_argument("--package", default=None, help="a built package (default: build one)")
    parser.add_argument(
        "--build-into", default="fluorobench-c", help="where to build the quickstart package"
    )
    parser.add_argument("--configs", nargs="+", default=["er", "mito", "nucleus"])
    parser.add_argument("--repeats", type=int, default=2)
    _common.add_device(parser, "cpu")
    _common.add_threads(parser)
    _common.add_json(parser)
    args = parser.parse_args(argv)
    _common.set_threads(args)
    package = _package(args)
    result = {
        "package": _common.shown(package.resolve()),
        "repeats": args.repeats,
        "machine": _common.machine(args.device, threads=True, load=True),
        **measure(package, args.configs, args.repeats, args.device),
        "monai_import_s": monai_import_seconds(),
    }
    _common.emit(result, args.json, report)


if __name__ == "__main__":
    main()

"""Reports of an evaluation: ``results.json``, ``results.md`` and ``robustness.png``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from synthesis.runtime.files import atomic_write_bytes, temporary_name


def write_reports(out: Path, results: dict[str, Any], *, stem: str | None = None) -> None:
    """``results.json``, ``results.md`` and ``robustness.png`` in ``out`` (with ``stem``:
    ``<stem>.json``, ``<stem>.md`` and ``<stem>-robustness.png``)."""
    out.mkdir(parents=True, exist_ok=True)
    base = stem or "results"
    data = (json.dumps(results, indent=2, sort_keys=True) + "\n").encode()
    atomic_write_bytes(out / f"{base}.json", data)
    atomic_write_bytes(out / f"{base}.md", results_markdown(results).encode())
    plot_robustness(results, out / (f"{stem}-robustness.png" if stem else "robustness.png"))


def write_eval_results(
    out: Path, results: dict[str, Any], dataset_id: str, *, date: str | None = None
) -> Path:
    """The Hub's evaluation-results file of ``results`` for the benchmark ``dataset_id``:
    ``out/.eval_results/fluorobench-c-<config>.yaml``, ready to copy into the model's repo
    (:mod:`builder.package.eval_results`)."""
    from builder.package.eval_results import (
        eval_result_entries,
        eval_results_name,
        eval_results_yaml,
    )

    entries = eval_result_entries(results, dataset_id, date=date)
    path = out / eval_results_name(results["config"])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, eval_results_yaml(entries))
    return path


def results_markdown(results: dict[str, Any]) -> str:
    scored = "consistency" in results  # evaluated with --consistency
    head = "| split | family | level | images | IoU | Dice | IoU (mean/img) | robustness |"
    rule = "|---|---|---:|---:|---:|---:|---:|---:|"
    lines = [f"# {results['config']}: {results['model']['description']}", ""]
    lines += [head + (" consistency |" if scored else ""), rule + ("---:|" if scored else "")]
    for split, r in results["splits"].items():
        rob = "—" if r.get("robustness") is None else f"{r['robustness']:.1f}"
        level = "" if r["level"] is None or math.isnan(r["level"]) else f"{r['level']:g}"
        row = (
            f"| `{split}` | {r['family']} | {level} | {r['images']} | {r['iou']:.3f} | {r['dice']:.3f} "
            f"| {r['iou_mean']:.3f} | {rob} |"
        )
        if scored:
            row += " — |" if r.get("consistency") is None else f" {r['consistency']:.3f} |"
        lines.append(row)
    if results["families"]:
        if scored:
            lines += ["", "| family | mean robustness | mean consistency |", "|---|---:|---:|"]
            lines += [
                f"| {f} | {_number(v.get('mean_robustness'), 1)} "
                f"| {_number(v.get('mean_consistency'), 3)} |"
                for f, v in results["families"].items()
            ]
        else:
            lines += ["", "| family | mean robustness |", "|---|---:|"]
            lines += [
                f"| {f} | {v['mean_robustness']:.1f} |" for f, v in results["families"].items()
            ]
    if scored:
        lines += [
            "",
            "Consistency needs no labels: the IoU (aggregate over pixels) of the model's "
            "prediction on each row against its own prediction on the same row undegraded "
            "(`test` for the synthetic families and white-box attacks, `real` for the "
            "real-image families). It says how much a degradation changes the model's answer, "
            "not whether the answer is right.",
        ]
        if results["consistency"].get("pseudo_masks"):
            lines += [
                "",
                "The masks of `real` and its corruptions are pseudo-masks (a classical "
                "segmentation): their IoU is agreement with that segmentation, not accuracy.",
            ]
    return "\n".join(lines) + "\n"


def _number(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def plot_robustness(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {
        "noise (SNR)": ["snr"],
        "blur (level)": ["sib", "svb"],
        "attacks (ε, grey levels)": [],
    }
    curves: dict[str, list[tuple[float, float]]] = {}
    agreement: dict[str, list[tuple[float, float]]] = {}  # consistency, when scored
    for r in results["splits"].values():
        if r["family"] in ("reference", "clean", "real", "other"):
            continue
        curves.setdefault(r["family"], []).append((r["level"], r["iou"]))
        if r.get("consistency") is not None:
            agreement.setdefault(r["family"], []).append((r["level"], r["consistency"]))
    panels["noise (SNR)"] += [f for f in curves if f == "real_snr"]
    panels["blur (level)"] += [f for f in curves if f in ("real_sib", "real_svb")]
    panels["attacks (ε, grey levels)"] = [
        f for f in curves if f not in ("snr", "sib", "svb", "real_snr", "real_sib", "real_svb")
    ]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=True)
    ref = results["splits"].get("test", {}).get("iou")
    for ax, (title, fams) in zip(axes, panels.items(), strict=True):
        for f in fams:
            pts = sorted(curves.get(f, []))
            if pts:
                (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f)
                agree = sorted(agreement.get(f, []))
                if agree:
                    ax.plot(
                        [p[0] for p in agree],
                        [p[1] for p in agree],
                        ls="--",
                        marker="x",
                        color=line.get_color(),
                        label=f"{f} consistency",
                    )
        if ref is not None:
            ax.axhline(ref, color="grey", ls="--", lw=1, label="test (SNR 8)")
        if title.startswith("attacks"):
            ax.set_xscale("log", base=2)
        if title.startswith("noise"):
            ax.invert_xaxis()  # severity grows to the right
        ax.set_title(title)
        ax.set_xlabel("severity")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("IoU (dashed: consistency)" if agreement else "IoU")
    fig.suptitle(f"{results['config']}: {results['model']['description']}", fontsize=10)
    fig.tight_layout()
    tmp = temporary_name(path)
    fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    tmp.replace(path)

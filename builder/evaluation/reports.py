"""Reports of an evaluation: ``results.json``, ``results.md``, ``robustness.png`` and, with the
structure metrics, one plot per metric (``metric-<name>.png``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from builder.package.eval_results import METRIC_LABELS
from synthesis.runtime.files import atomic_write_bytes, temporary_name


def metric_plot_names(results: dict[str, Any], stem: str | None = None) -> dict[str, str]:
    """metric -> the file name of its plot (``metric-<name>.png``, with ``stem``:
    ``<stem>-metric-<name>.png``), for the structure metrics ``results`` holds."""
    reported = (results.get("metrics") or {}).get("reported", [])
    return {m: f"{stem}-metric-{m}.png" if stem else f"metric-{m}.png" for m in reported}


def write_reports(out: Path, results: dict[str, Any], *, stem: str | None = None) -> None:
    """``results.json``, ``results.md`` and ``robustness.png`` in ``out`` (with ``stem``:
    ``<stem>.json``, ``<stem>.md`` and ``<stem>-robustness.png``), and one plot per structure
    metric (:func:`metric_plot_names`)."""
    out.mkdir(parents=True, exist_ok=True)
    base = stem or "results"
    data = (json.dumps(results, indent=2, sort_keys=True) + "\n").encode()
    atomic_write_bytes(out / f"{base}.json", data)
    atomic_write_bytes(out / f"{base}.md", results_markdown(results).encode())
    plot_robustness(results, out / (f"{stem}-robustness.png" if stem else "robustness.png"))
    for metric, name in metric_plot_names(results, stem).items():
        plot_robustness(results, out / name, metric=metric)


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
    reported = (results.get("metrics") or {}).get("reported", [])
    head = "| split | family | level | images | IoU | Dice | IoU (mean/img) | robustness |"
    rule = "|---|---|---:|---:|---:|---:|---:|---:|"
    head += "".join(f" {METRIC_LABELS[m]} |" for m in reported)
    rule += "---:|" * len(reported)
    lines = [f"# {results['config']}: {results['model']['description']}", ""]
    lines += [head + (" consistency |" if scored else ""), rule + ("---:|" if scored else "")]
    for split, r in results["splits"].items():
        rob = "—" if r.get("robustness") is None else f"{r['robustness']:.1f}"
        level = "" if r["level"] is None or math.isnan(r["level"]) else f"{r['level']:g}"
        row = (
            f"| `{split}` | {r['family']} | {level} | {r['images']} | {r['iou']:.3f} | {r['dice']:.3f} "
            f"| {r['iou_mean']:.3f} | {rob} |"
        )
        row += "".join(f" {_number(r.get(m), 2 if m == 'hd95' else 3)} |" for m in reported)
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
    if reported:
        lines += _structure_markdown(results, reported)
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


def _structure_markdown(results: dict[str, Any], reported: list[str]) -> list[str]:
    """The structure metrics' sections of ``results.md``: per family, the worst case over
    attacks, the mCE."""
    lines: list[str] = []
    fams = {f: v["metrics"] for f, v in results["families"].items() if v.get("metrics")}
    if fams:
        lines += [
            "",
            "Per family, each metric's mean robustness (metric / metric on `test` × 100) or, "
            "for errors and distances, its mean change from `test` (same units). β0 error, "
            "β1 error: mean per image of |β0(P) − β0(G)| (pieces) and |β1(P) − β1(G)| (loops); "
            "HD95 in px; NSD at τ = 2 px:",
            "",
            "| family |" + "".join(f" {METRIC_LABELS[m]} |" for m in reported),
            "|---|" + "---:|" * len(reported),
        ]
        for f, by in fams.items():
            cells = []
            for m in reported:
                v = by.get(m, {})
                if "mean_robustness" in v:
                    cells.append(_number(v["mean_robustness"], 1))
                else:
                    change = v.get("mean_change")
                    cells.append("—" if change is None else f"{change:+.2f}")
            lines.append(f"| {f} |" + "".join(f" {c} |" for c in cells))
    headline = results["metrics"]["headline"]
    worst = {k: r for k, r in results["splits"].items() if k.startswith("whitebox_worst_")}
    if worst:
        label = METRIC_LABELS[headline]
        lines += [
            "",
            "Adversarial (worst of N): per image the lowest IoU (and, separately, the lowest "
            f"{label}) over the attacks run at that budget; the count of images each attack "
            "was the worst on; gradient masking suspected where the gradient-free attack "
            "scores below every gradient attack.",
            "",
            f"| split | worst of | IoU | IoU (mean/img) | {label} (mean/img) | worst on (images) "
            "| gradient masking |",
            "|---|---:|---:|---:|---:|---|---|",
        ]
        for k, r in worst.items():
            counts = ", ".join(f"{m} {c}" for m, c in r["worst_counts"].items())
            mask = {True: "suspected", False: "no", None: "—"}[r["gradient_masking"]]
            lines.append(
                f"| `{k}` | {r['worst_of']} | {r['iou']:.3f} | {r['iou_mean']:.3f} "
                f"| {_number(r.get(f'{headline}_worst_mean'), 3)} | {counts} | {mask} |"
            )
    mce = results.get("mce")
    if mce:
        lines += [
            "",
            "mCE against the package's reference model (per family Σ(1 − score) / Σ(1 − "
            "reference score) over its splits, averaged; below 1: fewer errors than the "
            "reference):",
            "",
            "| metric | mCE | per family |",
            "|---|---:|---|",
        ]
        for m in ("iou", headline):
            v = mce.get(m)
            if v:
                per = ", ".join(f"{f} {ce:.2f}" for f, ce in v["families"].items())
                lines.append(f"| {METRIC_LABELS[m]} | {v['mce']:.3f} | {per} |")
    return lines


def plot_robustness(results: dict[str, Any], path: Path, *, metric: str = "iou") -> None:
    """``metric`` (default IoU; with IoU the consistency curves too, where scored) against
    severity: one panel for noise, blur and attacks, one curve per family."""
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
        if r.get(metric) is not None:
            curves.setdefault(r["family"], []).append((r["level"], r[metric]))
        if metric == "iou" and r.get("consistency") is not None:
            agreement.setdefault(r["family"], []).append((r["level"], r["consistency"]))
    panels["noise (SNR)"] += [f for f in curves if f == "real_snr"]
    panels["blur (level)"] += [f for f in curves if f in ("real_sib", "real_svb")]
    panels["attacks (ε, grey levels)"] = [
        f for f in curves if f not in ("snr", "sib", "svb", "real_snr", "real_sib", "real_svb")
    ]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=True)
    ref = results["splits"].get("test", {}).get(metric)
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
    label = METRIC_LABELS.get(metric, metric)
    axes[0].set_ylabel(f"{label} (dashed: consistency)" if agreement else label)
    fig.suptitle(f"{results['config']}: {results['model']['description']}", fontsize=10)
    fig.tight_layout()
    tmp = temporary_name(path)
    fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    tmp.replace(path)

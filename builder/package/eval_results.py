"""The Hub's evaluation-results format: the benchmark's ``eval.yaml`` and models'
``.eval_results/*.yaml``; and the rank order of a ``leaderboard.json`` (shared by
``fluorobench-c leaderboard`` and the dataset card).

How the Hub ranks models (https://huggingface.co/docs/hub/eval-results): a benchmark dataset
declares its tasks in ``eval.yaml`` at the repo root (``name``, ``description``,
``evaluation_framework``, ``tasks``: ``id``, ``config``, ``split``); a model repo states its
scores in ``.eval_results/*.yaml``, a list of entries ``{dataset: {id, task_id, revision},
value, date, source, notes}`` (written with ``huggingface_hub.EvalResultEntry``). Scores
of models whose entries name the benchmark show up on the benchmark's leaderboard.

One task per config and test-based split, ``<config>-<split>``, scored as IoU × 100 on the
foreground (threshold 0.5, aggregated over all pixels; docs/definitions.md#normalisation-and-scores), so
every split has its own leaderboard and robustness (IoU / IoU on ``test`` × 100) follows from
two of them. It is also given in each entry's ``notes``, with the split's structure metrics
(clDice and Betti errors, or AP/F1/PQ; HD95 and NSD) where ``results`` has them: the task's
value stays IoU.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from synthesis.levels import CONFIGS
from synthesis.runtime.files import atomic_write_bytes

EVAL_YAML = "eval.yaml"
EVAL_RESULTS_DIR = ".eval_results"
FRAMEWORK = "fluorobench-c"
#: Splits that are not scored (the model's own training data).
NOT_SCORED = ("train", "validation")
#: How reports, the card and the notes name each metric of ``results.json``.
METRIC_LABELS = {
    "iou": "IoU",
    "cldice": "clDice",
    "beta0_error": "β0 error",
    "beta1_error": "β1 error",
    "ap": "AP@0.5:0.95",
    "ap_50": "AP@0.5",
    "f1": "F1@0.5",
    "pq": "PQ",
    "hd95": "HD95 (px)",
    "nsd": "NSD",
}


def metric_cell(results_split: dict[str, Any], metric: str) -> str:
    """A metric's value as the reports print it (HD95 to 0.01 px, the others to 0.001)."""
    value = results_split.get(metric)
    if not _finite(value):
        return "—"
    return f"{value:.{2 if metric == 'hd95' else 3}f}"


def task_id(config: str, split: str) -> str:
    """The task of ``split`` of ``config`` in ``eval.yaml``: ``<config>-<split>``."""
    return f"{config}-{split}"


def benchmark_declaration(manifest: dict[str, Any]) -> dict[str, Any]:
    """The content of the package's ``eval.yaml``: every scored split of every config."""
    tasks = []
    for config in (c for c in CONFIGS if c in manifest["configs"]):
        for split in manifest["configs"][config]["splits"]:
            if split not in NOT_SCORED:
                tasks.append({"id": task_id(config, split), "config": config, "split": split})
    return {
        "name": "FluoroBench-C",
        "description": (
            "Robustness of fluorescence microscopy segmentation (ER, mitochondria, nuclei) to "
            "Poisson-Gaussian noise at exact SNRs, space-invariant and space-variant blur, and "
            "adversarial attacks. Each task is one split of one config, scored as foreground "
            "IoU x 100 (threshold 0.5, aggregated over all pixels). Score a model with "
            "`fluorobench-c evaluate --data REPO --config CONFIG --model MODEL`."
        ),
        "evaluation_framework": FRAMEWORK,
        "tasks": tasks,
    }


def write_benchmark_declaration(out: Path, manifest: dict[str, Any]) -> None:
    """Write ``eval.yaml`` in the package ``out``."""
    text = yaml.safe_dump(benchmark_declaration(manifest), sort_keys=False, width=88)
    atomic_write_bytes(out / EVAL_YAML, text.encode())


def eval_result_entries(
    results: dict[str, Any],
    dataset_id: str,
    *,
    revision: str | None = None,
    date: str | None = None,
    source_url: str | None = None,
) -> list[dict[str, Any]]:
    """``results`` (``fluorobench-c evaluate``) as ``.eval_results`` entries for the
    benchmark ``dataset_id``: one per scored split (sorted by split name), value IoU × 100
    (rounded to 0.01).

    White-box attack rows (``whitebox_*``) are left out: they are not tasks of the benchmark.
    """
    from huggingface_hub import EvalResultEntry, eval_result_entries_to_yaml

    config = results["config"]
    model = results.get("model") or {}
    entries = []
    for split, r in sorted(results["splits"].items()):  # the same file from JSON or memory
        iou = r.get("iou")
        if split in NOT_SCORED or split.startswith("whitebox") or not _finite(iou):
            continue
        notes = [f"IoU {iou:.4f} on {r.get('images', '?')} images"]
        if _finite(r.get("robustness")):
            notes.append(f"robustness {r['robustness']:.1f}")
        for metric in (results.get("metrics") or {}).get("reported", []):
            if _finite(r.get(metric)):
                notes.append(f"{METRIC_LABELS[metric]} {metric_cell(r, metric)}")
        notes.append(f"input {model.get('normalize', '?')}")
        entries.append(
            EvalResultEntry(
                dataset_id=dataset_id,
                task_id=task_id(config, split),
                value=round(100.0 * iou, 2),
                dataset_revision=revision,
                date=date,
                source_url=source_url,
                source_name="fluorobench-c evaluate" if source_url else None,
                notes="; ".join(notes),
            )
        )
    return eval_result_entries_to_yaml(entries)


def eval_results_yaml(entries: list[dict[str, Any]]) -> bytes:
    return yaml.safe_dump(entries, sort_keys=False).encode()


def eval_results_name(config: str) -> str:
    """The file of a config's entries in a model repo: ``.eval_results/fluorobench-c-<config>.yaml``."""
    return f"{EVAL_RESULTS_DIR}/{FRAMEWORK}-{config}.yaml"


def ranked_entries(board: dict[str, Any]) -> list[dict[str, Any]]:
    """The models of a ``leaderboard.json`` in rank order: converged models by corruption
    robustness (highest first), then those that did not learn (``converged`` false)."""

    def key(e: dict[str, Any]) -> tuple[int, float]:
        rob = e["corruption_robustness"]
        return (0 if e.get("converged", True) else 1, -(rob if rob is not None else -1e9))

    return sorted(board["models"], key=key)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

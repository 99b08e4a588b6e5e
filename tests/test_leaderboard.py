"""The leaderboard: every zoo model fits ``evaluate``; the command runs end to end on a tiny
package, resumes after a kill, and its JSON, Markdown and plot agree."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from builder.cli import main
from tests.conftest import ROOT

pytest.importorskip("monai")
pytest.importorskip("einops")

from builder.experiments.leaderboard import (
    leaderboard_markdown,
    plot_leaderboard,
    ranks,
    spearman,
)
from synthesis.models.zoo import ZOO, build, count_parameters

MODELS = "unet,res_unet"
TINY = ["--epochs", "1", "--batch-size", "2", "--device", "cpu", "--seed", "4"]


@pytest.mark.parametrize("name", list(ZOO))
def test_every_zoo_model_maps_images_to_logits_evaluate_accepts(name: str, one_thread):
    from builder.evaluation.model_loading import predict

    model = build(name, "small", seed=1).eval()
    x = torch.randn(2, 1, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, 1, 256, 256) and logits.dtype == torch.float32
    mask = predict(model, x)  # evaluate's own check and threshold
    assert mask.shape == (2, 1, 256, 256) and mask.dtype == torch.bool
    assert count_parameters(model) > 1000
    again = build(name, "small", seed=1)  # the seed decides the weights
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    before = torch.random.get_rng_state()
    build(name, "small", seed=2)
    assert torch.equal(before, torch.random.get_rng_state())  # the global RNG untouched


def test_spearman_matches_scipy_with_ties():
    from scipy.stats import spearmanr

    x = [3.0, 1.0, 2.0, 2.0, 5.0, 4.0]
    y = [10.0, 2.0, 7.0, 3.0, 9.0, 9.0]
    assert ranks([2.0, 1.0, 2.0]) == [2.5, 1.0, 2.5]
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert spearman([1.0, 2.0], [2.0, 1.0]) is None  # fewer than 3 models


def _run_cli(out: Path, data: Path) -> subprocess.Popen:
    code = "import sys; from builder.cli import main; sys.exit(main())"
    args = ["leaderboard", "--data", str(data), "--config", "mito", "--models", MODELS]
    return subprocess.Popen(
        [sys.executable, "-c", code, *args, *TINY, "--out", str(out)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_leaderboard_end_to_end_resumes_after_a_kill_and_outputs_agree(
    small_package: Path, tmp_path: Path
):
    out = tmp_path / "board"
    first = out / "models" / "unet.safetensors"
    proc = _run_cli(out, small_package)
    deadline = time.monotonic() + 600
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert first.exists(), "the first model was not saved before the kill"
    assert not (out / "leaderboard.json").exists()
    kept = (first.stat().st_mtime_ns, first.read_bytes())

    args = ["leaderboard", "--data", str(small_package), "--config", "mito", "--models", MODELS]
    assert main([*args, *TINY, "--out", str(out)]) == 0
    assert (first.stat().st_mtime_ns, first.read_bytes()) == kept  # not retrained
    board = json.loads((out / "leaderboard.json").read_text())
    assert [e["model"] for e in board["models"]] == MODELS.split(",")
    from synthesis.runtime.files import sha256_file

    for e in board["models"]:
        assert e["sha256"] == sha256_file(out / e["weights"])
        assert 0.0 <= e["test_iou"] <= 1.0 and e["parameters"] > 0
        assert set(e["whitebox_robustness"]) == {"fgsm_8", "pgd_8", "segpgd_8", "square_8"}
        assert e["adversarial_robustness"] == e["whitebox_robustness"]["pgd_8"]
        results = json.loads((out / e["results"]).read_text())
        assert results["model"]["sha256"] == e["sha256"]
        for family in ("snr", "sib", "svb", "fgsm", "ifgsm", "pgd"):
            assert e["robustness"][family] == results["families"][family]["mean_robustness"]
            assert (
                e["metric_robustness"][family]
                == results["families"][family]["metrics"]["cldice"]["mean_robustness"]
            )
        # the structure metrics and the worst case over the four attacks at eps 8
        worst = results["splits"]["whitebox_worst_8"]
        assert e["headline_metric"] == "cldice" and e["worst_counts"] == worst["worst_counts"]
        assert e["test_metrics"]["cldice"] == results["splits"]["test"]["cldice"]
        assert e["worst_case_robustness"] == worst["robustness"]
        for m in ("fgsm", "pgd", "segpgd", "square"):
            assert worst["iou_mean"] <= results["splits"][f"whitebox_{m}_8"]["iou_mean"] + 1e-12
        assert e["corruption_metric_robustness"] == pytest.approx(
            sum(e["metric_robustness"][f] for f in ("snr", "sib", "svb")) / 3
        )
    assert set(board["rankings"]) == {"iou", "headline", "pgd", "worst_case"}
    for key, order in board["rankings"].items():
        assert sorted(order) == sorted(e["model"] for e in board["models"] if e["converged"]), key
    assert set(board["rank_agreement"]) >= {"snr", "sib", "svb", "pgd_vs_worst_case"}

    # The Markdown is the JSON, formatted; the plot shows the JSON's values.
    md = (out / "leaderboard.md").read_text()
    assert md == leaderboard_markdown(board)
    for e in board["models"]:
        row = next(
            line
            for line in md.splitlines()
            if line.startswith("| ") and f"`{e['model']}` |" in line and e["family"] in line
        )
        assert f"{e['test_iou']:.3f}" in row and f"{e['corruption_robustness']:.1f}" in row
        assert f"{e['adversarial_robustness']:.1f}" in row
    plotted = plot_leaderboard(board, tmp_path / "again.png")
    assert (out / "leaderboard.png").stat().st_size > 10_000
    assert plotted["models"] == [e["model"] for e in board["models"]]
    assert plotted["scatter"] == [
        (e["corruption_robustness"], e["adversarial_robustness"]) for e in board["models"]
    ]
    assert plotted["bars"]["snr"] == [e["robustness"]["snr"] for e in board["models"]]

    # A finished board re-runs without training or evaluating anything.
    stamps = {p: p.stat().st_mtime_ns for p in (out / "results").glob("*.json")}
    assert main([*args, *TINY, "--out", str(out)]) == 0
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "results").glob("*.json")}

    # Other settings are refused without --overwrite.
    assert (
        main([*args, "--epochs", "2", "--batch-size", "2", "--device", "cpu", "--out", str(out)])
        == 2
    )


def test_the_card_shows_a_leaderboard_in_the_package(tmp_path: Path):
    from builder.package.card import _leaderboards, leaderboard_path

    entry = {
        "model": "unet",
        "family": "plain encoder-decoder (reference)",
        "parameters": 121033,
        "test_iou": 0.8961,
        "corruption_robustness": 73.04,
        "adversarial_robustness": 65.61,
        "transfer_robustness": 86.64,
        "converged": True,
    }
    lost = {**entry, "model": "res_unet", "test_iou": 0.1, "converged": False}
    board = {
        "settings": {"preset": "small", "recipe": {"epochs": 18, "batch_size": 4}},
        "machine": "x86_64, 2 cores, no GPU, torch 2.13.0+cpu",
        "models": [lost, entry],
        "correlation": {"spearman": 0.7619},
    }
    manifest = {"configs": {"mito": {}}}
    assert "No leaderboard in this package" in _leaderboards(manifest, tmp_path)
    path = leaderboard_path(tmp_path, "mito")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(board))
    text = _leaderboards(manifest, tmp_path)
    rows = [line for line in text.splitlines() if line.startswith("| ") and "`" in line]
    assert rows[0].startswith("| 1 | `unet` |") and "0.896 | 73.0 | 65.6 | 86.6 |" in rows[0]
    assert rows[1].startswith("| — (did not learn) | `res_unet` |")
    assert "2 cores" in text and "0.76" in text and "18 epochs" in text


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_leaderboard_runs_on_cuda(small_package: Path, tmp_path: Path):
    args = ["leaderboard", "--data", str(small_package), "--config", "mito"]
    args += ["--models", "unet,swin_unetr", "--epochs", "1", "--batch-size", "2"]
    assert main([*args, "--device", "cuda", "--out", str(tmp_path / "gpu")]) == 0
    board = json.loads((tmp_path / "gpu" / "leaderboard.json").read_text())
    assert board["device"].startswith("cuda") and len(board["models"]) == 2
    assert all(0.0 <= e["test_iou"] <= 1.0 for e in board["models"])


def test_without_the_zoo_extra_one_clear_line(monkeypatch, tmp_path: Path, capsys):
    monkeypatch.setitem(sys.modules, "monai.networks.nets", None)  # as if not installed
    args = ["leaderboard", "--data", str(tmp_path), "--config", "mito", "--models", "res_unet"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'fluorobench-c[zoo]'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out" / "models").exists()  # nothing trained

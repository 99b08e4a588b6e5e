"""At small scale, the shipped reference U-Net behaves as the benchmark claims: its IoU falls
as SNR falls, as blur grows and as the attack budget grows. (The issue expected eps >= 8 to
collapse it; measured on the embedded default it does not: robustness ~80 at eps 8 and
~35-48 at eps 32, see benchmarks/RESULTS.md. The test asserts what holds.)"""

from __future__ import annotations

import json
from pathlib import Path

from builder.cli import main


def test_reference_model_degrades_with_noise_blur_and_attacks(tmp_path: Path):
    out = tmp_path / "pkg"
    argv = ["build", str(out), "--config", "mito", "--splits", "snr_1", "sib_5", "pgd_8", "pgd_32"]
    argv += ["--train", "24", "--validation", "6", "--test", "6", "--train-epochs", "8"]
    assert main([*argv, "--seed", "3", "--device", "cpu"]) == 0
    r = json.loads((out / "results" / "mito.json").read_text())["splits"]
    test = r["test"]["iou"]
    assert test > 0.4, f"reference model did not learn: test IoU {test:.3f}"
    # Margins are a fifth of the reference IoU: far above seed-to-seed jitter of 6 images.
    assert r["snr_1"]["iou"] < test - 0.2 * test, r["snr_1"]
    assert r["sib_5"]["iou"] < test - 0.2 * test, r["sib_5"]
    assert r["pgd_8"]["iou"] < 0.97 * test, r["pgd_8"]
    assert r["pgd_32"]["iou"] < min(0.7 * test, r["pgd_8"]["iou"]), r["pgd_32"]

"""benchmarks/gpu.py, the one command for a lent GPU, run whole on the CPU at tiny sizes
(``--dry-run``) so that it cannot rot before a GPU runs it."""

from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.py"
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu  # noqa: E402  (benchmarks/ is not a package)


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
        timeout=timeout, env={"OMP_WAIT_POLICY": "PASSIVE", **os.environ},
    )  # fmt: skip


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("gpu") / "out"
    r = _run("--out", str(out), "--device", "cpu", "--dry-run", "--study-counts", "2", "1", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    return out, json.loads((out / "gpu.json").read_text()), r.stdout


def test_every_stage_runs_and_is_reported(dry_run):
    out, result, stdout = dry_run
    assert set(result["stages"]) == set(gpu.STAGES)
    assert all(s["status"] == "done" for s in result["stages"].values()), result["stages"]
    assert result["not_reached"] == []
    assert result["elapsed_s"] < result["budget_s"]
    env = result["environment"]
    assert env["device"] == "cpu" and env["torch"] and env["cpu"]
    assert _finite(env["peak_gbps"]) and env["peak_gbps"] > 0
    assert env["peak_source"].startswith("measured copy")  # no device properties on CPU
    md = (out / "gpu.md").read_text()
    for heading in ("## Throughput", "## Determinism", "## Full default build", "## Study scale",
                    "## gpu-marked tests", "## Stages"):  # fmt: skip
        assert heading in md
    assert {p.name for p in (out / "logs").iterdir()} >= {"build.log", "gpu_tests.log"}
    assert "x CPU" in stdout and "not reached: nothing" in stdout


def test_throughput_rows_are_finite_with_ratios(dry_run):
    _, result, _ = dry_run
    rows = result["stages"]["throughput"]["rows"]
    ops = {r["op"] for r in rows}
    assert {"noise", "sib", "svb", "attack_fgsm", "attack_pgd", "train_step", "forward"} <= ops
    assert {r["size"] for r in rows} == {16, 32}
    for r in rows:
        for key in ("img_s", "gbps", "fraction_of_peak", "cpu_img_s", "ratio_vs_cpu"):
            assert _finite(r[key]) and r[key] > 0, (r["op"], r["size"], key)
        assert r["best_batch"] in [s["batch"] for s in r["sweep"]]
        # GB/s is img/s times the counted bytes.
        assert math.isclose(r["gbps"], r["img_s"] * r["bytes_per_image"] / 1e9, rel_tol=1e-3)
    noise = next(r for r in rows if r["op"] == "noise" and r["size"] == 32)
    assert noise["bytes_per_image"] == 9 * 32 * 32
    pgd = next(r for r in rows if r["op"] == "attack_pgd" and r["size"] == 32)
    fwd = next(r for r in rows if r["op"] == "forward" and r["size"] == 32)
    act = (fwd["bytes_per_image"] - 5 * 32 * 32) // 2  # forward = 2A + 5 B/px
    assert act > 16 * 32 * 32 * 4  # at least the first layer's 16 float32 channels
    assert pgd["bytes_per_image"] == 10 * 4 * act + 9 * 32 * 32
    assembly = result["stages"]["throughput"]["row_assembly"]
    assert [a["batch"] for a in assembly] == [1, 2]
    for a in assembly:
        assert all(_finite(a[k]) and a[k] > 0 for k in ("rows_s", "encode_s", "write_s"))
        # Encoding is timed apart from rows() (which includes it): a share, up to timing noise.
        assert _finite(a["host_share"]) and a["host_share"] > 0


def test_determinism_build_and_tests_stages(dry_run):
    _, result, _ = dry_run
    det = result["stages"]["determinism"]
    assert det["device_vs_device"]["identical"] is True  # the CPU promise
    assert det["device_vs_device"]["files_compared"] > 0
    build = result["stages"]["build"]
    assert build["returncode"] == 0 and build["units"]
    assert sum(u["rows"] for u in build["units"]) > 0
    assert math.isclose(sum(u["share"] for u in build["units"]), 1.0, abs_tol=1e-3)
    tests = result["stages"]["gpu_tests"]
    assert tests["counts"].get("failed", 0) == 0
    if not torch.cuda.is_available():
        assert tests["counts"]["skipped"] == _gpu_test_count()
        assert tests["verdict"].startswith("all skipped")
    study = result["stages"]["study_scale"]
    assert study["counts"] == {"train": 2, "validation": 1, "test": 2}
    assert _finite(study["predicted_s"]) and study["returncode"] == 0


def test_a_short_budget_stops_cleanly_and_says_what_it_skipped(tmp_path: Path):
    out = tmp_path / "short"
    r = _run("--out", str(out), "--device", "cpu", "--dry-run", "--budget", "10")
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((out / "gpu.json").read_text())
    # Each stage's share of 10 s is below what it needs to start: all listed as not reached.
    assert [x.split(":")[0] for x in result["not_reached"]] == list(gpu.STAGES)
    assert all("not reached" in s["status"] for s in result["stages"].values())
    assert result["elapsed_s"] < 10
    assert "Not reached:" in (out / "gpu.md").read_text()


def test_refuses_a_non_empty_out_without_overwrite(tmp_path: Path):
    (tmp_path / "keep.txt").write_text("x")
    r = _run("--out", str(tmp_path), "--device", "cpu", "--dry-run", "--budget", "5")
    assert r.returncode == 2 and "--overwrite" in r.stderr
    assert (tmp_path / "keep.txt").read_text() == "x" and not (tmp_path / "gpu.json").exists()


def _gpu_test_count() -> int:
    return sum(
        len(re.findall(r"^@pytest\.mark\.gpu$", (ROOT / f).read_text(), re.M))
        for f in gpu.GPU_TEST_FILES
    )


def test_gpu_test_files_are_those_with_gpu_tests():
    marked = {
        f"tests/{p.name}"
        for p in (ROOT / "tests").glob("test_*.py")
        if re.search(r"^@pytest\.mark\.gpu$", p.read_text(), re.M)
    }
    assert marked == set(gpu.GPU_TEST_FILES)


def _shard(path: Path, images: list[np.ndarray], params: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import tifffile

    cells = []
    for im in images:
        buf = io.BytesIO()
        tifffile.imwrite(buf, im)
        cells.append({"bytes": buf.getvalue(), "path": None})
    ids = [f"x-{i}" for i in range(len(images))]
    pq.write_table(pa.table({"id": ids, "image": cells, "params": params}), path)


def test_compare_shard_names_rows_pixels_and_params(tmp_path: Path):
    a = np.arange(16, dtype=np.uint16).reshape(4, 4)
    b = a.copy()
    b[1, 2] += 3
    p1 = [{"snr": 8.0, "seed": 1}, {"snr": float("nan"), "seed": 2}]
    p2 = [{"snr": 8.5, "seed": 1}, {"snr": float("nan"), "seed": 2}]
    _shard(tmp_path / "a.parquet", [a, a], p1)
    _shard(tmp_path / "b.parquet", [b, a], p2)
    d = gpu.compare_shard(tmp_path / "a.parquet", tmp_path / "b.parquet")
    assert d == {
        "rows": 2,
        "rows_image_differ": 1,
        "pixels_differ": 1,
        "max_abs_image_diff": 3.0,
        "params_differ": ["snr"],
    }


def test_study_time_prediction_scales_each_unit_kind():
    units = [
        {"kind": "reference U-Net training", "seconds": 18.0},
        {"kind": "train", "seconds": 16.0},
        {"kind": "validation", "seconds": 2.0},
        {"kind": "snr", "seconds": 4.0},
    ]
    base = {"train": 160, "validation": 20, "test": 40}
    study = {"train": 320, "validation": 40, "test": 20}
    assert gpu.predict_seconds(units, base, study) == pytest.approx(36 + 32 + 4 + 2)

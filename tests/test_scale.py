"""Many processes, one build: the same bytes at any world size and thread count, resume after
SIGKILL at another world size, distributed evaluate, and the bad launches (issue 13)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT

# All three configs and every family, attacks included, kept small: 2 test images, 1 epoch,
# one row per shard (many units for the ranks to share).
SPLITS = ["reference", "clean", "snr_2", "sib_1", "svb_1", "fgsm_1", "fgsm_2", "ifgsm_2",
          "ifgsm_4", "pgd_1"]  # fmt: skip
ARGS = ["--train", "4", "--validation", "2", "--test", "2", "--train-epochs", "1",
        "--rows-per-shard", "1", "--batch-size", "2", "--seed", "3", "--device", "cpu",
        "--splits", *SPLITS]  # fmt: skip


def _cli(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None, **kw):
    return subprocess.run(
        [sys.executable, "-m", "builder.cli", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        **kw,
    )


def _tree(out: Path) -> dict[str, str]:
    """sha256 of every file of a package, by relative path."""
    return {
        p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("solo") / "pkg"
    r = _cli("build", str(out), *ARGS, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.mark.slow
def test_two_processes_build_the_bytes_of_one(one_process: Path, tmp_path: Path):
    out = tmp_path / "pkg"
    r = _cli("build", str(out), *ARGS, "--workers", "2", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rank 1 of 2 joined" in r.stderr
    assert "Traceback" not in r.stderr  # every rank ends cleanly (rank 0 hosts the store)
    ref, got = _tree(one_process), _tree(out)
    assert any(p.startswith("data/er/pgd_1-") for p in ref)
    assert any(p.startswith("models/") for p in ref)
    assert got == ref  # shards, manifest, card, models, results, sample grids
    assert not (out / ".build").exists()


@pytest.mark.slow
def test_sigkill_one_rank_then_resume_at_another_world_size(one_process: Path, tmp_path: Path):
    out = tmp_path / "pkg"
    proc = subprocess.Popen(
        [sys.executable, "-m", "builder.cli", "build", str(out), *ARGS, "--workers", "2"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    records = out / ".build" / "units"
    try:
        deadline = time.time() + 300
        while time.time() < deadline and len(list(records.rglob("*.json"))) < 6:
            time.sleep(0.05)
        assert len(list(records.rglob("*.json"))) >= 6, "the build recorded no unit in time"
        workers = subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True
        ).stdout.split()
        assert workers, "no worker process found"
        os.kill(int(workers[-1]), signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "killed" in err and "re-run the same command" in err
    assert not json.loads((out / "manifest.json").read_text())["complete"]
    r = _cli("build", str(out), *ARGS, timeout=600)  # one process now
    assert r.returncode == 0, r.stderr[-3000:]
    assert _tree(out) == _tree(one_process)


@pytest.mark.slow
def test_two_process_evaluate_writes_the_results_of_one(one_process: Path, tmp_path: Path):
    common = ["evaluate", "--data", str(one_process), "--config", "mito", "--device", "cpu"]
    common += ["--attacks", "fgsm:2", "ifgsm:1"]
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = _cli(*common, "--out", str(one), timeout=600)
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = _cli(*common, "--out", str(two), "--workers", "2", timeout=600)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "Traceback" not in r2.stderr
    a = json.loads((one / "results.json").read_text())
    b = json.loads((two / "results.json").read_text())
    assert a == b
    assert set(a["splits"]) >= {"test", "pgd_1", "whitebox_fgsm_2", "whitebox_ifgsm_1"}
    assert (two / "robustness.png").exists()


# --------------------------------------------------------------------------- bad launches
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_env(rank: int, port: int) -> dict[str, str]:
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def _two_ranks(args0: list[str], args1: list[str], cwd0: Path, cwd1: Path):
    """Launch rank 0 and rank 1 by hand (what torchrun does) and wait for both."""
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "builder.cli", *args, "--rendezvous-timeout", "60"],
            cwd=cwd,
            env={**os.environ, **_rank_env(rank, port), "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank, (args, cwd) in enumerate(((args0, cwd0), (args1, cwd1)))
    ]
    return [(p.wait(timeout=300), p.stderr.read()) for p in procs]


def test_a_rank_that_cannot_reach_the_rendezvous_gets_one_clear_error(tmp_path: Path):
    out = tmp_path / "pkg"
    r = _cli(
        "build", str(out), "--rendezvous-timeout", "3",
        env=_rank_env(1, _free_port()), timeout=120,
    )  # fmt: skip
    assert r.returncode == 2
    assert "rank 1 of 2 could not reach the rendezvous at 127.0.0.1:" in r.stderr
    assert "within 3 s" in r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists()


def test_ranks_given_different_arguments_are_refused(tmp_path: Path):
    out = tmp_path / "pkg"
    base = ["build", str(out), "--config", "mito", "--splits", "clean", "--test", "2"]
    (c0, e0), (c1, e1) = _two_ranks([*base, "--seed", "1"], [*base, "--seed", "2"], ROOT, ROOT)
    assert c0 == c1 == 2
    assert "different arguments" in e0 and "seed: 1 vs 2" in e0
    assert "fluorobench-c: error" not in e1  # reported once, by rank 0
    assert not out.exists()


def test_an_output_folder_not_every_rank_sees_is_refused(tmp_path: Path):
    # The same relative path from two working directories: two folders, as on two nodes
    # without a shared filesystem.
    node0, node1 = tmp_path / "node0", tmp_path / "node1"
    node0.mkdir()
    node1.mkdir()
    args = ["build", "pkg", "--config", "mito", "--splits", "clean", "--test", "2"]
    (c0, e0), (c1, _) = _two_ranks(args, args, node0, node1)
    assert c0 == c1 == 2
    assert "is not one folder that every rank sees" in e0 and "rank(s) 0, 1" in e0
    assert list(node0.iterdir()) == [] and list(node1.iterdir()) == []


# --------------------------------------------------------------------------- thread counts
# For each thread count given, sets the process's torch threads, trains the reference U-Net,
# predicts and attacks at two image sizes and two batch sizes, and prints the sha256 of each
# result (one line per thread count).
_THREADS_SCRIPT = r"""
import hashlib, sys, torch
from builder.assembly.reference import train_reference
from builder.evaluation.model_loading import predict
from synthesis.corruptions.attacks import attack_budgets
from synthesis.normalize import zscore

def h(t):
    return hashlib.sha256(t.detach().contiguous().cpu().numpy().tobytes()).hexdigest()[:16]

def data(n, size, seed):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n, 1, size, size, generator=g) > 0.7
    return (torch.rand(n, 1, size, size, generator=g) * 900 + 100).round() + 600 * mask, mask

def hashes():
    adu, mask = data(6, 96, 0)
    model, _ = train_reference(
        adu[:4], mask[:4], adu[4:], mask[4:], seed=1, device="cpu", epochs=2
    )
    weights = [p.flatten() for p in model.state_dict().values() if p.is_floating_point()]
    out = [h(torch.cat(weights))]
    for size, batch in ((96, 3), (256, 1)):
        x, m = data(batch, size, size)
        out.append(h(predict(model, zscore(x))))
        for method in ("fgsm", "ifgsm", "pgd"):
            seeds = [torch.arange(batch), torch.arange(batch) + 7]
            for r in attack_budgets(model, x.int(), m, method=method, budgets=[2, 4], seeds=seeds):
                out.append(h(r.adu))
    return out

for n in map(int, sys.argv[1:]):
    torch.set_num_threads(n)
    out = hashes()
    print(torch.get_num_threads(), torch.backends.cpu.get_cpu_capability(), " ".join(out))
"""

# The kernel families other CPUs run, forced on this one: oneDNN capped at AVX2 with ATen's
# AVX2 kernels (an AMD EPYC of the AVX2 generations), oneDNN capped at AVX-512 without AMX,
# and ATen's scalar kernels. A cap above what the CPU has leaves its best.
_KERNELS = {
    "native": {},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
    "avx512": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "aten-scalar": {"ATEN_CPU_CAPABILITY": "default"},
}


@pytest.mark.slow
@pytest.mark.parametrize("kernels", list(_KERNELS))
def test_training_prediction_and_attacks_give_the_same_bits_at_any_thread_count(kernels: str):
    """One process set to 1, 2 and 4 threads in turn trains the same reference weights,
    predicts the same masks and makes the same attacked images, at 96 x 96 (batch 3) and
    256 x 256 (batch 1), under each family of CPU kernels (docs/definitions.md#determinism)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")
    }
    env |= {"OMP_WAIT_POLICY": "PASSIVE", **_KERNELS[kernels]}
    counts = (1, 2, 4) if kernels == "native" else (1, 4)
    r = subprocess.run(
        [sys.executable, "-c", _THREADS_SCRIPT, *map(str, counts)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()[-len(counts) :]
    seen = {}
    for n, line in zip(counts, lines, strict=True):
        threads, capability, hashes = line.split(" ", 2)
        assert int(threads) == n
        if "ATEN_CPU_CAPABILITY" in _KERNELS[kernels]:
            assert capability.lower() == _KERNELS[kernels]["ATEN_CPU_CAPABILITY"].lower()
        assert len(hashes.split()) == 1 + 2 * (1 + 3 * 2)
        seen[n] = hashes
    assert len(set(seen.values())) == 1, seen


def test_budgets_share_gradients_and_give_the_bytes_of_separate_attacks():
    from synthesis.corruptions.attacks import attack, attack_budgets, gradients_needed
    from synthesis.models.unet import UNet

    class Counting(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = UNet(1, 1, 4, 2, seed=5)
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += x.shape[0]
            return self.net(x)

    g = torch.Generator().manual_seed(1)
    adu = (torch.rand(2, 1, 32, 32, generator=g) * 800 + 50).round().int()
    mask = torch.rand(2, 1, 32, 32, generator=g) > 0.5
    budgets = [1, 2, 4, 8, 16, 32]
    model = Counting()
    for method in ("fgsm", "ifgsm", "pgd"):
        seeds = [torch.arange(2) + 10 * i for i in range(len(budgets))]
        model.calls = 0
        together = attack_budgets(model, adu, mask, method=method, budgets=budgets, seeds=seeds)
        assert model.calls == 2 * gradients_needed(method, budgets)
        for eps, s, r in zip(budgets, seeds, together, strict=True):
            alone = attack(model, adu, mask, method=method, eps_grey=eps, seeds=s)
            assert torch.equal(alone.adu, r.adu), (method, eps)
            assert alone.params == r.params
    assert gradients_needed("fgsm", budgets) == 1
    assert gradients_needed("ifgsm", budgets) == 43  # instead of 1+2+5+10+20+36 = 74
    assert gradients_needed("pgd", budgets) == 60  # random starts: nothing in common
    assert all(p.requires_grad for p in model.parameters())  # restored after the attack


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_two_process_evaluate_uses_nccl_and_matches_one(one_process: Path, tmp_path: Path):
    common = ["evaluate", "--data", str(one_process), "--config", "er", "--device", "cuda"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert _cli(*common, "--out", str(one), timeout=600).returncode == 0
    r = _cli(*common, "--out", str(two), "--workers", "2", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "cuda:nccl" in r.stderr
    a = json.loads((one / "results.json").read_text())
    b = json.loads((two / "results.json").read_text())
    assert a["splits"].keys() == b["splits"].keys()
    for split in a["splits"]:  # GPU kernels need not be bitwise stable across processes
        assert abs(a["splits"][split]["iou"] - b["splits"][split]["iou"]) < 1e-3

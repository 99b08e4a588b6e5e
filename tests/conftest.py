from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: The real nucleus images shared beside the checkout (never copied into the project).
BBBC038 = ROOT.parent / "shared" / "data" / "bbbc038-fluorescence"

# Keep the two CPU cores for the tests themselves and make float reductions repeatable.
torch.set_num_threads(min(2, os.cpu_count() or 1))
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="session")
def bbbc038_dir() -> Path:
    path = BBBC038 / "stage1_train"
    if not path.is_dir():
        pytest.skip(f"real data not available at {path}")
    return path


#: Small sizes shared by the end-to-end build tests.
SMALL = ["--train", "4", "--validation", "2", "--test", "2", "--batch-size", "2", "--seed", "7"]


@pytest.fixture(scope="session")
def small_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete package of all three configs and every split, built once per test run:
    under pytest-xdist the first worker to need it builds it in the run's shared temporary
    folder while the others wait on a file lock, then every worker reads it (tests copy it
    before changing it)."""
    from filelock import FileLock

    from builder.cli import main

    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        root = tmp_path_factory.mktemp("pkg")
    else:
        root = tmp_path_factory.getbasetemp().parent  # shared by the run's workers
    out = root / "fluorobench-c"
    with FileLock(str(root / "small_package.lock")):  # a complete build: nothing to do
        assert main(["build", str(out), *SMALL, "--train-epochs", "1", "--device", "cpu"]) == 0
    return out


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run several times faster on one thread, and far more steadily when other
    processes share the two cores (OpenMP threads then wait on each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

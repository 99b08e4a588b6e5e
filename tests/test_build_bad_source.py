"""A build from a bad source folder stops with one clear line, exit 2, and leaves nothing
behind: no ``OUT`` if the run created it, an empty ``OUT`` left empty, a previous package
left byte for byte (issue 21). A build that fails after writing units keeps them."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from builder.cli import main
from synthesis.groundtruth.sources import TILE, assign_split
from synthesis.runtime.errors import InputError, JobFailed
from tests.conftest import ROOT

ARGS = ["--config", "nucleus", "--splits", "clean", "--test", "2", "--device", "cpu"]


def _test_stems(n: int) -> list[str]:
    """Stems the hash rule puts in the test split (the only split ``clean`` needs)."""
    stems, i = [], 0
    while len(stems) < n:
        if assign_split(f"img{i}") == "test":
            stems.append(f"img{i}")
        i += 1
    return stems


def _source(root: Path, n: int = 2) -> Path:
    """images/ + masks/: ``n`` tiny 8-bit PNG pairs, all in the test split."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:TILE, :TILE]
    for k, stem in enumerate(_test_stems(n)):
        mask = ((yy - 80 - 20 * k) ** 2 + (xx - 120) ** 2 <= 40**2).astype(np.uint8)
        Image.fromarray((40 + 150 * mask).astype(np.uint8)).save(root / "images" / f"{stem}.png")
        Image.fromarray(mask * 255).save(root / "masks" / f"{stem}.png")
    return root


def _truncate(root: Path) -> str:
    f = root / "images" / f"{_test_stems(2)[1]}.png"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return f"cannot read {f}: OSError: image file is truncated"


def _other_size(root: Path) -> str:
    stem = _test_stems(2)[1]
    Image.fromarray(np.zeros((TILE, TILE + 44), np.uint8)).save(root / "masks" / f"{stem}.png")
    return (
        f"image and mask sizes differ: {root}/images/{stem}.png is 256x256, "
        f"{root}/masks/{stem}.png is 300x256"
    )


def _no_mask(root: Path) -> str:
    stem = _test_stems(2)[0]
    (root / "masks" / f"{stem}.png").unlink()
    return f"image without its mask: {root}/images/{stem}.png has no masks/{stem}.*"


def _empty(root: Path) -> str:
    for f in [*root.rglob("*.png")]:
        f.unlink()
    for d in ("images", "masks"):
        (root / d).rmdir()
    return f"cannot tell what {root} holds"


def _empty_images(root: Path) -> str:
    for f in [*root.rglob("*.png")]:
        f.unlink()
    return f"no .tif/.tiff/.png files in {root}/images"


def _tree(out: Path) -> dict[str, str]:
    return {
        p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(
    "spoil", [_truncate, _other_size, _no_mask, _empty, _empty_images], ids=lambda f: f.__name__
)
def test_bad_source_one_line_exit_2_no_out(tmp_path: Path, capsys, spoil):
    src = _source(tmp_path / "src")
    expected = spoil(src)
    out = tmp_path / "out"
    assert main(["build", str(out), "--source", str(src), *ARGS]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fluorobench-c: error: ") and expected in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists()


def test_bad_source_from_the_command_line_leaves_an_empty_out_empty(tmp_path: Path):
    src = _source(tmp_path / "src")
    expected = _truncate(src)
    out = tmp_path / "out"
    out.mkdir()
    r = subprocess.run(
        [sys.executable, "-m", "builder.cli", "build", str(out), "--source", str(src), *ARGS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if "error" in line.lower()]
    assert errors == [f"fluorobench-c: error: {expected}"], r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert out.is_dir() and list(out.iterdir()) == []


def test_bad_source_leaves_a_previous_package_byte_for_byte(tmp_path: Path, capsys):
    good = _source(tmp_path / "good")
    out = tmp_path / "out"
    assert main(["build", str(out), "--source", str(good), *ARGS]) == 0
    before = _tree(out)
    bad = _source(tmp_path / "bad")
    expected = _other_size(bad)
    capsys.readouterr()
    for extra in ([], ["--overwrite"]):  # --overwrite must not empty OUT for a bad source
        assert main(["build", str(out), "--source", str(bad), *ARGS, *extra]) == 2
        assert expected in capsys.readouterr().err
        assert _tree(out) == before


# ----------------------------------------------------------------- failures after the start
def test_a_failure_before_any_unit_removes_what_the_run_wrote(tmp_path: Path, monkeypatch):
    def fail(*args, **kwargs):
        raise InputError("stopped before the first unit")

    monkeypatch.setattr("builder.assembly.pipeline.run_units", fail)
    src = _source(tmp_path / "src")
    out = tmp_path / "new"
    assert main(["build", str(out), "--source", str(src), *ARGS]) == 2
    assert not out.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["build", str(empty), "--source", str(src), *ARGS]) == 2
    assert list(empty.iterdir()) == []


def test_a_failure_after_units_keeps_them_for_the_resume(tmp_path: Path, monkeypatch):
    def fail(*args, **kwargs):
        raise JobFailed("stopped after the units")

    src = _source(tmp_path / "src")
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        m.setattr("builder.assembly.pipeline.assemble_manifest", fail)
        assert main(["build", str(out), "--source", str(src), *ARGS]) == 1
    assert list((out / ".build" / "units").rglob("*.json"))  # the unit records are kept
    assert list((out / "data" / "nucleus").glob("clean-*.parquet"))
    assert main(["build", str(out), "--source", str(src), *ARGS]) == 0  # resumes
    assert not (out / ".build").exists()


# ----------------------------------------------------------------- several processes
def _two_ranks(args: list[str], cwd0: Path, cwd1: Path) -> list[tuple[int, str]]:
    """Rank 0 and rank 1 of one launch, by hand (what torchrun does); both waited for."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "builder.cli", *args, "--rendezvous-timeout", "60"],
            cwd=cwd,
            env={
                **os.environ,
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "PYTHONPATH": str(ROOT),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank, cwd in enumerate((cwd0, cwd1))
    ]
    return [(p.wait(timeout=300), p.stderr.read()) for p in procs]


def test_two_ranks_stop_together_before_anything_is_written(tmp_path: Path):
    # Both ranks read the same bad source: rank 0 reports it once.
    src = _source(tmp_path / "src")
    expected = _truncate(src)
    out = tmp_path / "out"
    (c0, e0), (c1, e1) = _two_ranks(
        ["build", str(out), "--source", str(src), *ARGS], tmp_path, tmp_path
    )
    assert c0 == c1 == 2, e0[-2000:] + e1[-2000:]
    assert f"fluorobench-c: error: {expected}" in e0.splitlines()
    assert "fluorobench-c: error" not in e1
    assert "Traceback" not in e0 + e1
    assert not out.exists()

    # Only rank 1's copy is bad (the same relative path on two nodes): rank 1 names its file,
    # rank 0 names rank 1, and neither waits for the other.
    node0, node1 = tmp_path / "node0", tmp_path / "node1"
    _source(node0 / "src")
    _no_mask(_source(node1 / "src"))
    (c0, e0), (c1, e1) = _two_ranks(["build", str(out), "--source", "src", *ARGS], node0, node1)
    assert c0 == c1 == 2, e0[-2000:] + e1[-2000:]
    assert "rank(s) 1 of 2 could not open --source src" in e0
    stem = _test_stems(1)[0]
    assert f"fluorobench-c: error: image without its mask: src/images/{stem}.png" in e1
    assert "Traceback" not in e0 + e1
    assert not out.exists()

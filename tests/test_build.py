"""End to end: build packages, load every split through datasets, resume, refuse, verify."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from builder.cli import main
from builder.package.manifest import build_lock
from builder.package.plan import CORRUPTIONS, all_splits
from builder.package.verify import verify
from synthesis.levels import TRAIN_SNR, Camera
from tests.conftest import ROOT, SMALL

CONFIGS = ("er", "mito", "nucleus")
COUNTS = {"train": 4, "validation": 2, "test": 2}
# A cheaper recipe for the tests that build several times (no attacks: no model training).
FAST = ["--config", "mito", "--splits", "reference", "clean", "snr", "sib", "svb", *SMALL]


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _expected_rows(split: str) -> int:
    spec = {s.name: s for s in all_splits()}[split]
    return COUNTS[spec.base]


def _decode(cell) -> np.ndarray:
    if isinstance(cell, np.ndarray):
        return cell
    if isinstance(cell, dict):
        return np.asarray(Image.open(io.BytesIO(cell["bytes"])))
    return np.asarray(cell)


def _check_rows(rows: list[dict], config: str, split: str) -> None:
    assert len(rows) == _expected_rows(split)
    for r in rows:
        img, mask = _decode(r["image"]), _decode(r["mask"])
        assert img.shape == (256, 256) and mask.shape == (256, 256)
        assert img.dtype == (np.float32 if split == "clean" else np.uint16), (split, img.dtype)
        assert set(np.unique(mask).tolist()) == {0, 1}
        p = r["params"]
        assert p["build_seed"] == 7 and p["render_seed"] is not None
        corruption = CORRUPTIONS[r["corruption"]]
        if split == "clean":
            assert corruption == "clean" and p["snr_target"] is None
        else:
            assert p["snr_target"] > 0 and p["snr_measured"] > 0 and p["k_e_per_unit"] > 0
            assert p["e_per_adu"] > 0 and p["read_noise_e"] >= 0 and p["psf"]["kind"]
            # train and validation rows draw their SNR in the config's range; the row's level
            # is its SNR, and its gain the camera's at that SNR (docs/definitions.md)
            lo, hi = TRAIN_SNR[config] if split in ("train", "validation") else (8.0, 8.0)
            if corruption == "snr":
                lo, hi = (r["level"], r["level"]) if split.startswith("snr_") else (lo, hi)
                assert lo - 1e-4 <= p["snr_target"] <= hi + 1e-4, (split, p["snr_target"])
                assert r["level"] == pytest.approx(p["snr_target"], rel=1e-6)
                gain = Camera().for_snr(p["snr_target"]).e_per_adu
                assert p["e_per_adu"] == pytest.approx(gain, rel=1e-6)
        if corruption in ("fgsm", "ifgsm", "pgd"):
            a = p["attack"]
            assert a["method"] == corruption and len(a["model_sha256"]) == 64
            assert 0 <= a["linf_grey"] <= a["eps_grey"] + 1e-9
        if config == "nucleus":
            assert _decode(r["instances"]).dtype == np.uint16


@pytest.mark.parametrize("config", CONFIGS)
def test_every_split_loads_streaming_and_not(small_package: Path, config: str, tmp_path: Path):
    manifest = _manifest(small_package)
    splits = list(manifest["configs"][config]["splits"])
    assert {s.name for s in all_splits()} == set(splits)
    ids = {}
    cache = tmp_path / "cache"  # fresh: the datasets cache key ignores file contents
    # Every split from one call each way (each call parses the card); one split by name too.
    every_streamed = datasets.load_dataset(str(small_package), config, streaming=True)
    every = datasets.load_dataset(str(small_package), config, cache_dir=str(cache))
    assert list(every_streamed) == list(every) == splits
    one = datasets.load_dataset(str(small_package), config, split="snr_2", cache_dir=str(cache))
    assert one["id"] == every["snr_2"]["id"]
    for split in splits:
        streamed = list(every_streamed[split])
        _check_rows(streamed, config, split)
        ds = every[split]
        assert ds.num_rows == len(streamed)
        assert ds.features["corruption"].names == list(CORRUPTIONS)
        numpy_rows = list(ds.with_format("numpy"))
        _check_rows(numpy_rows, config, split)
        assert [r["id"] for r in numpy_rows] == [r["id"] for r in streamed]
        ids[split] = [r["id"] for r in streamed]
    for split in splits:  # rows pair up across splits by id
        if split not in ("train", "validation"):
            assert ids[split] == ids["test"], split
    assert not set(ids["train"]) & set(ids["test"])


def test_train_snr_is_log_uniform_in_the_config_range_and_fixed_by_the_id(tmp_path: Path):
    """Over 4000 ids, log(SNR / low) / log(high / low) of the nucleus train rows is uniform
    on [0, 1] (Kolmogorov-Smirnov, p > 0.001); the draw depends on the id alone; configs
    whose range is one SNR give exactly that SNR; test rows keep the reference SNR."""
    import torch
    from scipy import stats

    from builder.assembly.images import ConfigImages
    from builder.assembly.options import BuildOptions
    from builder.package.plan import SplitSpec

    ids = [f"id{i}" for i in range(4000)]
    opts = BuildOptions(out=tmp_path / "unused", configs=["nucleus", "er"], seed=3, device="cpu")
    nucleus = ConfigImages(opts, "nucleus", torch.device("cpu"))
    train = SplitSpec("train", "reference", "snr", 8.0, "train")
    snr = nucleus.target_snr(train, ids).double()
    lo, hi = TRAIN_SNR["nucleus"]
    assert lo < hi and bool(((snr >= lo) & (snr <= hi * (1 + 1e-6))).all())
    u = (torch.log(snr / lo) / math.log(hi / lo)).numpy()
    assert stats.kstest(u, "uniform").pvalue > 0.001
    assert torch.equal(nucleus.target_snr(train, ids[10:20]), nucleus.target_snr(train, ids)[10:20])
    val = SplitSpec("validation", "reference", "snr", 8.0, "validation")
    assert torch.equal(nucleus.target_snr(val, ids[:5]), snr[:5].float())
    test = SplitSpec("test", "reference", "snr", 8.0, "test")
    assert nucleus.target_snr(test, ids[:5]) == 8.0
    er = ConfigImages(opts, "er", torch.device("cpu"))
    assert er.target_snr(train, ids[:5]) == TRAIN_SNR["er"][0] == 8.0


def test_snr_8_shares_the_files_of_test(small_package: Path):
    from builder.package.manifest import split_files

    m = _manifest(small_package)
    for config in CONFIGS:
        assert m["configs"][config]["splits"]["snr_8"]["alias_of"] == "test"
        assert split_files(m, config, "snr_8") == split_files(m, config, "test")
    shards = {p.name for p in (small_package / "data" / "mito").iterdir()}
    assert not any(name.startswith("snr_8") for name in shards)


def test_package_verifies_and_ships_model(small_package: Path, capsys):
    assert main(["verify", str(small_package)]) == 0
    assert "OK" in capsys.readouterr().out
    for config in CONFIGS:
        assert (small_package / "models" / f"{config}-unet.safetensors").exists()


def test_loader_helpers(small_package: Path):
    import torch

    import fluorobench_c

    ds = fluorobench_c.load(small_package, "nucleus", "snr_2")
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=fluorobench_c.collate)
    batch = next(iter(loader))
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (2, 1, 256, 256)
    assert batch["mask"].shape == (2, 1, 256, 256) and set(batch["mask"].unique().tolist()) == {
        0.0,
        1.0,
    }
    assert batch["image"].max() > 100  # raw ADU, not normalised
    assert batch["instances"].shape == (2, 1, 256, 256)
    z = fluorobench_c.Collate(normalize="zscore")(list(ds.take(2)))["image"]
    assert abs(float(z.mean())) < 1e-4
    with pytest.raises(ValueError, match="unknown config"):
        fluorobench_c.load(small_package, "golgi", "test")


def test_arrow_builder_reads_the_package(small_package: Path, tmp_path: Path):
    import fluorobench_c

    b = fluorobench_c.FluoroBenchC(
        config_name="mito", data_path=str(small_package), cache_dir=str(tmp_path)
    )
    streamed = list(b.as_streaming_dataset(split="sib_2"))
    _check_rows(streamed, "mito", "sib_2")
    b.download_and_prepare()
    ds = b.as_dataset(split="snr_8")
    assert ds.num_rows == COUNTS["test"] and ds.info.dataset_name == "fluorobench-c"


def test_same_seed_same_bytes_whatever_the_batch_size(tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["build", str(a), *FAST]) == 0
    assert main(["build", str(b), *FAST, "--batch-size", "3", "--shard-size", "256"]) == 0
    ma, mb = _manifest(a), _manifest(b)
    assert ma["configs"] == mb["configs"]
    for p in (a / "data").rglob("*.parquet"):
        assert p.read_bytes() == (b / p.relative_to(a)).read_bytes()
    c = tmp_path / "c"
    assert main(["build", str(c), *FAST[:-2], "--seed", "8"]) == 0
    assert (
        _manifest(c)["configs"]["mito"]["splits"]["test"] != ma["configs"]["mito"]["splits"]["test"]
    )


def test_sigkill_then_resume_gives_the_uninterrupted_manifest(tmp_path: Path):
    ref = tmp_path / "ref"
    args = [*FAST, "--shard-size", "1"]  # many shards: the kill lands mid-build
    assert main(["build", str(ref), *args]) == 0
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "builder.cli", "build", str(out), *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if (out / "data" / "mito").is_dir() and len(
                list((out / "data" / "mito").iterdir())
            ) >= 4:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the build wrote no shard in time")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not _manifest(out)["complete"]
    assert main(["build", str(out), *args]) == 0  # same command: resumes
    assert _manifest(out) == _manifest(ref)
    assert not list(out.rglob(".*.tmp-*"))
    assert verify(out, load=False) == []


def test_refusals_and_overwrite(tmp_path: Path, capsys):
    out = tmp_path / "pkg"
    assert main(["build", str(out), *FAST]) == 0
    before = _manifest(out)
    assert main(["build", str(out), *FAST[:-2], "--seed", "9"]) == 2
    err = capsys.readouterr().err
    assert "different build" in err and "seed" in err and "--overwrite" in err
    assert _manifest(out) == before
    assert main(["build", str(out), *FAST]) == 0  # the same command on a complete build: no-op
    assert _manifest(out) == before
    assert main(["build", str(out), *FAST[:-2], "--seed", "9", "--overwrite"]) == 0
    assert _manifest(out)["recipe"]["seed"] == 9

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(["build", str(other), *FAST]) == 2
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_a_second_concurrent_build_is_refused(tmp_path: Path, capsys):
    out = tmp_path / "pkg"
    with build_lock(out):
        assert main(["build", str(out), *FAST]) == 2
    assert "another fluorobench-c build" in capsys.readouterr().err


def test_the_lock_of_a_killed_build_is_released(tmp_path: Path):
    """A holder killed by SIGKILL leaves no stale lock (filelock's OS lock dies with it)."""
    import signal
    import subprocess
    import sys

    from builder.package.manifest import LOCK, BuildError

    out = tmp_path / "pkg"
    code = (
        "import sys, time; from pathlib import Path; "
        "from builder.package.manifest import build_lock\n"
        "with build_lock(Path(sys.argv[1])):\n"
        "    print('held', flush=True); time.sleep(120)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
        with pytest.raises(BuildError, match="another fluorobench-c build"):
            with build_lock(out):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with build_lock(out):  # the kernel released it: taken at once
        assert (out / LOCK).exists()
    assert not (out / LOCK).exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--config", "golgi"], "unknown config 'golgi'"),
        (["--splits", "snr_9"], "unknown split or family 'snr_9'"),
        (["--splits", "real"], "needs a source with real images"),
        (["--test", "-1"], "expected a number >= 1"),
        (["--train", "x"], "expected a whole number"),
        (["--source", "/no/such/place"], "no such file or folder"),
    ],
)
def test_bad_arguments_one_line_exit_2_nothing_written(tmp_path: Path, capsys, extra, message):
    out = tmp_path / "pkg"
    assert main_exit(["build", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_output_path_that_is_a_file(tmp_path: Path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main_exit(["build", str(f), *FAST]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert f.read_text() == "x"


def main_exit(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse errors
        return int(exc.code)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_verify_catches_flipped_byte_missing_shard_and_wrong_count(
    small_package: Path, tmp_path: Path, capsys
):
    flipped = _copy(small_package, tmp_path / "flipped")
    shard = sorted((flipped / "data" / "er").glob("sib_3-*.parquet"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    problems = verify(flipped, load=False)
    assert any(str(shard) in str(p) and "sha256" in str(p) for p in problems)
    assert main(["verify", str(flipped), "--no-load"]) == 1
    assert str(shard) in capsys.readouterr().err

    missing = _copy(small_package, tmp_path / "missing")
    gone = sorted((missing / "data" / "mito").glob("svb_1-*.parquet"))[0]
    gone.unlink()
    assert any(
        str(gone) in str(p) and "missing shard" in str(p) for p in verify(missing, load=False)
    )

    count = _copy(small_package, tmp_path / "count")
    m = _manifest(count)
    m["configs"]["nucleus"]["splits"]["snr_1"]["shards"][0]["num_rows"] += 1
    (count / "manifest.json").write_text(json.dumps(m))
    problems = [str(p) for p in verify(count, load=False)]
    assert any(
        "snr_1-00000-of-00001.parquet" in p and "rows, manifest.json says" in p for p in problems
    )


def test_verify_catches_a_card_that_lies(small_package: Path, tmp_path: Path):
    pkg = _copy(small_package, tmp_path / "card")
    readme = pkg / "README.md"
    readme.write_text(readme.read_text().replace("num_examples: 2", "num_examples: 5", 1))
    assert any("dataset_info" in str(p) for p in verify(pkg, load=False))
    os.remove(readme)
    assert any("missing dataset card" in str(p) for p in verify(pkg, load=False))

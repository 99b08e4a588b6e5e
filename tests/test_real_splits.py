"""The real_snr / real_sib / real_svb splits end to end: built from a source with real
images, loaded through ``datasets`` with a fresh cache, paired by id, verified."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder.cli import main
from tests.toy import disc_source

SPLITS = ["--splits", "reference", "real", "real_snr", "real_sib", "real_svb", "snr_2"]


def _noisy_discs(root: Path) -> Path:
    """40 disc images; odd-numbered ones are very noisy (native SNR ~2-3), even ones clean
    (SNR > 20), so the high-SNR real splits must skip the odd ones."""
    return disc_source(
        root, 40, seed=3, levels=(40.0, 70.0), noise=lambda i: 12.0 if i % 2 else 1.0, discs=6
    )


@pytest.fixture(scope="module")
def real_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = _noisy_discs(tmp_path_factory.mktemp("src") / "discs")
    out = tmp_path_factory.mktemp("pkg") / "real"
    args = ["build", str(out), "--config", "nucleus", "--source", str(src), *SPLITS]
    args += ["--train", "3", "--validation", "1", "--test", "8", "--device", "cpu"]
    assert main(args) == 0
    return out


def test_real_splits_load_pair_and_verify(real_package: Path, tmp_path: Path):
    import datasets

    manifest = json.loads((real_package / "manifest.json").read_text())
    entry = manifest["configs"]["nucleus"]
    test_ids = [r["id"] for r in _rows(real_package, "test", tmp_path)]
    assert main(["verify", str(real_package)]) == 0
    # Noisy tiles (odd) cannot reach SNR 8: left out and counted; the rest pair with test.
    native = {
        r["id"]: r["params"]["real"]["snr_native"] for r in _rows(real_package, "real", tmp_path)
    }
    assert sorted(native) == sorted(test_ids)
    low = [i for i in test_ids if native[i] < 8]
    assert low and len(low) < len(test_ids), native
    snr8 = entry["splits"]["real_snr_8"]
    assert snr8["skipped_below_target"] == len(low)
    for name in ("real_snr_8", "real_snr_1", "real_sib_3", "real_svb_5", "snr_2"):
        rows = _rows(real_package, name, tmp_path)
        ids = [r["id"] for r in rows]
        assert ids == [i for i in test_ids if i in set(ids)]  # same ids, same order
        if name != "real_snr_8":
            assert ids == test_ids
    # The params of a real noise row: the fit, the target and the realised SNR.
    for r in _rows(real_package, "real_snr_2", tmp_path):
        p = r["params"]
        assert p["renderer"] is None and p["snr_target"] == 2.0
        assert abs(p["snr_measured"] / 2 - 1) < 0.05
        assert p["real"]["added_scale"] > 0 and p["real"]["noise_b"] is not None
        assert p["real"]["snr_native"] > 2 and p["noise_seed"] is not None
    blur = _rows(real_package, "real_sib_3", tmp_path)[0]["params"]
    assert blur["psf"]["kind"] == "gaussian" and blur["psf"]["sigma_px"] == 3.0
    assert 0 < blur["real"]["noise_retained"] < 0.05
    # Card: where the real tiles lie on the SNR scale.
    card = (real_package / "README.md").read_text()
    assert "Where the real images lie on the SNR scale" in card
    assert entry["native_snr"]["tiles"] == len(test_ids)
    ds = datasets.load_dataset(
        str(real_package), "nucleus", split="real_svb_2", cache_dir=str(tmp_path / "fresh")
    )
    assert len(ds) == len(test_ids) and ds[0]["image"].size == (256, 256)


def test_real_splits_need_real_images(tmp_path: Path, capsys):
    assert main(["build", str(tmp_path / "o"), "--splits", "real_snr_2", "--test", "1"]) == 2
    assert "needs a source with real images" in capsys.readouterr().err


def _rows(pkg: Path, split: str, tmp_path: Path) -> list[dict]:
    import datasets

    ds = datasets.load_dataset(str(pkg), "nucleus", split=split, streaming=True)
    return list(ds)


def test_bbbc038_build_writes_real_splits(bbbc038_dir, tmp_path: Path):
    """The shared BBBC038 folder end to end: real_* splits written, loaded with a fresh
    cache, paired by id with the synthetic splits of the same masks, verified."""
    import datasets

    out = tmp_path / "pkg"
    args = ["build", str(out), "--config", "nucleus", "--source", str(bbbc038_dir)]
    args += ["--splits", "reference", "real_snr_3", "real_sib_2", "real_svb_4", "snr_3", "sib_2"]
    args += ["--train", "2", "--validation", "1", "--test", "5", "--device", "cpu"]
    assert main(args) == 0
    assert main(["verify", str(out)]) == 0
    cache = str(tmp_path / "cache")
    ids = {
        s: datasets.load_dataset(str(out), "nucleus", split=s, cache_dir=cache)["id"]
        for s in ("test", "snr_3", "sib_2", "real_snr_3", "real_sib_2", "real_svb_4")
    }
    assert len(ids["test"]) == 5
    for split in ("snr_3", "sib_2", "real_sib_2", "real_svb_4"):
        assert ids[split] == ids["test"], split
    assert ids["real_snr_3"] == [i for i in ids["test"] if i in set(ids["real_snr_3"])]
    row = datasets.load_dataset(str(out), "nucleus", split="real_snr_3", cache_dir=cache)[0]
    assert row["params"]["real"]["snr_native"] > 3
    assert abs(row["params"]["snr_measured"] / 3 - 1) < 0.05

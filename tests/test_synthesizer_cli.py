"""``fluorobench-c train-synthesizer`` end to end (tiny models), and ``build --renderer gan``."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from builder.cli import main
from synthesis.runtime.files import sha256_file
from tests.toy import disc_source

TINY = ["--preset", "tiny", "--device", "cpu", "--seed", "3"]


#: Tiny models run fastest on one thread (conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("synth")
    src = disc_source(base / "src")
    out = base / "weights"
    code = main(
        ["train-synthesizer", "--config", "nucleus", "--source", str(src), "--out", str(out), *TINY]
    )
    assert code == 0
    return out


def test_train_synthesizer_writes_everything(tiny_weights: Path):
    out = tiny_weights
    for name in (
        "nucleus-pix2pix.safetensors",
        "nucleus-denoiser.safetensors",
        "nucleus-pix2pix.md",
        "nucleus-pix2pix-loss.jsonl",
        "nucleus-denoiser-loss.jsonl",
        "metrics.json",
    ):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["generator"]["sha256"] == sha256_file(out / "nucleus-pix2pix.safetensors")
    assert metrics["denoiser"]["sha256"] == sha256_file(out / "nucleus-denoiser.safetensors")
    assert metrics["generator"]["step"] == 8 and metrics["pairs"]["train"] > 0
    res = metrics["denoiser"]["residual_noise_median"]
    assert {"real", "generated", "generated_denoised"} <= set(res)
    log = [json.loads(x) for x in (out / "nucleus-pix2pix-loss.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == list(range(1, 9))
    assert all(np.isfinite(e["loss_G_l1"]) and np.isfinite(e["loss_D"]) for e in log)
    # Sample grids: 4 rows of mask | real | generated, 32 px panels with 2 px gaps.
    grid = Image.open(out / "samples" / "nucleus-pix2pix-step-00000008.png")
    assert grid.size == (3 * 32 + 2 * 2, 4 * 32 + 3 * 2)
    assert metrics["generator"]["sha256"] in (out / "nucleus-pix2pix.md").read_text()


def test_rerun_resumes_without_retraining(tiny_weights: Path, tmp_path: Path):
    """The same command again finds the final checkpoints: same weights, same log."""
    before = sha256_file(tiny_weights / "nucleus-pix2pix.safetensors")
    log_before = (tiny_weights / "nucleus-pix2pix-loss.jsonl").read_text()
    src = disc_source(tmp_path / "src")
    args = [
        "train-synthesizer",
        "--config",
        "nucleus",
        "--source",
        str(src),
        "--out",
        str(tiny_weights),
    ]
    assert main([*args, *TINY]) == 0
    assert sha256_file(tiny_weights / "nucleus-pix2pix.safetensors") == before
    assert (tiny_weights / "nucleus-pix2pix-loss.jsonl").read_text() == log_before


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--config", "golgi"], "--config: invalid choice: 'golgi'"),
        (["--crop", "512"], "crop must be <= the smallest image side"),
        (["--steps", "0"], "--steps: expected a number >= 1. Got 0"),
    ],
)
def test_bad_arguments_exit_2(tmp_path: Path, capsys, extra, message):
    src = disc_source(tmp_path / "src", n=4)
    args = [
        "train-synthesizer",
        "--config",
        "nucleus",
        "--source",
        str(src),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main([*args, *TINY, *extra]) == 2
    assert message in capsys.readouterr().err


def test_missing_source_exits_2(tmp_path: Path, capsys):
    args = ["train-synthesizer", "--config", "nucleus", "--source", str(tmp_path / "nope")]
    assert main([*args, "--out", str(tmp_path / "o"), *TINY]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_real_bbbc038_pairs_train(bbbc038_dir: Path, tmp_path: Path):
    """A few steps on real BBBC038 tiles (the shared data; skipped when absent)."""
    from synthesis.render.gan import GanRenderer

    out = tmp_path / "w"
    args = ["train-synthesizer", "--config", "nucleus", "--source", str(bbbc038_dir)]
    assert main([*args, "--out", str(out), "--max-tiles", "4", "--no-denoiser", *TINY]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["pairs"]["train"] >= 1 and "denoiser" not in metrics
    mask = torch.zeros(1, 1, 256, 256, dtype=torch.bool)
    mask[..., 100:140, 90:150] = True
    result = GanRenderer.from_weights(out, "nucleus")(mask, torch.tensor([1]), "nucleus")
    assert result.image.shape == (1, 1, 256, 256) and result.params[0]["denoiser"] is None


def _decode(cell) -> np.ndarray:
    if isinstance(cell, dict):
        return np.asarray(Image.open(io.BytesIO(cell["bytes"])))
    return np.asarray(cell)


@pytest.mark.slow
def test_build_with_gan_renderer(tiny_weights: Path, tmp_path: Path):
    """build --renderer gan with tiny weights: a loadable package whose rows name the weights."""
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("synthesis.corruptions.noise")
    out = tmp_path / "pkg"
    args = ["build", str(out), "--config", "nucleus", "--splits", "reference", "snr"]
    args += ["--train", "2", "--validation", "1", "--test", "2", "--device", "cpu"]
    assert main([*args, "--renderer", "gan", "--weights", str(tiny_weights)]) == 0
    gen_sha = sha256_file(tiny_weights / "nucleus-pix2pix.safetensors")
    den_sha = sha256_file(tiny_weights / "nucleus-denoiser.safetensors")
    rows = list(datasets.load_dataset(str(out), "nucleus", split="snr_2", streaming=True))
    assert len(rows) == 2
    for r in rows:
        img = _decode(r["image"])
        assert img.shape == (256, 256) and img.dtype == np.uint16
        p = r["params"]
        assert p["renderer"] == "gan" and p["snr_target"] == 2
        rp = json.loads(p["renderer_params"])
        assert rp["generator_sha256"] == gen_sha and rp["denoiser_sha256"] == den_sha
        assert rp["seed"] == p["render_seed"]
    assert main(["verify", str(out)]) == 0


def test_build_gan_without_weights_is_refused(tmp_path: Path, capsys):
    pytest.importorskip("synthesis.corruptions.noise")
    args = ["build", str(tmp_path / "pkg"), "--config", "nucleus", "--splits", "reference"]
    args += ["--train", "1", "--validation", "1", "--test", "1", "--device", "cpu"]
    assert main([*args, "--renderer", "gan", "--weights", str(tmp_path / "none")]) == 2
    assert "no generator weights for 'nucleus'" in capsys.readouterr().err


def test_build_gan_needs_a_weights_folder(tmp_path: Path, capsys):
    """No weights ship with the package: --renderer gan without --weights is refused before
    anything is written."""
    out = tmp_path / "pkg"
    args = ["build", str(out), "--config", "nucleus", "--splits", "reference", "--renderer", "gan"]
    assert main(args) == 2
    assert "--renderer gan needs --weights DIR" in capsys.readouterr().err
    assert not out.exists()

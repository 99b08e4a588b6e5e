"""``benchmarks/mito_transfer.py`` end to end on tiny sizes: two real images of tubes in an
images-only folder, one procedural condition, two training tiles, one epoch, one seed; the
report's keys, and a rerun that reuses the model and its scores (no retraining)."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def mt(monkeypatch):
    """``benchmarks/mito_transfer.py``, imported as the scripts run."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module("mito_transfer")


def _tubes(size: int, seed: int) -> np.ndarray:
    """A ``size`` x ``size`` uint16 image: 3 px tubes joined by a vertical one, blurred, on
    a background, with Poisson noise."""
    rs = np.random.default_rng(seed)
    m = np.zeros((size, size), bool)
    for y in range(20, size - 20, 30):
        m[y : y + 3, 10 : size // 2] = True
    m[20 : size - 20, 60:63] = True
    x = 100.0 + 900.0 * ndimage.gaussian_filter(m.astype(float), 0.8)
    return rs.poisson(x).astype(np.uint16)


@pytest.fixture
def real_folder(tmp_path: Path) -> Path:
    import tifffile

    images = tmp_path / "real" / "images"
    images.mkdir(parents=True)
    tifffile.imwrite(images / "hcs_wt_mito.tif", _tubes(200, 0))  # x1.6: one 320 px tile
    tifffile.imwrite(images / "nao_mito.tif", _tubes(512, 1))  # x0.5: one 256 px tile
    return tmp_path / "real"


def test_transfer_tiny_and_resumes(mt, real_folder: Path, tmp_path: Path, one_thread) -> None:
    opts = mt.TransferOptions(
        real=real_folder,
        out=tmp_path / "out",
        conditions=(("physics", "worms"),),
        seeds=1,
        epochs=1,
        train=2,
        validation=1,
    )
    r = mt.transfer(opts)
    assert {s: v["tiles"] for s, v in r["real"].items()} == {"hcs_wt_mito": 1, "nao_mito": 1}
    assert r["baseline"] == "physics-worms" and list(r["conditions"]) == ["physics-worms"]
    c = r["conditions"]["physics-worms"]
    run = c["seeds"]["0"]
    assert run["trained_now"] is True
    for k in ("iou", "precision", "recall", "predicted_fraction", "pseudo_fraction"):
        assert 0.0 <= run[k] <= 1.0, k
    assert set(run["per_image"]) == {"hcs_wt_mito", "nao_mito"}
    assert run["training"]["seconds"] >= 0 and "val_iou" in run["training"]
    agg = c["aggregate"]
    assert agg["iou"]["n"] == 1 and agg["iou"]["sd"] is None
    assert set(agg["per_image"]) == {"hcs_wt_mito", "nao_mito"}
    table = mt.markdown(r)
    assert "| physics, worms |" in table and "baseline" in table

    models = sorted((tmp_path / "out" / "models").glob("*.safetensors"))
    assert len(models) == 1
    stamp = models[0].stat().st_mtime_ns
    # Without its stored scores the model is loaded and scored again, not retrained.
    for cache in (tmp_path / "out" / "models").glob("*.scores.json"):
        cache.unlink()
    again = mt.transfer(opts)
    rerun = again["conditions"]["physics-worms"]["seeds"]["0"]
    assert rerun["trained_now"] is False
    assert models[0].stat().st_mtime_ns == stamp
    assert rerun["iou"] == run["iou"] and rerun["training"] == run["training"]


def test_no_real_images_is_a_clear_skip(mt, tmp_path: Path) -> None:
    opts = mt.TransferOptions(real=tmp_path / "absent", out=tmp_path / "out")
    with pytest.raises(mt.NoRealImages, match="no real mitochondria images"):
        mt.transfer(opts)
    assert not (tmp_path / "out").exists()

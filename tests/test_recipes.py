"""The recipes of docs/recipes.md, run as written: a MONAI model through ``evaluate``, a plain
PyTorch training loop with several ``DataLoader`` workers, and torchmetrics agreeing with our
IoU."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from builder.cli import main
from tests.conftest import ROOT

EXAMPLES = ROOT / "examples"
pytest.importorskip("monai")
pytest.importorskip("torchmetrics")


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"_recipe_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_monai_basicunet_through_evaluate(small_package: Path, tmp_path: Path):
    out = tmp_path / "monai"
    spec = f"{EXAMPLES / 'monai_unet.py'}:make_model"
    args = ["evaluate", "--data", str(small_package), "--config", "mito", "--model", spec]
    assert main([*args, "--splits", "test", "snr_2", "sib_3", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["model"]["description"] == spec
    assert set(results["splits"]) == {"test", "snr_2", "sib_3"}
    for r in results["splits"].values():
        assert 0.0 <= r["iou"] <= 1.0 and r["images"] == 2
    model = _module("monai_unet").make_model()
    assert type(model).__module__.startswith("monai.")
    assert model(torch.zeros(2, 1, 256, 256)).shape == (2, 1, 256, 256)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A mito package whose train split has 4 shards of 2 rows."""
    out = tmp_path_factory.mktemp("sharded") / "pkg"
    args = ["build", str(out), "--config", "mito", "--splits", "reference", "--train", "8"]
    args += ["--validation", "2", "--test", "2", "--rows-per-shard", "2", "--seed", "3"]
    assert main([*args, "--device", "cpu"]) == 0
    return out


def test_training_loop_with_several_workers_sees_every_row_once(sharded: Path):
    recipe = _module("train_loop")
    loader = recipe.make_loader(str(sharded), "mito", "train", batch_size=2, workers=2)
    assert loader.num_workers == 2 and loader.dataset.num_shards == 4
    from synthesis.models.unet import UNet

    history = recipe.train(UNet(base_channels=4, depth=2, seed=0), loader, epochs=2)
    manifest = json.loads((sharded / "manifest.json").read_text())
    assert manifest["configs"]["mito"]["splits"]["train"]["num_rows"] == 8
    for record in history:  # every row once per epoch, whichever worker read it
        assert len(record["ids"]) == 8 and len(set(record["ids"])) == 8
        assert torch.isfinite(torch.tensor(record["loss"]))
    assert history[1]["loss"] < history[0]["loss"] * 1.5


def test_torchmetrics_jaccard_agrees_with_our_iou(small_package: Path):
    """``BinaryJaccardIndex`` (foreground IoU over all pixels) equals our aggregate IoU on the
    same predictions: the reference U-Net on two splits."""
    from torchmetrics.classification import BinaryJaccardIndex

    import fluorobench_c
    from synthesis.metrics import SegmentationScores, logits_to_mask
    from synthesis.models.unet import load_model
    from synthesis.normalize import normalize

    model, _ = load_model(small_package / "models" / "mito-unet.safetensors")
    for split in ("test", "snr_1"):
        ds = fluorobench_c.load(small_package, "mito", split, columns=fluorobench_c.MODEL_COLUMNS)
        loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=fluorobench_c.collate)
        ours, theirs = SegmentationScores(), BinaryJaccardIndex()
        with torch.no_grad():
            for batch in loader:
                pred = logits_to_mask(model(normalize(batch["image"], "zscore")))
                target = batch["mask"] > 0.5
                ours.update(pred, target)
                theirs.update(pred.long(), target.long())
        assert abs(ours.compute()["iou"] - theirs.compute().item()) < 1e-6, split

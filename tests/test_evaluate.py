"""`fluorobench-c evaluate` end to end on a tiny built benchmark, and its error paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from builder.cli import main
from builder.evaluation.scoring import parse_attacks, summarise


def test_evaluate_reference_model_end_to_end(small_package: Path, tmp_path: Path, capsys):
    out = tmp_path / "results"
    argv = ["evaluate", "--data", str(small_package), "--config", "mito", "--out", str(out)]
    argv += [
        "--splits",
        "test",
        "snr_1",
        "sib_5",
        "pgd_8",
        "--attacks",
        "fgsm:4",
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["splits"]) == {"test", "snr_1", "sib_5", "pgd_8", "whitebox_fgsm_4"}
    test = results["splits"]["test"]
    assert test["images"] == 2 and test["robustness"] == pytest.approx(100.0)
    for split, r in results["splits"].items():
        assert 0.0 <= r["iou"] <= 1.0 and 0.0 <= r["dice"] <= 1.0, split
        if test["iou"] > 0:
            assert r["robustness"] == pytest.approx(100 * r["iou"] / test["iou"])
    assert set(results["families"]) == {"snr", "sib", "pgd", "whitebox_fgsm"}
    assert len(results["model"]["sha256"]) == 64
    assert "| `snr_1` |" in (out / "results.md").read_text()
    assert (out / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "results written to" in capsys.readouterr().out


def test_evaluate_opens_the_package_once_and_scores_as_per_split(small_package: Path, monkeypatch):
    """One ``load_dataset`` call for every split of a config (each call parses the card's
    YAML); the scores are the ones of opening each split on its own."""
    import datasets

    from builder.evaluation import scoring
    from builder.evaluation.model_loading import load_model_spec, make_preprocess

    calls = []
    real_load = datasets.load_dataset

    def counting(*args, **kwargs):
        calls.append(kwargs.get("split"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", counting)
    splits = ["snr_1", "sib_5", "svb_2"]
    results = scoring.evaluate(str(small_package), "er", splits=splits, device="cpu")
    assert calls == [None]  # every split (and "test") from one call
    info = load_model_spec(None, str(small_package), "er", torch.device("cpu"))
    for split in splits:
        alone = scoring.evaluate_split(
            str(small_package),
            "er",
            split,
            info.model,
            make_preprocess("zscore"),
            device=torch.device("cpu"),
        ).compute()
        assert alone["iou"] == results["splits"][split]["iou"], split
    assert calls[1:] == splits


def test_build_ships_reference_results(small_package: Path):
    for config in ("er", "mito", "nucleus"):
        results = json.loads((small_package / "results" / f"{config}.json").read_text())
        assert "pgd_32" in results["splits"] and "snr_1" in results["splits"]
        assert (
            results["model"]["sha256"]
            == json.loads((small_package / "manifest.json").read_text())["configs"][config][
                "model"
            ]["sha256"]
        )


def _write_module(path: Path, body: str) -> Path:
    path.write_text("import torch\nfrom torch import nn\n" + body)
    return path


def test_user_model_factory_and_torchscript(small_package: Path, tmp_path: Path):
    mod = _write_module(
        tmp_path / "m.py",
        "def make():\n    return nn.Conv2d(1, 2, 3, padding=1)\n",
    )
    out = tmp_path / "r1"
    argv = ["evaluate", "--data", str(small_package), "--config", "er", "--splits", "snr_2"]
    assert main([*argv, "--model", f"{mod}:make", "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["model"]["description"].endswith(":make")
    scripted = tmp_path / "m.pt"
    torch.jit.script(nn_conv()).save(str(scripted))
    assert main([*argv, "--model", str(scripted), "--out", str(tmp_path / "r2")]) == 0


def nn_conv() -> torch.nn.Module:
    return torch.nn.Conv2d(1, 1, 3, padding=1)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("missing.pt", "no such file"),
        ("nothere.py:make", "does not exist"),
        ("{mod}:nope", "has no callable 'nope'"),
        ("{mod}:not_a_module", "must return a torch.nn.Module"),
        ("{mod}:three_channels", "output does not fit"),
        ("{txt}", "not a TorchScript file"),
    ],
)
def test_bad_model_specs_are_clear(small_package: Path, tmp_path: Path, capsys, model, message):
    mod = _write_module(
        tmp_path / "user.py",
        "def not_a_module():\n    return 3\ndef three_channels():\n    return nn.Conv2d(1, 3, 1)\n",
    )
    txt = tmp_path / "weights.bin"
    txt.write_text("not a model")
    spec = model.format(mod=mod, txt=txt)
    argv = ["evaluate", "--data", str(small_package), "--config", "er", "--splits", "test"]
    assert main([*argv, "--model", spec, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_bad_splits_and_attacks(small_package: Path, tmp_path: Path, capsys):
    base = ["evaluate", "--data", str(small_package), "--config", "er", "--out", str(tmp_path)]
    assert main([*base, "--splits", "snr_9"]) == 2
    assert "has no split(s) snr_9" in capsys.readouterr().err
    with pytest.raises(ValueError, match="METHOD:EPS"):
        parse_attacks(["pgd"])
    with pytest.raises(ValueError, match="EPS must be > 0"):
        parse_attacks(["pgd:0"])
    assert parse_attacks(["segpgd:8", "cospgd:2.5"]) == [("segpgd", 8.0), ("cospgd", 2.5)]


def test_summarise_known_answers():
    per_split = {
        "test": {"iou": 0.8},
        "snr_1": {"iou": 0.2},
        "snr_2": {"iou": 0.4},
        "sib_1": {"iou": 0.8},
        "clean": {"iou": 0.9},
    }
    families = summarise(per_split)
    assert per_split["snr_1"]["robustness"] == pytest.approx(25.0)
    assert per_split["clean"]["robustness"] == pytest.approx(112.5)
    assert families["snr"]["mean_robustness"] == pytest.approx(37.5)
    assert families["sib"]["mean_robustness"] == pytest.approx(100.0)
    assert "clean" not in families and "reference" not in families

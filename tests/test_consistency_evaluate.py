"""Robustness without labels: the consistency score of ``fluorobench-c evaluate``
(``--consistency``; builder.evaluation.scoring), on tiny built packages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from builder.cli import main
from builder.evaluation import scoring
from tests.conftest import SMALL

# One synthetic split per family, a transfer attack (which brings the reference U-Net).
SPLITS = ["reference", "snr_1", "snr_8", "sib_2", "svb_1", "pgd_2", "clean"]
CONSTANT = """
class Constant(nn.Module):
    \"\"\"Foreground on the left half of every image, whatever the input (its value ignores
    the input; the zero term keeps a gradient path for the white-box attacks).\"\"\"

    def forward(self, x):
        out = torch.full_like(x, -1.0)
        out[..., : x.shape[-1] // 2] = 1.0
        return out + 0.0 * x

def constant():
    return Constant()

def conv():
    torch.manual_seed(0)
    return nn.Conv2d(1, 1, 3, padding=1)
"""


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cons") / "pkg"
    args = ["build", str(out), "--config", "mito", *SMALL, "--train-epochs", "1"]
    assert main([*args, "--device", "cpu", "--splits", *SPLITS]) == 0
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "models.py"
    path.write_text("import torch\nfrom torch import nn\n" + CONSTANT)
    return path


@pytest.fixture(scope="module")
def pseudo_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An images-only package (pseudo-masks): real tiles and their controlled corruptions."""
    from tests.test_images_only_source import _folder

    root = tmp_path_factory.mktemp("pseudo")
    src = _folder(root / "fields")
    out = root / "pkg"
    args = ["build", str(out), "--config", "mito", "--source", str(src), "--device", "cpu"]
    args += ["--train", "2", "--validation", "1", "--test", "2"]
    assert main([*args, "--splits", "test", "snr_1", "real", "real_snr_2", "real_sib_1"]) == 0
    return out


def _keys(value: object) -> set[str]:
    """Every key of a JSON value, at any depth."""
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


def test_pairs_each_split_with_its_undegraded_split():
    base = scoring.consistency_base
    assert [base(s) for s in ("test", "snr_1", "snr_8", "sib_5", "svb_1", "pgd_32")] == ["test"] * 6
    assert base("whitebox_segpgd_8") == "test" and base("fgsm_1") == "test"
    assert [base(s) for s in ("real", "real_snr_1", "real_sib_2", "real_svb_5")] == ["real"] * 4
    assert [base(s) for s in ("train", "validation", "clean", "nothing")] == [None] * 4


def test_scores_accumulate_batches_and_sum_across_ranks():
    from synthesis.metrics import ConsistencyScores, consistency

    g = torch.Generator().manual_seed(0)
    d, c = (torch.rand(5, 1, 8, 8, generator=g) > 0.5 for _ in range(2))
    whole, parts = ConsistencyScores(), ConsistencyScores()
    whole.update(d, c)
    parts.update(d[:2], c[:2])
    parts.update(d[2:], c[2:])
    r = parts.compute()
    assert r["intersection"] == int((d & c).sum()) and r["union"] == int((d | c).sum())
    assert r["consistency"] == r["intersection"] / r["union"] == whole.compute()["consistency"]
    assert r["consistency_mean"] == pytest.approx(float(consistency(d, c).mean()))
    # Another rank's zeros leave the state unchanged (what evaluate sums under torchrun).
    summed = [a + b for a, b in zip(parts.state(), ConsistencyScores().state(), strict=True)]
    assert ConsistencyScores.from_state(summed).compute() == r
    with pytest.raises(ValueError, match="at least one update"):
        ConsistencyScores().compute()


def test_summarise_adds_consistency_curves_beside_robustness():
    per_split = {
        "test": {"iou": 0.0, "consistency": 1.0},
        "snr_2": {"iou": 0.0, "consistency": 0.5},
        "snr_1": {"iou": 0.0, "consistency": 0.25},
        "real_sib_1": {"iou": 0.5, "consistency": 0.75},
        "clean": {"iou": 0.0, "consistency": None},
    }
    families = scoring.summarise(per_split)  # test IoU 0: no robustness, consistency still
    assert families == {
        "snr": {
            "mean_robustness": None,
            "splits": 2,
            "mean_consistency": 0.375,
            "consistency_curve": [[1.0, 0.25], [2.0, 0.5]],
        },
        "real_sib": {
            "mean_robustness": None,
            "splits": 1,
            "mean_consistency": 0.75,
            "consistency_curve": [[1.0, 0.75]],
        },
    }
    assert per_split["real_sib_1"]["family"] == "real_sib"  # not the synthetic sib


def test_counts_match_the_per_image_consistency_computed_directly(package: Path):
    """``test`` against itself is 1; ``snr_1``'s summed counts are those of
    ``synthesis.metrics.consistency`` on the per-image predictions made here."""
    import fluorobench_c
    from builder.evaluation.model_loading import load_model_spec, make_preprocess, predict
    from synthesis.metrics import consistency, iou_of_counts

    results = scoring.evaluate(
        str(package), "mito", splits=["snr_1", "sib_2", "pgd_2", "clean"], device="cpu",
        consistency=True, attacks=[("fgsm", 2.0)],
    )  # fmt: skip
    splits = results["splits"]
    test = splits["test"]
    assert test["consistency"] == 1.0 and test["consistency_mean"] == 1.0
    counts = test["consistency_counts"]
    assert counts["intersection"] == counts["union"] > 0 and counts["images"] == 2
    assert splits["clean"]["consistency"] is None  # no degradation of test
    for name in ("snr_1", "sib_2", "pgd_2", "whitebox_fgsm_2"):
        assert splits[name]["consistency_against"] == "test", name
        assert 0.0 <= splits[name]["consistency"] <= 1.0, name

    info = load_model_spec(None, str(package), "mito", torch.device("cpu"))
    preprocess = make_preprocess("zscore")
    pred = {}
    for split in ("test", "snr_1"):
        rows = list(fluorobench_c.load(str(package), "mito", split))
        images = torch.stack([torch.tensor(np.array(r["image"], np.float32)) for r in rows])
        p = predict(info.model, preprocess(images.reshape(len(rows), 1, 256, 256)))
        pred[split] = dict(zip([r["id"] for r in rows], p, strict=True))
    ids = sorted(pred["test"])
    assert sorted(pred["snr_1"]) == ids  # one row of each id in both splits
    degraded = torch.stack([pred["snr_1"][i] for i in ids])
    clean = torch.stack([pred["test"][i] for i in ids])
    inter = int((degraded & clean).sum())
    union = int((degraded | clean).sum())
    got = splits["snr_1"]
    assert got["consistency_counts"] == {"intersection": inter, "union": union, "images": 2}
    assert got["consistency"] == iou_of_counts(inter, union)
    assert got["consistency_mean"] == pytest.approx(float(consistency(degraded, clean).mean()))
    assert got["consistency"] < 1.0  # SNR 1 changes the answer of a 1-epoch U-Net

    snr = results["families"]["snr"]
    assert snr["consistency_curve"] == [[1.0, got["consistency"]]]
    assert snr["mean_consistency"] == got["consistency"]
    assert snr["mean_robustness"] == got["robustness"]  # the label-based score is unchanged


def test_a_model_that_ignores_its_input_is_perfectly_consistent(
    package: Path, models: Path, tmp_path: Path
):
    out = tmp_path / "r"
    argv = ["evaluate", "--data", str(package), "--config", "mito", "--out", str(out)]
    argv += ["--model", f"{models}:constant", "--consistency", "--device", "cpu"]
    assert main([*argv, "--attacks", "fgsm:2"]) == 0
    results = json.loads((out / "results.json").read_text())
    paired = {s: r for s, r in results["splits"].items() if r["consistency"] is not None}
    assert set(paired) == {"test", "snr_1", "snr_8", "sib_2", "svb_1", "pgd_2", "whitebox_fgsm_2"}
    for split, r in paired.items():
        assert r["consistency"] == 1.0 and r["consistency_mean"] == 1.0, split
        assert r["consistency_counts"]["union"] == 2 * 256 * 128, split
    assert results["splits"]["clean"]["consistency"] is None
    for family in ("snr", "sib", "svb", "pgd", "whitebox_fgsm"):
        assert results["families"][family]["mean_consistency"] == 1.0, family
    assert results["consistency"]["pseudo_masks"] is False
    md = (out / "results.md").read_text()
    # the structure metrics sit between robustness and consistency
    assert "| robustness | clDice |" in md and "| NSD | consistency |" in md
    assert "| mean consistency |" in md
    assert "| `snr_1` | snr | 1 | 2 |" in md and md.count(" 1.000 |") >= 7
    assert (out / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_the_option_nothing_changes(package: Path, models: Path, tmp_path: Path):
    argv = ["evaluate", "--data", str(package), "--config", "mito", "--device", "cpu"]
    argv += ["--model", f"{models}:conv", "--splits", "snr_1", "sib_2"]
    assert main([*argv, "--out", str(tmp_path / "plain")]) == 0
    assert main([*argv, "--out", str(tmp_path / "cons"), "--consistency"]) == 0
    plain = json.loads((tmp_path / "plain" / "results.json").read_text())
    cons = json.loads((tmp_path / "cons" / "results.json").read_text())
    assert not any("consistency" in k for k in _keys(plain))
    assert "consistency" not in (tmp_path / "plain" / "results.md").read_text()
    # With it: the same label-based scores, consistency keys added beside them.
    for split, r in plain["splits"].items():
        added = {k: v for k, v in cons["splits"][split].items() if "consistency" not in k}
        assert added == r, split
    for family, f in plain["families"].items():
        assert {k: v for k, v in cons["families"][family].items() if "consistency" not in k} == f


def test_on_by_default_for_pseudo_masks_and_real_families_pair_with_real(
    pseudo_package: Path, models: Path, tmp_path: Path
):
    import fluorobench_c

    real_ids = sorted(r["id"] for r in fluorobench_c.load(str(pseudo_package), "mito", "real"))
    for split in ("real_snr_2", "real_sib_1"):
        ids = sorted(r["id"] for r in fluorobench_c.load(str(pseudo_package), "mito", split))
        assert ids and set(ids) <= set(real_ids), split  # the same tiles, by id

    argv = ["evaluate", "--data", str(pseudo_package), "--config", "mito", "--device", "cpu"]
    argv += ["--model", f"{models}:conv"]
    assert main([*argv, "--out", str(tmp_path / "auto")]) == 0
    results = json.loads((tmp_path / "auto" / "results.json").read_text())
    assert results["consistency"]["pseudo_masks"] is True
    splits = results["splits"]
    assert splits["real"]["consistency"] == 1.0 and splits["real"]["family"] == "real"
    for split, family in (("real_snr_2", "real_snr"), ("real_sib_1", "real_sib")):
        assert splits[split]["consistency_against"] == "real" and splits[split]["family"] == family
        assert results["families"][family]["consistency_curve"] == [
            [splits[split]["level"], splits[split]["consistency"]]
        ]
    assert splits["snr_1"]["consistency_against"] == "test"
    assert "pseudo-masks" in (tmp_path / "auto" / "results.md").read_text()

    assert main([*argv, "--out", str(tmp_path / "off"), "--no-consistency"]) == 0
    off = json.loads((tmp_path / "off" / "results.json").read_text())
    assert not any("consistency" in k for k in _keys(off))


def test_a_degraded_row_without_its_undegraded_row_is_named(pseudo_package: Path, models: Path):
    """Consistency pairs rows by id: a row whose id the undegraded split lacks is named."""
    from builder.evaluation.model_loading import load_model_spec, make_preprocess
    from synthesis.metrics import ConsistencyScores

    cpu = torch.device("cpu")
    info = load_model_spec(f"{models}:conv", str(pseudo_package), "mito", cpu)
    args = (str(pseudo_package), "mito", "real_snr_2", info.model, make_preprocess("zscore"))
    real = scoring.predictions_by_id(*args[:2], "real", *args[3:], device=cpu)
    assert len(real) == 2 and all(scoring.unpack(p).shape == (1, 256, 256) for p in real.values())
    one = dict(list(real.items())[:1])
    with pytest.raises(ValueError, match="no row of the same id in the undegraded split real"):
        scoring.evaluate_split(*args, device=cpu, consistency=ConsistencyScores(), against=one)


def test_two_processes_give_the_consistency_of_one(package: Path, tmp_path: Path):
    """Each rank predicts the undegraded rows it needs itself; the summed counts are exactly
    the one-process result. So are the structure metrics (summed per-image counts and
    values) and the worst case over attacks (per-image scores gathered by row id)."""
    argv = ["evaluate", "--data", str(package), "--config", "mito", "--device", "cpu"]
    argv += ["--consistency", "--splits", "snr_1", "sib_2", "pgd_2"]
    argv += ["--attacks", "fgsm:2", "square:2", "--square-queries", "3"]
    assert main([*argv, "--out", str(tmp_path / "one")]) == 0
    assert main([*argv, "--out", str(tmp_path / "two"), "--workers", "2"]) == 0
    one = (tmp_path / "one" / "results.json").read_text()
    assert (tmp_path / "two" / "results.json").read_text() == one
    splits = json.loads(one)["splits"]
    assert splits["whitebox_fgsm_2"]["consistency"] is not None
    assert splits["sib_2"]["cldice"] is not None and splits["sib_2"]["hd95"] is not None
    assert splits["whitebox_worst_2"]["worst_of"] == 2
    assert sum(splits["whitebox_worst_2"]["worst_counts"].values()) == splits["test"]["images"]

"""The fidelity score: robustness curves and gaps from per-image counts, their mean and sd
over training seeds, and the ``fidelity`` command end to end on a small real source with two
training seeds (resumes without training or scoring again, adds a seed by training only it,
refuses other settings)."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

import builder.experiments.fidelity as fid
from builder.cli import main
from builder.experiments.fidelity import (
    FAMILIES,
    aggregate_seeds,
    curves,
    differs,
    fidelity_markdown,
    iou,
    split_scores,
)
from builder.package.card import spread_cell
from synthesis.runtime.files import sha256_file
from tests.toy import disc_source


def _counts(ids: list[str], inter: int, union: int = 100) -> dict[str, tuple[int, ...]]:
    return dict.fromkeys(ids, (inter, union, inter, union))


def test_curves_compare_each_real_split_with_its_reference_on_shared_tiles():
    ids = ["a", "b", "c", "d"]
    counts = {"test": _counts(ids, 80), "real": _counts(ids, 60)}
    # real_snr_8 keeps 3 tiles; on them the IoU is 0.5. real_snr_1 keeps 2 of those (and a
    # tile real_snr_8 lacks, which must be ignored).
    counts["real_snr_8"] = _counts(["a", "b", "c"], 50)
    counts["real_snr_1"] = {"a": (10, 100, 10, 100), "b": (30, 100, 30, 100), "d": (9, 10, 9, 10)}
    for lv in FAMILIES["snr"]:
        counts[f"snr_{lv}"] = _counts(ids, 8 * lv)  # robustness 10 lv
    for lv in FAMILIES["sib"]:
        counts[f"sib_{lv}"] = _counts(ids, 40)  # robustness 50
        counts[f"real_sib_{lv}"] = _counts(ids, 45)  # robustness 75
    out = curves(counts)
    assert out["snr"]["real"] == {1: pytest.approx(100 * 0.2 / 0.5)}
    assert out["snr"]["synthetic"][3] == pytest.approx(30)
    assert out["snr"]["gap"] == pytest.approx(abs(10 - 40))  # one level has both
    assert out["sib"]["gap"] == pytest.approx(25)
    assert out["svb"] == {"synthetic": {}, "real": {}, "gap": None}
    # The IoU of a subset comes from summed counts, not a mean of per-image IoUs.
    assert iou({"a": (1, 2, 1, 2), "b": (9, 10, 9, 10)}) == pytest.approx(10 / 12)
    assert iou({}) == 1.0
    # 2 of 4 predicted pixels are true; 2 of 8 true pixels are found.
    got = split_scores({"a": (1, 5, 2, 4), "b": (1, 9, 2, 4)})
    assert got == {"images": 2, "iou": pytest.approx(2 / 14), "precision": 0.5, "recall": 0.25}


def _seed_result(iou_real: float, gap: float, syn1: float, real1: float | None) -> dict[str, Any]:
    """A per-seed result as read back from JSON (level keys are strings)."""
    families = {f: {"synthetic": {}, "real": {}, "gap": None} for f in FAMILIES}
    families["snr"] = {
        "synthetic": {"1": syn1, "2": 90.0},
        "real": {"1": real1, "2": 80.0} if real1 is not None else {"2": 80.0},
        "gap": gap,
    }
    split = {"images": 4, "iou": iou_real, "precision": 0.9, "recall": iou_real}
    return {
        "iou_test": 0.9,
        "iou_real": iou_real,
        "iou_real_snr_8": iou_real - 0.1,
        "val_iou": 0.8,
        "families": families,
        "splits": {"real": split},
    }


def test_aggregate_seeds_gives_mean_and_sample_sd_of_every_score():
    per_seed = [
        _seed_result(0.714, 10.0, 50.0, 40.0),
        _seed_result(0.822, 12.0, 60.0, None),  # level 1 undefined on the real side
        _seed_result(0.825, 14.0, 70.0, 50.0),
    ]
    agg = aggregate_seeds(per_seed)
    assert agg["n"] == 3
    m = (0.714 + 0.822 + 0.825) / 3
    sd = math.sqrt(sum((x - m) ** 2 for x in (0.714, 0.822, 0.825)) / 2)  # ddof = 1
    assert agg["iou_real"]["mean"] == pytest.approx(m) == pytest.approx(0.787)
    assert agg["iou_real"]["sd"] == pytest.approx(sd) == pytest.approx(0.06324, abs=5e-6)
    assert agg["iou_real"]["n"] == 3
    assert agg["iou_real_snr_8"]["mean"] == pytest.approx(0.687)
    assert agg["iou_test"] == {"mean": pytest.approx(0.9), "sd": pytest.approx(0.0), "n": 3}
    snr = agg["families"]["snr"]
    assert snr["gap"] == {"mean": pytest.approx(12.0), "sd": pytest.approx(2.0), "n": 3}
    assert snr["synthetic"][1] == {"mean": pytest.approx(60.0), "sd": pytest.approx(10.0), "n": 3}
    # A level a seed leaves undefined is averaged over the seeds that define it.
    assert snr["real"][1] == {"mean": pytest.approx(45.0), "sd": pytest.approx(50**0.5), "n": 2}
    assert snr["real"][2]["sd"] == pytest.approx(0.0)
    assert set(snr["real"]) == {1, 2}  # levels nobody defines are left out
    assert agg["families"]["sib"] == {
        "gap": {"mean": None, "sd": None, "n": 0},
        "synthetic": {},
        "real": {},
    }
    assert agg["splits"]["real"]["recall"]["mean"] == pytest.approx(m)
    # One seed: a mean, no sd.
    one = aggregate_seeds(per_seed[:1])
    assert one["iou_real"] == {"mean": 0.714, "sd": None, "n": 1}
    assert one["families"]["snr"]["gap"] == {"mean": 10.0, "sd": None, "n": 1}
    # The real-trained U-Net's results have no families nor test IoU.
    real = aggregate_seeds([{"iou_real": 0.8, "iou_real_snr_8": 0.7, "val_iou": 0.9}] * 2)
    assert set(real) == {"n", "iou_real", "iou_real_snr_8", "val_iou"}


def test_differs_compares_the_difference_with_the_summed_sds():
    assert differs(0.787, 0.0633, 0.60, 0.05) is True  # 0.187 > 0.1133
    assert differs(0.787, 0.0633, 0.70, 0.05) is False  # 0.087 <= 0.1133
    assert differs(0.60, 0.05, 0.787, 0.0633) is True  # symmetric
    assert differs(0.5, 0.1, 0.7, 0.1) is False  # equal to the spread: does not exceed it
    assert differs(0.787, None, 0.60, 0.05) is None
    assert differs(0.787, 0.0633, 0.60, None) is None
    assert differs(None, 0.1, 0.60, 0.05) is None


def _results(per_seed: dict[str, list[dict[str, Any]]], seeds: list[int]) -> dict[str, Any]:
    renderers = {
        name: {
            "seeds": dict(zip(map(str, seeds), runs, strict=True)),
            "aggregate": aggregate_seeds(runs),
        }
        for name, runs in per_seed.items()
    }
    return {
        "config": "nucleus",
        "source": "src",
        "recipe": {"seed": seeds[0]},
        "seeds": seeds,
        "renderers": renderers,
        "skipped": {},
    }


def test_markdown_shows_mean_and_sd_and_whether_renderers_differ():
    physics = [_seed_result(v, 10.0, 50.0, 40.0) for v in (0.714, 0.822, 0.825)]
    naive = [_seed_result(v, 20.0, 50.0, 40.0) for v in (0.50, 0.52, 0.54)]
    close = [_seed_result(v, 20.0, 50.0, 40.0) for v in (0.75, 0.80, 0.85)]
    md = fidelity_markdown(
        _results({"physics": physics, "naive": naive, "close": close}, [0, 1, 2])
    )
    assert "trained 3 time(s), training seeds 0, 1, 2" in md
    assert "| physics | 0.900 ± 0.000 | 0.787 ± 0.063 |" in md
    assert "| 12.0 ± 2.0 |" not in md and "| 10.0 ± 0.0 |" in md
    assert "- physics 0.787 ± 0.063 vs naive 0.520 ± 0.020: difference 0.267 exceeds" in md
    assert "- physics 0.787 ± 0.063 vs close 0.800 ± 0.050: difference 0.013 does not exceed" in md
    assert "| physics | snr | 1 2 3 4 5 | 50 ± 0, 90 ± 0, —, —, — |" in md
    # One seed: means alone, and no verdict.
    md = fidelity_markdown(_results({"physics": physics[:1], "naive": naive[:1]}, [7]))
    assert "±" not in md
    assert "trained 1 time(s), training seeds 7" in md
    assert "vs naive 0.500: undecided" in md


@pytest.fixture(scope="module")
def fidelity_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    src = disc_source(tmp_path_factory.mktemp("src") / "discs", 40, seed=5, discs=6)
    out = tmp_path_factory.mktemp("fid") / "run"
    args = ["fidelity", "--source", str(src), "--out", str(out), "--renderers", "physics,naive"]
    args += ["--train", "8", "--validation", "2", "--test", "4", "--epochs", "3"]
    args += ["--seeds", "2", "--device", "cpu"]
    assert main(args) == 0
    return out, args


def test_fidelity_writes_agreeing_reports(fidelity_run):
    out, _ = fidelity_run
    results = json.loads((out / "fidelity.json").read_text())
    assert set(results["renderers"]) == {"physics", "naive"}
    assert results["skipped"] == {}
    assert results["seeds"] == [0, 1]
    assert "seeds" not in results["recipe"]
    for entry in results["renderers"].values():
        assert set(entry["seeds"]) == {"0", "1"}
        for res in entry["seeds"].values():
            assert 0 <= res["iou_real"] <= 1 and 0 <= res["iou_test"] <= 1
            for family, data in res["families"].items():
                assert sorted(map(int, data["real"])) == list(FAMILIES[family]), family
                syn, real = data["synthetic"], data["real"]
                want = sum(abs(syn[k] - real[k]) for k in real) / len(real)
                assert data["gap"] == pytest.approx(want)
            for split, sc in res["splits"].items():
                assert 0 <= sc["precision"] <= 1 and 0 <= sc["recall"] <= 1, split
            assert res["splits"]["real"]["iou"] == pytest.approx(res["iou_real"])
        # The aggregate is that of the per-seed results, as written.
        agg = aggregate_seeds(list(entry["seeds"].values()))
        assert entry["aggregate"] == json.loads(json.dumps(agg))
        assert entry["aggregate"]["iou_real"]["n"] == 2
    real = results["trained_on_real"]
    assert set(real["seeds"]) == {"0", "1"}
    for res in real["seeds"].values():
        assert 0 <= res["iou_real"] <= 1
        assert res["splits"]["real_snr_8"]["iou"] == pytest.approx(res["iou_real_snr_8"])
    assert real["aggregate"]["iou_real"]["n"] == 2
    manifest = json.loads((out / "packages" / "naive" / "manifest.json").read_text())
    assert (
        results["native_snr"]["tiles"]
        == manifest["configs"]["nucleus"]["splits"]["real"]["num_rows"]
    )
    assert set(results["residual_noise"]) == {
        f"real_{f}_{lv}" for f in ("sib", "svb") for lv in FAMILIES[f]
    }
    # One model per (renderer, training seed), its scores beside it, for that very file.
    models = sorted((out / "models").glob("*.safetensors"))
    assert len(models) == 6  # physics, naive, real x 2 seeds
    for model in models:
        stored = json.loads((out / "models" / f"{model.stem}.scores.json").read_text())
        assert stored["model_sha256"] == sha256_file(model)
        entry = results["trained_on_real" if stored["trained_on"] == "real" else "renderers"]
        entry = entry if stored["trained_on"] == "real" else entry[stored["trained_on"]]
        assert entry["seeds"][str(stored["seed"])] == stored["result"]
    # The Markdown is the JSON's table; the plot is a PNG.
    md = (out / "fidelity.md").read_text()
    assert md == fidelity_markdown(results)
    gap = results["renderers"]["naive"]["aggregate"]["families"]["sib"]["gap"]
    assert f"| {spread_cell(gap['mean'], gap['sd'], 1)} |" in md
    assert " ± " in md and "- physics " in md and " vs naive " in md
    assert (out / "fidelity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


class _Calls:
    """Counts the trainings, model loads and scorings of the fidelity module."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import synthesis.models.unet as unet

        self.trained: list[tuple[str, int]] = []
        self.scored: list[str] = []
        self.counted = self.loaded = self.noise = 0
        fit, score, counts, load, noise = (
            fid.fit_reference,
            fid.score,
            fid.per_image_counts,
            unet.load_model,
            fid.residual_noise,
        )

        def fit_(*a: Any, **k: Any) -> Any:
            self.trained.append((k["extra"]["trained_on"], k["seed"]))
            return fit(*a, **k)

        def score_(pkg: Path, *a: Any, **k: Any) -> Any:
            self.scored.append(pkg.name)
            return score(pkg, *a, **k)

        def counts_(*a: Any, **k: Any) -> Any:
            self.counted += 1
            return counts(*a, **k)

        def load_(*a: Any, **k: Any) -> Any:
            self.loaded += 1
            return load(*a, **k)

        def noise_(*a: Any, **k: Any) -> Any:
            self.noise += 1
            return noise(*a, **k)

        monkeypatch.setattr(fid, "fit_reference", fit_)
        monkeypatch.setattr(fid, "score", score_)
        monkeypatch.setattr(fid, "per_image_counts", counts_)
        monkeypatch.setattr(unet, "load_model", load_)
        monkeypatch.setattr(fid, "residual_noise", noise_)


def test_fidelity_rerun_trains_and_scores_nothing(fidelity_run, monkeypatch):
    out, args = fidelity_run
    models = sorted((out / "models").glob("*"))
    stamps = [p.stat().st_mtime_ns for p in models]
    before = (out / "fidelity.json").read_text(), (out / "fidelity.md").read_text()
    calls = _Calls(monkeypatch)
    assert main(args) == 0
    assert calls.trained == [] and calls.scored == [] and calls.counted == 0
    assert calls.loaded == 0 and calls.noise == 0  # not even a model is read
    assert [p.stat().st_mtime_ns for p in sorted((out / "models").glob("*"))] == stamps
    assert ((out / "fidelity.json").read_text(), (out / "fidelity.md").read_text()) == before


def test_fidelity_with_more_seeds_trains_only_the_new_seed(fidelity_run, tmp_path, monkeypatch):
    out, args = fidelity_run
    more = tmp_path / "run"
    shutil.copytree(out, more)
    before = json.loads((more / "fidelity.json").read_text())
    args = [str(more) if a == str(out) else a for a in args]
    args[args.index("--seeds") + 1] = "3"
    calls = _Calls(monkeypatch)
    assert main(args) == 0  # another number of seeds is not another recipe
    assert calls.trained == [("physics", 2), ("naive", 2), ("real", 2)]
    assert sorted(calls.scored) == ["naive", "physics"]
    assert calls.noise == 0
    after = json.loads((more / "fidelity.json").read_text())
    assert after["seeds"] == [0, 1, 2]
    for name in ("physics", "naive"):
        seeds = after["renderers"][name]["seeds"]
        assert {k: seeds[k] for k in ("0", "1")} == before["renderers"][name]["seeds"]
        assert after["renderers"][name]["aggregate"]["iou_real"]["n"] == 3
    real = after["trained_on_real"]["seeds"]
    assert {k: real[k] for k in ("0", "1")} == before["trained_on_real"]["seeds"]
    assert len(list((more / "models").glob("*.safetensors"))) == 9


@pytest.mark.slow
def test_two_workers_share_the_units_and_write_the_results_of_one(fidelity_run, tmp_path):
    """With the packages built, ``--workers 2`` takes the (trained on, seed) units from one
    queue: every model has the bytes of the one-process run's, and fidelity.json its
    results (the builds run nested in the job's process group and find themselves done)."""
    import subprocess
    import sys

    out, args = fidelity_run
    two = tmp_path / "run"
    shutil.copytree(out, two, ignore=shutil.ignore_patterns("models", "fidelity.*"))
    argv = [str(two) if a == str(out) else a for a in args]
    r = subprocess.run(
        [sys.executable, "-m", "builder.cli", *argv, "--workers", "2", "--threads", "1"],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rank 1 of 2 joined the fidelity" in r.stderr and "Traceback" not in r.stderr
    # Each of the 6 U-Nets trained once, by one rank or the other, and both ranks trained.
    # (Rank 0's progress bars share stderr, so lines are searched, not split.)
    firsts = re.findall(r"\[rank (\d)\] [\w.]+: epoch 1/3:", r.stderr)
    assert len(firsts) == 6 and set(firsts) == {"0", "1"}, firsts
    trained = {p.name: sha256_file(p) for p in (two / "models").glob("*.safetensors")}
    assert trained == {p.name: sha256_file(p) for p in (out / "models").glob("*.safetensors")}
    assert len(trained) == 6
    got, want = (json.loads((d / "fidelity.json").read_text()) for d in (two, out))
    assert got["renderers"] == want["renderers"]
    assert got["trained_on_real"] == want["trained_on_real"]


def test_fidelity_refuses_other_settings_and_procedural(fidelity_run, tmp_path, capsys):
    out, args = fidelity_run
    other = [a if args[i - 1] != "--epochs" else "2" for i, a in enumerate(args)]
    assert other != args
    assert main(other) == 2
    assert "other settings" in capsys.readouterr().err
    assert main(["fidelity", "--source", "procedural", "--out", str(tmp_path / "x")]) == 2
    assert "real images" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

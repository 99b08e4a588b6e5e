"""The fidelity score: robustness curves and gaps from per-image counts, and the
``fidelity`` command end to end on a small real source (resumes, refuses other settings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder.cli import main
from builder.experiments.fidelity import (
    FAMILIES,
    curves,
    fidelity_markdown,
    iou,
    split_scores,
)
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


@pytest.fixture(scope="module")
def fidelity_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    src = disc_source(tmp_path_factory.mktemp("src") / "discs", 40, seed=5, discs=6)
    out = tmp_path_factory.mktemp("fid") / "run"
    args = ["fidelity", "--source", str(src), "--out", str(out), "--renderers", "physics,naive"]
    args += ["--train", "8", "--validation", "2", "--test", "4", "--epochs", "3"]
    args += ["--device", "cpu"]
    assert main(args) == 0
    return out, args


def test_fidelity_writes_agreeing_reports(fidelity_run):
    out, _ = fidelity_run
    results = json.loads((out / "fidelity.json").read_text())
    assert set(results["renderers"]) == {"physics", "naive"}
    assert results["skipped"] == {}
    for res in results["renderers"].values():
        assert 0 <= res["iou_real"] <= 1 and 0 <= res["iou_test"] <= 1
        for family, data in res["families"].items():
            assert sorted(map(int, data["real"])) == list(FAMILIES[family]), family
            syn, real = data["synthetic"], data["real"]
            want = sum(abs(syn[k] - real[k]) for k in real) / len(real)
            assert data["gap"] == pytest.approx(want)
    for res in results["renderers"].values():
        for split, sc in res["splits"].items():
            assert 0 <= sc["precision"] <= 1 and 0 <= sc["recall"] <= 1, split
        assert res["splits"]["real"]["iou"] == pytest.approx(res["iou_real"])
    real = results["trained_on_real"]
    assert 0 <= real["iou_real"] <= 1
    assert real["splits"]["real_snr_8"]["iou"] == pytest.approx(real["iou_real_snr_8"])
    manifest = json.loads((out / "packages" / "naive" / "manifest.json").read_text())
    assert (
        results["native_snr"]["tiles"]
        == manifest["configs"]["nucleus"]["splits"]["real"]["num_rows"]
    )
    assert set(results["residual_noise"]) == {
        f"real_{f}_{lv}" for f in ("sib", "svb") for lv in FAMILIES[f]
    }
    # The Markdown is the JSON's table; the plot is a PNG.
    assert (out / "fidelity.md").read_text() == fidelity_markdown(results)
    gap = results["renderers"]["naive"]["families"]["sib"]["gap"]
    assert f"| {gap:.1f} |" in (out / "fidelity.md").read_text()
    assert (out / "fidelity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_fidelity_rerun_reuses_packages_and_models(fidelity_run):
    out, args = fidelity_run
    models = sorted((out / "models").glob("*.safetensors"))
    assert len(models) == 3  # physics, naive, real
    stamps = [p.stat().st_mtime_ns for p in models]
    before = json.loads((out / "fidelity.json").read_text())
    assert main(args) == 0
    assert [p.stat().st_mtime_ns for p in models] == stamps
    assert json.loads((out / "fidelity.json").read_text()) == before


def test_fidelity_refuses_other_settings_and_procedural(fidelity_run, tmp_path, capsys):
    out, args = fidelity_run
    other = [a if args[i - 1] != "--epochs" else "2" for i, a in enumerate(args)]
    assert other != args
    assert main(other) == 2
    assert "other settings" in capsys.readouterr().err
    assert main(["fidelity", "--source", "procedural", "--out", str(tmp_path / "x")]) == 2
    assert "real images" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

"""The structure metrics in ``evaluate``: known answers of the summaries, the worst case over
attacks image by image, the mCE against the reference results, and end to end on a tiny
package against the library computed directly on the model's predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from builder.cli import main
from builder.evaluation import scoring
from builder.evaluation.scoring import (
    StructureScores,
    corruption_errors,
    summarise,
    worst_case_entry,
)


def test_worst_case_is_at_most_every_attack_image_by_image():
    # (intersection, predicted, true, clDice) per image; IoU = i / (p + t - i).
    per_attack = {
        "fgsm": {"a": (8, 10, 10, 0.9), "b": (5, 10, 10, 0.4), "c": (0, 0, 0, 1.0)},
        "pgd": {"a": (6, 10, 10, 0.95), "b": (5, 10, 10, 0.3), "c": (0, 4, 0, 0.0)},
        "square": {"a": (7, 10, 10, 0.2), "b": (4, 10, 10, 0.5), "c": (0, 0, 0, 1.0)},
    }
    entry = worst_case_entry(per_attack, "cldice")
    iou = {
        m: {i: c[0] / (c[1] + c[2] - c[0]) if c[1] + c[2] else 1.0 for i, c in d.items()}
        for m, d in per_attack.items()
    }
    worst = {i: min(iou[m][i] for m in iou) for i in "abc"}
    assert worst == {"a": 6 / 14, "b": 4 / 16, "c": 0.0}
    assert entry["iou_mean"] == pytest.approx(sum(worst.values()) / 3)
    for m in per_attack:  # image by image, hence in the mean
        assert all(worst[i] <= iou[m][i] for i in "abc")
        assert entry["iou_mean"] <= entry["attack_iou_mean"][m]
    assert entry["worst_counts"] == {"fgsm": 0, "pgd": 2, "square": 1}
    assert entry["worst_share"]["pgd"] == pytest.approx(2 / 3)
    # pooled over each image's worst attack: a from pgd, b from square, c from pgd
    assert entry["iou"] == pytest.approx((6 + 4 + 0) / (14 + 16 + 4))
    assert entry["dice"] == pytest.approx(2 * 10 / (20 + 20 + 4))
    assert entry["cldice_worst_mean"] == pytest.approx((0.2 + 0.3 + 0.0) / 3)
    assert entry["cldice_worst_counts"] == {"fgsm": 0, "pgd": 2, "square": 1}
    # square's pooled IoU 11/29 is above pgd's 11/33: no gradient masking
    assert entry["attack_iou"]["square"] == pytest.approx(11 / 29)
    assert entry["attack_iou"]["pgd"] == pytest.approx(11 / 33)
    assert entry["gradient_masking"] is False
    # square below every gradient attack: suspected; no gradient-free attack: not decided
    masked = dict(per_attack, square={i: (0, 10, 10, 0.0) for i in "abc"})
    assert worst_case_entry(masked)["gradient_masking"] is True
    assert "cldice_worst_mean" not in worst_case_entry(masked)
    only = {m: per_attack[m] for m in ("fgsm", "pgd")}
    assert worst_case_entry(only)["gradient_masking"] is None
    # a tie goes to the first attack in the given order
    tie = {"pgd": {"a": (1, 2, 2, 0.0)}, "fgsm": {"a": (1, 2, 2, 0.0)}}
    assert worst_case_entry(tie)["worst_counts"] == {"pgd": 1, "fgsm": 0}


def test_summarise_gives_each_metric_its_robustness_or_change():
    per_split = {
        "test": {"iou": 0.8, "cldice": 0.5, "hd95": 2.0, "beta0_error": 1.0},
        "snr_1": {"iou": 0.4, "cldice": 0.25, "hd95": 6.0, "beta0_error": 4.0},
        "snr_2": {"iou": 0.6, "cldice": 0.5, "hd95": 3.0, "beta0_error": 1.0},
        "whitebox_worst_8": {"iou": 0.2},
    }
    families = summarise(per_split)
    assert per_split["snr_1"]["metric_robustness"] == {"cldice": 50.0}
    assert per_split["snr_1"]["metric_change"] == {"hd95": 4.0, "beta0_error": 3.0}
    snr = families["snr"]["metrics"]
    assert snr["cldice"] == {"curve": [[1.0, 0.25], [2.0, 0.5]], "mean_robustness": 75.0}
    assert snr["hd95"] == {"curve": [[1.0, 6.0], [2.0, 3.0]], "mean_change": 2.5}
    assert snr["beta0_error"]["mean_change"] == 1.5
    assert families["whitebox_worst"]["mean_robustness"] == 25.0
    assert per_split["whitebox_worst_8"]["level"] == 8.0
    assert "metric_robustness" not in per_split["whitebox_worst_8"]
    # a test score of 0 leaves the ratio undefined, not infinite
    zero = {"test": {"iou": 0.5, "ap": 0.0}, "snr_1": {"iou": 0.5, "ap": 0.1}}
    assert summarise(zero)["snr"]["metrics"]["ap"]["mean_robustness"] is None
    assert zero["snr_1"]["metric_robustness"] == {"ap": None}


def test_corruption_errors_against_the_reference_results():
    model = {
        "test": {"iou": 0.9, "family": "reference"},
        "snr_1": {"iou": 0.4, "cldice": 0.5, "family": "snr"},
        "snr_2": {"iou": 0.8, "cldice": 0.7, "family": "snr"},
        "sib_5": {"iou": 0.5, "cldice": 0.5, "family": "sib"},
        "svb_1": {"iou": 0.9, "family": "svb"},
        "whitebox_pgd_8": {"iou": 0.1, "family": "whitebox_pgd"},
    }
    reference = {
        "splits": {
            "test": {"iou": 0.9},
            "snr_1": {"iou": 0.2, "cldice": 0.5},
            "snr_2": {"iou": 0.6, "cldice": 0.5},
            "sib_5": {"iou": 0.75, "cldice": 1.0},
            "svb_1": {"iou": 1.0},
        }
    }
    out = corruption_errors(model, reference, ("iou", "cldice"))
    # snr: (0.6 + 0.2) / (0.8 + 0.4); sib: 0.5 / 0.25; svb: the reference errs nowhere
    assert out["iou"]["families"] == pytest.approx({"snr": 2 / 3, "sib": 2.0})
    assert out["iou"]["mce"] == pytest.approx((2 / 3 + 2.0) / 2)
    assert out["iou"]["skipped"] == ["svb"]
    assert out["cldice"]["families"] == pytest.approx({"snr": 0.8 / 1.0})
    assert out["cldice"]["skipped"] == ["sib"]
    assert corruption_errors(model, {"splits": {}}, ("iou",)) == {"iou": None}
    same = corruption_errors(model, {"splits": model}, ("iou",))
    assert same["iou"]["mce"] == 1.0 and set(same["iou"]["families"]) == {"snr", "sib", "svb"}


def _bar(cut: bool) -> np.ndarray:
    m = np.zeros((2, 1, 16, 40), bool)
    m[:, 0, 6:10, 2:38] = True
    if cut:
        m[0, 0, :, 19:21] = False
    return m


def test_structure_scores_sum_across_batches_and_states():
    from synthesis.structure_metrics import TopologyScores

    g = torch.from_numpy(_bar(False))
    p = torch.from_numpy(_bar(True))
    whole = StructureScores("topology")
    headline: dict[str, float] = {}
    whole.update(["a", "b"], p, g, None, headline)
    parts = [StructureScores("topology") for _ in range(2)]
    parts[0].update(["a"], p[:1], g[:1])
    parts[1].update(["b"], p[1:], g[1:])
    summed = [a + b for a, b in zip(parts[0].state(), parts[1].state(), strict=True)]
    assert len(summed) == StructureScores.size("topology")
    assert StructureScores.from_state("topology", summed).compute() == whole.compute()
    r = whole.compute()
    assert r["beta0_error"] == 0.5 and r["images"] == 2  # one image cut in two, one intact
    assert headline["b"] == 1.0 and headline["a"] < 1.0
    direct = TopologyScores()
    direct.update(p, g)
    assert {k: r[k] for k in direct.compute()} == direct.compute()
    # objects: the true instances decide; two touching nuclei merged are one miss, one FP
    inst = torch.zeros(1, 1, 8, 8, dtype=torch.int64)
    inst[0, 0, 1:4, 1:4], inst[0, 0, 4:7, 1:4] = 1, 2
    objects = StructureScores("objects")
    objects.update(["n"], inst > 0, inst > 0, inst)
    o = objects.compute()
    assert (o["tp"], o["fp"], o["fn"], o["ap"], o["hd95"], o["nsd"]) == (0, 1, 2, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="kind must be one of"):
        StructureScores("pixels")


# ----------------------------------------------------------------------------- end to end


def test_evaluate_structure_metrics_match_the_library_on_the_predictions(
    small_package: Path, tmp_path: Path
):
    """mito: clDice, Betti errors, HD95 and NSD of the split are those of
    :mod:`synthesis.structure_metrics` on the model's own predictions; the worst case over
    three attacks (one gradient-free) is image by image at most each attack; the reports
    show every metric, one plot each; ``--metrics iou`` leaves them all out."""
    from builder.evaluation.model_loading import load_model_spec, make_preprocess, predict
    from synthesis.structure_metrics import BoundaryScores, TopologyScores

    out = tmp_path / "all"
    argv = ["evaluate", "--data", str(small_package), "--config", "mito", "--device", "cpu"]
    argv += ["--splits", "test", "snr_1", "--batch-size", "2"]
    attacks = ["--attacks", "fgsm:2", "pgd:2", "square:2", "--square-queries", "4"]
    assert main([*argv, *attacks, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["metrics"]["reported"] == ["cldice", "beta0_error", "beta1_error", "hd95", "nsd"]

    import fluorobench_c

    info = load_model_spec(None, str(small_package), "mito", torch.device("cpu"))
    pre = make_preprocess("zscore")
    for split in ("test", "snr_1"):
        topo, bound = TopologyScores(), BoundaryScores()
        for row in fluorobench_c.load(str(small_package), "mito", split):
            image = torch.from_numpy(row["image"].astype(np.float32))[None, None]
            pred = predict(info.model, pre(image)).numpy()
            mask = row["mask"][None] != 0
            topo.update(pred[:, 0], mask)
            bound.update(pred[:, 0], mask)
        r = results["splits"][split]
        want = {**topo.compute(), **bound.compute()}
        for key in ("cldice", "beta0_error", "beta1_error", "images"):
            assert r[key] == want[key], (split, key)
        for key in ("hd95", "nsd"):
            assert r[key] == pytest.approx(want[key], rel=1e-12), (split, key)
        if split != "test":
            assert r["metric_robustness"]["cldice"] == pytest.approx(
                100 * r["cldice"] / results["splits"]["test"]["cldice"]
            )

    # the worst case, from per-image values scored again here, split by split
    per_attack = {}
    for method in ("fgsm", "pgd", "square"):
        per_attack[method] = {}
        scoring.evaluate_split(
            str(small_package),
            "mito",
            "test",
            info.model,
            pre,
            device=torch.device("cpu"),
            batch_size=2,
            attack=(method, 2.0),
            queries=4,
            structure=StructureScores("topology"),
            per_image=per_attack[method],
        )
    worst = results["splits"]["whitebox_worst_2"]
    assert worst == {
        **worst_case_entry(per_attack, "cldice"),
        **{k: worst[k] for k in ("family", "level", "robustness")},
    }
    for method in per_attack:
        single = results["splits"][f"whitebox_{method}_2"]
        assert worst["iou_mean"] <= single["iou_mean"] + 1e-12
        assert worst["iou_mean"] <= worst["attack_iou_mean"][method]
    assert worst["family"] == "whitebox_worst" and worst["worst_of"] == 3

    # the package's reference results: the reference model against itself, CE 1
    assert results["mce"]["reference"]["file"] == "results/mito.json"
    assert results["mce"]["iou"]["mce"] == pytest.approx(1.0, abs=1e-9)

    md = (out / "results.md").read_text()
    assert "| clDice | β0 error | β1 error | HD95 (px) | NSD |" in md
    assert "| `whitebox_worst_2` | 3 |" in md and "mCE" in md
    for metric in results["metrics"]["reported"]:
        assert (out / f"metric-{metric}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from builder.evaluation import write_eval_results

    yaml_path = write_eval_results(tmp_path / "hub", results, "org/bench")
    assert "clDice" in yaml_path.read_text() and "HD95 (px)" in yaml_path.read_text()

    plain = tmp_path / "iou"
    assert (
        main([*argv, "--attacks", "fgsm:2", "pgd:2", "--metrics", "iou", "--out", str(plain)]) == 0
    )
    iou_only = json.loads((plain / "results.json").read_text())
    assert "metrics" not in iou_only and "mce" not in iou_only
    assert (
        "cldice" not in iou_only["splits"]["test"] and "whitebox_worst_2" not in iou_only["splits"]
    )
    for split in ("test", "snr_1", "whitebox_fgsm_2"):
        assert iou_only["splits"][split]["iou"] == results["splits"][split]["iou"]
    assert (
        not list(plain.glob("metric-*.png")) and "clDice" not in (plain / "results.md").read_text()
    )


def test_evaluate_nucleus_matches_objects_to_the_true_instances(small_package: Path):
    """nucleus: AP, F1 and PQ come from the rows' true instance labels (not the mask's
    components), the prediction's objects from its connected components."""
    import fluorobench_c
    from builder.evaluation.model_loading import load_model_spec, make_preprocess, predict
    from synthesis.structure_metrics import ObjectScores

    results = scoring.evaluate(
        str(small_package), "nucleus", splits=["test"], device="cpu", batch_size=2
    )
    assert results["metrics"]["reported"] == ["ap", "ap_50", "f1", "pq", "hd95", "nsd"]
    info = load_model_spec(None, str(small_package), "nucleus", torch.device("cpu"))
    objects = ObjectScores()
    for row in fluorobench_c.load(str(small_package), "nucleus", "test"):
        image = torch.from_numpy(row["image"].astype(np.float32))[None, None]
        pred = predict(info.model, make_preprocess("zscore")(image))[0, 0].numpy()
        instances = row["instances"].astype(np.int64)
        assert instances.max() > 1  # several nuclei per tile
        objects.update(pred[None], instances[None])
    r, want = results["splits"]["test"], objects.compute()
    for key in ("ap", "ap_50", "f1", "pq", "tp", "fp", "fn", "true_objects", "pred_objects"):
        assert r[key] == want[key], key


def test_evaluate_objects_takes_the_users_post_processing(small_package: Path, tmp_path: Path):
    """--objects FILE.py:FUNCTION: the object metrics count the user's instance labels. A
    post-processing that makes the whole prediction one object finds at most one object per
    image; one that returns a bool mask is refused, naming the function and the row."""
    post = tmp_path / "post.py"
    post.write_text(
        "import numpy as np\n"
        "def one_object(pred):\n"
        "    return pred.astype(np.int32)\n"
        "def not_labels(pred):\n"
        "    return pred\n"
    )
    base = ["evaluate", "--data", str(small_package), "--config", "nucleus", "--device", "cpu"]
    base += ["--splits", "test", "--batch-size", "2"]
    assert main([*base, "--out", str(tmp_path / "cc")]) == 0
    assert main([*base, "--out", str(tmp_path / "one"), "--objects", f"{post}:one_object"]) == 0
    cc = json.loads((tmp_path / "cc" / "results.json").read_text())
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    assert one["metrics"]["objects"] == "one_object" and "objects" not in cc["metrics"]
    images = one["splits"]["test"]["images"]
    assert one["splits"]["test"]["pred_objects"] <= images < cc["splits"]["test"]["pred_objects"]
    assert one["splits"]["test"]["iou"] == cc["splits"]["test"]["iou"]  # pixels unchanged
    with pytest.raises(Exception, match="not_labels.*integer instance labels.*row"):
        scoring.evaluate(
            str(small_package),
            "nucleus",
            splits=["test"],
            device="cpu",
            objects=scoring_load(post, "not_labels"),
        )
    assert main([*base, "--out", str(tmp_path / "x"), "--objects", f"{post}:missing"]) != 0
    assert not (tmp_path / "x").exists()


def scoring_load(path: Path, name: str):
    from builder.evaluation.model_loading import load_callable

    return load_callable(f"{path}:{name}", "--objects")[0]

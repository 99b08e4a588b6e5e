"""The per-structure realism report (``benchmarks/realism.py --config mito|er``), end to end on a
tiny case: two 256 x 256 TIFF images of tubes in an images-only folder against two rendered
tiles per renderer; and the pooling of tile reports it rests on."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench(monkeypatch):
    """``benchmarks/realism.py`` and its structure module, imported as the scripts run."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module("realism"), importlib.import_module("_realism_structure")


def _tubes(seed: int) -> np.ndarray:
    """A 256 x 256 uint16 image: a branched network of 3 px tubes on the left half (the
    right half empty), blurred, on a background, with Poisson noise."""
    rs = np.random.default_rng(seed)
    m = np.zeros((256, 256), bool)
    for y in range(20, 240, 30):  # horizontal tubes joined by one vertical: branch points
        m[y : y + 3, 10:120] = True
    m[20:240, 60:63] = True
    for _ in range(6):  # some short fragments
        y, x = rs.integers(10, 230), rs.integers(10, 100)
        m[y : y + 3, x : x + 12] = True
    x = 100.0 + 900.0 * ndimage.gaussian_filter(m.astype(float), 0.8)
    return rs.poisson(x).astype(np.uint16)


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def test_mito_report_end_to_end(bench, tmp_path, capsys):
    import tifffile

    realism, rs = bench
    (tmp_path / "data" / "images").mkdir(parents=True)
    for i in range(2):
        tifffile.imwrite(tmp_path / "data" / "images" / f"cells{i}.tif", _tubes(i))
    fig = tmp_path / "fig.png"
    argv = ["--config", "mito", "--source", str(tmp_path / "data"), "--tiles", "2",
            "--scale", "cells1=1.5", "--sweep", "floor_factor=0.25,0.5", "--grid", str(fig),
            "--json"]  # fmt: skip
    r = realism.main(argv)
    assert json.loads(capsys.readouterr().out)["tables"] == r["tables"]  # --json prints it
    sets = ["real:cells0", "real:cells1", "physics", "naive"]
    assert list(r["tables"]) == sets and r["note"] is None
    assert r["pseudo_mask"]["per_image"]["cells0"]["name"] == "mito-default"
    assert r["pseudo_mask"]["per_image"]["cells1"]["name"] == "mito-default-x1.5"
    assert r["tiles"] == {"real:cells0": 1, "real:cells1": 1, "physics": 2, "naive": 2}
    columns = [k for k, _, _ in rs.COLUMNS]
    for name in sets:
        assert list(r["tables"][name]) == columns
        assert all(_finite(v) for v in r["tables"][name].values()), (name, r["tables"][name])
    # The real network: about 3-4 px wide, branched, the empty right half seen as empty.
    real = r["tables"]["real:cells0"]
    assert 2.5 <= real["width_median"] <= 5.0
    assert real["branch_points_per_100px"] > 0.5 and real["empty_window_share"] >= 0.4
    for name in ("physics", "naive"):
        assert 0.5 < r["iou"][name]["pseudo_vs_true"]["mean"] <= 1
        assert list(r["tables_true_mask"][name]) == columns
    assert r["iou"]["real:cells0"]["tile_vs_field"]["mean"] == 1.0  # the field is the tile
    assert list(r["distances"]) == ["real:cells0", "real:cells1"]
    d = r["distances"]["real:cells0"]
    assert list(d) == ["real:cells1", "physics", "naive"]
    for v in d.values():
        assert list(v) == list(rs.DISTANCES) and all(_finite(x) and x >= 0 for x in v.values())
    assert (
        r["scale"]["rendered_true_width_px"]["median"] > 0 and "implied_um_per_px" not in r["scale"]
    )
    (rows,) = r["sensitivity"].values()
    assert [e["value"] for e in rows] == [0.25, 0.5]
    assert list(rows[0]["sets"]) == ["cells0", "cells1", "physics"]
    assert rows[0]["distances"]["cells0"] == {k: d["physics"][k] for k in rs.DISTANCES}
    assert fig.stat().st_size == r["grid_bytes"] > 0
    # The text report prints every set and the sweep.
    rs.report(r)
    text = capsys.readouterr().out
    assert all(f"| {name} |" in text for name in sets) and "sensitivity to floor_factor" in text


def test_er_without_real_images_runs_on_renders_only(bench, capsys):
    realism, _ = bench
    r = realism.main(["--config", "er", "--tiles", "2", "--no-sweep", "--no-grid"])
    assert "no real er images" in r["note"] and r["source"] is None
    assert list(r["tables"]) == ["physics", "naive"] and r["distances"] == {}
    assert r["pseudo_mask"]["default"]["name"] == "er-default"
    assert all(_finite(v) for v in r["tables"]["physics"].values())
    assert "no distance to real" in capsys.readouterr().out


def test_pooled_reports(bench):
    """Pooling one report gives back its numbers; pooling two tiles sums skeletons and
    averages fractions; tiles of two sizes are refused."""
    from synthesis.structure_realism import compare_reports, structure_report

    _, rs = bench
    rng = np.random.default_rng(0)
    a = np.zeros((128, 128), bool)
    a[30:35, 10:110] = True
    a[10:110, 60:65] = True
    b = np.zeros((128, 128), bool)
    b[90:94, 5:70] = True
    reports = []
    for m in (a, b):
        x = 100 + 400 * ndimage.gaussian_filter(m.astype(float), 0.8) + rng.normal(0, 5, m.shape)
        reports.append(structure_report(x, m))
    one = rs.pool_reports(reports[:1])
    assert rs.row(one) == {**rs.row(reports[0]), "width_iqr_in_tile": reports[0]["width"]["iqr"]}
    assert all(v == 0 for v in compare_reports(one, reports[0]).values() if v is not None)
    both = rs.pool_reports(reports)
    ta, tb = reports[0]["topology"], reports[1]["topology"]
    assert both["topology"]["skeleton_px"] == ta["skeleton_px"] + tb["skeleton_px"]
    assert both["topology"]["branch_points_per_100px"] == pytest.approx(
        100 * (ta["branch_points"] + tb["branch_points"]) / both["topology"]["skeleton_px"]
    )
    assert both["foreground_fraction"] == pytest.approx((a.mean() + b.mean()) / 2)
    assert both["width"]["n"] == reports[0]["width"]["n"] + reports[1]["width"]["n"]
    assert sum(both["intensity"]["fg_hist"]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one size"):
        rs.pool_reports(
            [reports[0], structure_report(np.arange(64.0 * 64).reshape(64, 64), a[:64, :64])]
        )

"""The per-structure realism report (``benchmarks/realism.py --config mito|er``), end to end on a
tiny case: two 256 x 256 TIFF images of tubes in an images-only folder (one resampled to
Mito-C's pixel size, one of unknown pixel size) against two rendered tiles per set (mito:
physics and naive, each with the worms and the cells generator), the verdicts new against
old and naive; and the pooling of tile reports it rests on."""

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
            "--source-pixel-size", "cells0=0.136", "--sweep", "floor_factor=0.25,0.5",
            "--grid", str(fig), "--json"]  # fmt: skip
    r = realism.main(argv)
    assert json.loads(capsys.readouterr().out)["tables"] == r["tables"]  # --json prints it
    rendered = ["physics:worms", "physics:cells", "naive:worms", "naive:cells"]
    sets = ["real:cells0", "real:cells1", *rendered]
    assert list(r["tables"]) == sets and r["note"] is None
    assert r["rendered_sets"]["physics:cells"] == {"renderer": "physics", "mito_masks": "cells"}
    # cells0 (0.136 um/px given) is resampled x1.6 to Mito-C's 0.085 um/px and pseudo-masked
    # by the default method scaled x1.6, as the renders are; cells1 (no pixel size in the
    # TIFF, none given) is used as it is, with the default method.
    px = r["pixel_size"]
    assert px["target_um"] == 0.085 and px["given"] == {"cells0": 0.136}
    assert px["images"]["cells0"] == {"native_um": 0.136, "from": "given", "scale": 1.6,
                                      "pixel_size_um": 0.085,
                                      "pseudo_mask": "mito-default-x1.6"}  # fmt: skip
    assert px["images"]["cells1"]["scale"] == 1.0 and px["images"]["cells1"]["native_um"] is None
    assert r["pseudo_mask"]["per_image"] == {"cells0": "mito-default-x1.6",
                                             "cells1": "mito-default"}  # fmt: skip
    assert r["pseudo_mask"]["method"]["name"] == "mito-default-x1.6"
    assert r["pseudo_mask"]["method"]["block_size"] == 17
    assert r["tiles"] == {"real:cells0": 1, "real:cells1": 1, **dict.fromkeys(rendered, 2)}
    columns = [k for k, _, _ in rs.COLUMNS]
    for name in sets:
        t = r["tables"][name]
        assert list(t) == columns
        unknown = ["width_median_um"] if name == "real:cells1" else []
        assert all(_finite(v) for k, v in t.items() if k not in unknown), (name, t)
        if name == "real:cells1":
            assert t["width_median_um"] is None
        else:
            assert t["width_median_um"] == pytest.approx(0.085 * t["width_median"])
    # The real network: 3 px tubes, about 3-4 px wide as they are and x1.6 resampled;
    # branched, the empty right half seen as empty.
    assert 2.5 <= r["tables"]["real:cells1"]["width_median"] <= 5.0
    assert 4.0 <= r["tables"]["real:cells0"]["width_median"] <= 8.0
    for name in ("real:cells0", "real:cells1"):
        real = r["tables"][name]
        assert real["branch_points_per_100px"] > 0.5 and real["empty_window_share"] >= 0.3
    for name in rendered:
        assert 0.5 < r["iou"][name]["pseudo_vs_true"]["mean"] <= 1
        assert list(r["tables_true_mask"][name]) == columns
        w = r["pixel_size"]["rendered_true_width"][name]
        assert w["px"] > 0 and w["um"] == pytest.approx(0.085 * w["px"])
    assert r["iou"]["real:cells1"]["tile_vs_field"]["mean"] == 1.0  # the field is the tile
    assert list(r["distances"]) == ["real:cells0", "real:cells1"]
    d = r["distances"]["real:cells0"]
    assert list(d) == ["real:cells1", *rendered]
    for v in d.values():
        assert list(v) == list(rs.DISTANCES) and all(_finite(x) and x >= 0 for x in v.values())
    # Verdicts: new (physics:cells) against old and the two naive sets, read off the distances.
    assert r["roles"] == {"new": "physics:cells", "old": "physics:worms",
                          "naive": "naive:worms", "naive (cells)": "naive:cells"}  # fmt: skip
    assert list(r["verdicts"]) == list(rs.DISTANCES)
    for key, per_role in r["verdicts"].items():
        assert list(per_role) == ["old", "naive", "naive (cells)"]
        for role, per in per_role.items():
            for real_name in ("real:cells0", "real:cells1"):
                a = r["distances"][real_name]["physics:cells"][key]
                b = r["distances"][real_name][r["roles"][role]][key]
                want = "closer" if a < b else "tie" if a == b else "farther"
                assert per[real_name] == want, (key, role, real_name)
            words = {per["real:cells0"], per["real:cells1"]}
            assert per["all"] == (words.pop() if len(words) == 1 else "mixed")
    for c in r["verdict_counts"].values():
        assert sum(c.values()) == len(rs.DISTANCES)
    # The sweep sets the parameter of the method at 0.085 um/px for every image: at the
    # default floor_factor (0.25) cells0's numbers are the main run's.
    (rows,) = r["sensitivity"].values()
    assert [e["value"] for e in rows] == [0.25, 0.5]
    assert list(rows[0]["sets"]) == ["cells0", "cells1", "physics:worms", "physics:cells"]
    assert rows[0]["distances"]["cells0"]["physics:cells"] == {
        k: d["physics:cells"][k] for k in rs.DISTANCES
    }
    assert rows[0]["sets"]["cells1"]["method"] == "mito-default-x1.6-floor_factor=0.25"
    assert fig.stat().st_size == r["grid_bytes"] > 0
    # The text report prints every set, the verdicts and the sweep.
    rs.report(r)
    text = capsys.readouterr().out
    assert all(f"| {name} |" in text for name in sets) and "sensitivity to floor_factor" in text
    assert "verdicts: is new (physics:cells) closer" in text and "| width_w1 |" in text


def test_pixel_size_of_a_missing_image_is_refused(bench, tmp_path):
    import tifffile

    from synthesis.groundtruth.sources.base import SourceError

    realism, _ = bench
    (tmp_path / "images").mkdir()
    tifffile.imwrite(tmp_path / "images" / "cells0.tif", _tubes(0))
    argv = ["--config", "mito", "--source", str(tmp_path), "--source-pixel-size",
            "nosuch=0.1", "--no-sweep", "--no-grid"]  # fmt: skip
    with pytest.raises(SourceError, match="'nosuch'"):
        realism.main(argv)
    with pytest.raises(SystemExit, match="expected STEM=UM"):
        realism.main([*argv[:4], "--source-pixel-size", "=0.1"])


def test_er_without_real_images_runs_on_renders_only(bench, capsys):
    realism, _ = bench
    r = realism.main(["--config", "er", "--tiles", "2", "--no-sweep", "--no-grid"])
    assert "no real er images" in r["note"] and r["source"] is None
    assert list(r["tables"]) == ["physics", "naive"] and r["distances"] == {}
    assert r["pseudo_mask"]["method"]["name"] == "er-default"  # ER states no pixel size
    assert r["pixel_size"]["target_um"] is None and r["pixel_size"]["images"] == {}
    assert "verdicts" not in r
    for name in ("physics", "naive"):
        t = r["tables"][name]
        assert t["width_median_um"] is None
        assert all(_finite(v) for k, v in t.items() if k != "width_median_um")
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

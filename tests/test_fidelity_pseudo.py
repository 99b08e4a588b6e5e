"""Real images without masks at a known physical scale, and fidelity on them: pixel sizes read
from TIFF metadata or given, images resampled to the config's stated pixel size before
pseudo-masking (rows record it), and a tiny mito fidelity run on pseudo-masks with
label-based and consistency-based gaps (synthesis.groundtruth.sources.pixel_size,
builder.experiments.fidelity)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from builder.cli import main
from builder.experiments.fidelity import FAMILIES, consistency_reference, curves
from synthesis.groundtruth.pseudo_masks import DEFAULT_MITO
from synthesis.groundtruth.sources import SourceError, open_source
from synthesis.groundtruth.sources.base import _all_items
from synthesis.groundtruth.sources.pixel_size import parse_pixel_sizes, tiff_pixel_size_um
from synthesis.levels import PIXEL_SIZE_UM

REAL = Path(__file__).resolve().parents[1].parent / "shared/data/mito-fluorescence"


def _tubes(seed: int, n: int, width: float) -> np.ndarray:
    """A 16-bit field of straight bright tubes ``width`` px wide on a noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n].astype(float)
    signal = np.zeros((n, n))
    for _ in range(max(6, n // 40)):
        (y0, x0), (y1, x1) = rng.uniform(0.05 * n, 0.95 * n, (2, 2))
        d = np.array([y1 - y0, x1 - x0])
        length = max(float(np.hypot(*d)), 1.0)
        d /= length
        t = np.clip((yy - y0) * d[0] + (xx - x0) * d[1], 0, length)
        dist = np.hypot(yy - (y0 + t * d[0]), xx - (x0 + t * d[1]))
        signal = np.maximum(signal, rng.uniform(0.6, 1.0) * (dist <= width / 2))
    image = 200 + 800 * ndi.gaussian_filter(signal, 0.25 * width) + rng.normal(0, 8, (n, n))
    return np.clip(np.round(image), 0, 65535).astype(np.uint16)


def _write(root: Path, images: dict[str, np.ndarray], um: float | None = None) -> Path:
    """``root/images/<stem>.tif``; with ``um``, ImageJ metadata stating that pixel size."""
    import tifffile

    (root / "images").mkdir(parents=True)
    for stem, image in images.items():
        kw = {}
        if um is not None:
            kw = {"imagej": True, "resolution": (1 / um, 1 / um), "metadata": {"unit": "um"}}
        tifffile.imwrite(root / "images" / f"{stem}.tif", image, **kw)
    return root


def _width(mask: np.ndarray) -> float:
    """Mean width of the structures in a mask: area / skeleton length."""
    from skimage.morphology import skeletonize

    return float(mask.sum() / max(skeletonize(mask > 0).sum(), 1))


def test_pixel_size_from_tiff_metadata_or_none(tmp_path: Path):
    import tifffile

    img = np.zeros((8, 8), np.uint16)
    tifffile.imwrite(tmp_path / "ij.tif", img, imagej=True, resolution=(23.5, 23.5),
                     metadata={"unit": "micron"})  # fmt: skip
    tifffile.imwrite(tmp_path / "cm.tif", img, resolution=(1e4 / 0.2, 1e4 / 0.2),
                     resolutionunit="CENTIMETER")  # fmt: skip
    tifffile.imwrite(tmp_path / "dpi.tif", img, resolution=(72, 72), resolutionunit="INCH")
    tifffile.imwrite(tmp_path / "none.tif", img)
    tifffile.imwrite(tmp_path / "bad.tif", img, imagej=True, resolution=(1e-6, 1e-6),
                     metadata={"unit": "um"})  # fmt: skip
    um, where = tiff_pixel_size_um(tmp_path / "ij.tif")
    assert um == pytest.approx(1 / 23.5, rel=1e-6) and where == "tiff:imagej"
    assert tiff_pixel_size_um(tmp_path / "cm.tif")[0] == pytest.approx(0.2, rel=1e-6)
    assert tiff_pixel_size_um(tmp_path / "dpi.tif") == (None, None)  # 72 dpi says nothing
    assert tiff_pixel_size_um(tmp_path / "none.tif") == (None, None)
    with pytest.raises(SourceError, match=r"bad\.tif.*--source-pixel-size bad=UM"):
        tiff_pixel_size_um(tmp_path / "bad.tif")
    if (REAL / "images/nao_mito.tif").is_file():  # 23.5 px per micron, stated
        um, _ = tiff_pixel_size_um(REAL / "images/nao_mito.tif")
        assert um == pytest.approx(0.04254, abs=1e-4)
        assert tiff_pixel_size_um(REAL / "images/hcs_wt_mito.tif") == (None, None)


def test_given_pixel_sizes_are_parsed_and_bad_ones_refused(tmp_path: Path):
    assert parse_pixel_sizes(["a=0.1", "b=2e-2"]) == {"a": 0.1, "b": 0.02}
    assert parse_pixel_sizes(["0.085"]) == {"*": 0.085}
    for bad, named in (("a=zero", "'a'"), ("a=0", "'a'"), ("b=1e9", "'b'"), ("=1", "=1")):
        with pytest.raises(SourceError, match=named):
            parse_pixel_sizes([bad])
    with pytest.raises(SourceError, match="twice"):
        parse_pixel_sizes(["a=0.1", "a=0.2"])
    root = _write(tmp_path / "src", {"tubes": _tubes(0, 300, 3)})
    with pytest.raises(SourceError, match="'nope'.*stems: tubes"):
        open_source(root, "mito", seed=0, pixel_sizes={"nope": 0.1})
    with pytest.raises(SourceError, match="resampling by"):  # 100 um / 0.085 um: x1176
        open_source(root, "mito", seed=0, pixel_sizes={"tubes": 100.0})
    assert main(["build", str(tmp_path / "o"), "--config", "mito", "--source", str(root),
                 "--source-pixel-size", "tubes=-1"]) == 2  # fmt: skip


def test_resampling_to_the_config_pixel_size_halves_a_twice_finer_image(tmp_path: Path):
    target = PIXEL_SIZE_UM["mito"]
    fine = _tubes(1, 1024, 6.0)  # tubes 6 px wide at target / 2
    root = _write(tmp_path / "fine", {"fine": fine}, um=target / 2)  # stated in the TIFF
    src = open_source(root, "mito", seed=0)
    items = list(_all_items(src))
    assert items
    meta = items[0].meta
    assert meta["pixel_size_um"] == pytest.approx(target)
    assert meta["resampled_from_um"] == pytest.approx(target / 2, rel=1e-5)
    assert meta["scale"] == pytest.approx(0.5, rel=1e-5)
    assert meta["pixel_size_from"] == "tiff:imagej"
    assert meta["image_shape"] == [512, 512]  # resampled before tiling
    assert meta["pseudo_mask"] == DEFAULT_MITO.scaled(1.6).to_dict()
    described = src.describe()["pixel_size"]
    assert described["target_um"] == target
    assert described["images"]["fine"]["scale"] == pytest.approx(0.5, rel=1e-5)
    # Unknown pixel size: used as it is (4 tiles of 256 from 1024), recorded as null.
    import tifffile

    (tmp_path / "asis" / "images").mkdir(parents=True)
    tifffile.imwrite(tmp_path / "asis" / "images" / "fine.tif", fine)
    asis = list(_all_items(open_source(tmp_path / "asis", "mito", seed=0)))
    assert asis[0].meta["pixel_size_um"] is None and asis[0].meta["scale"] == 1.0
    assert asis[0].meta["resampled_from_um"] is None
    assert asis[0].meta["image_shape"] == [1024, 1024]
    assert asis[0].meta["pseudo_mask"] == DEFAULT_MITO.to_dict()
    # Given beats stated: at the target already, not resampled (16 tiles of the 1024 field).
    again = list(_all_items(open_source(root, "mito", seed=0, pixel_sizes={"fine": target})))
    assert again[0].meta["scale"] == 1.0 and again[0].meta["pixel_size_from"] == "given"
    assert again[0].meta["image_shape"] == [1024, 1024] and len(again) > len(items)
    # The same field resampled x0.5: its tubes (the image above half height) are half as
    # wide in pixels; their pseudo-masks (the same method on both, tuned for the narrower
    # tubes) narrower too, less exactly (a pseudo-mask's width is not scale-free).
    w_resampled = np.mean([_width(it.image > 600) for it in items])
    w_native = np.mean([_width(it.image > 600) for it in again])
    assert w_resampled / w_native == pytest.approx(0.5, abs=0.08)
    m_resampled = np.mean([_width(it.mask) for it in items])
    m_native = np.mean([_width(it.mask) for it in again])
    assert 0.4 < m_resampled / m_native < 0.8
    twice = list(_all_items(open_source(root, "mito", seed=0)))
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(items, twice, strict=True))
    # Nuclei have no stated pixel size: nothing is resampled, the size is recorded.
    nuc = list(_all_items(open_source(root, "nucleus", seed=0)))
    assert nuc[0].meta["scale"] == 1.0 and nuc[0].meta["image_shape"] == [1024, 1024]
    assert nuc[0].meta["pixel_size_um"] == pytest.approx(target / 2, rel=1e-5)


def test_consistency_curves_use_the_reference_conditions():
    assert [consistency_reference(s) for s in ("test", "snr_1", "sib_5", "real", "real_snr_8",
            "real_snr_2", "real_svb_1", "train", "clean")] == [  # fmt: skip
        "test", "test", "test", "real", "real_snr_8", "real_snr_8", "real", None, None,
    ]  # fmt: skip
    # Consistency counts (|D&C|, |D|C|, |D|, |C|) go through the same curves as IoU counts.
    agree = {"test": {"a": (10, 10, 10, 10)}, "snr_1": {"a": (5, 10, 5, 10)}}
    agree |= {"real_snr_8": {"a": (8, 8, 8, 8)}, "real_snr_1": {"a": (2, 8, 2, 8)}}
    out = curves(agree)
    assert out["snr"]["synthetic"] == {1: pytest.approx(50.0)}
    assert out["snr"]["real"] == {1: pytest.approx(25.0)}
    assert out["snr"]["gap"] == pytest.approx(25.0)


@pytest.fixture(scope="module")
def pseudo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny mito fidelity run on an images-only source (pseudo-masks), one seed, one epoch.
    Stems chosen so the tile-hash splits hold train, validation and test tiles."""
    root = tmp_path_factory.mktemp("pseudo")
    src = _write(root / "src", {s: _tubes(i, 512, 3.0) for i, s in enumerate(("a", "d", "tubes0"))})
    out = root / "fid"
    args = ["fidelity", "--config", "mito", "--source", str(src), "--out", str(out),
            "--source-pixel-size", "0.085", "--renderers", "physics", "naive",
            "--train", "4", "--validation", "2", "--test", "3", "--epochs", "1",
            "--seeds", "1", "--device", "cpu", "--no-real-model"]  # fmt: skip
    assert main(args) == 0
    return out


def test_mito_fidelity_on_pseudo_masks_reports_both_gaps(pseudo_run: Path):
    results = json.loads((pseudo_run / "fidelity.json").read_text())
    assert results["config"] == "mito"
    assert results["masks"]["kind"] == "pseudo"
    assert results["masks"]["pseudo_mask"]["name"] == "mito-default-x1.6"
    assert results["recipe"]["source_pixel_size"] == {"*": 0.085}
    assert results["pixel_size"]["images"]["a"]["from"] == "given"
    manifest = json.loads((pseudo_run / "packages/physics/manifest.json").read_text())
    splits = manifest["configs"]["mito"]["splits"]
    assert {"real", "real_snr_8", "real_sib_1", "real_svb_5"} <= set(splits)
    assert splits["test"]["num_rows"] == 3  # the held-out tiles
    for name in ("physics", "naive"):
        entry = results["renderers"][name]
        res = entry["seeds"]["0"]
        gaps = []
        for family in FAMILIES:
            assert family in res["families"] and family in res["consistency"]["families"]
            fam = res["consistency"]["families"][family]
            if fam["gap"] is not None:  # the mean |synthetic - real| of its own curves
                shared = [k for k in fam["real"] if fam["synthetic"].get(k) is not None]
                diffs = [abs(fam["synthetic"][k] - fam["real"][k]) for k in shared]
                assert fam["gap"] == pytest.approx(sum(diffs) / len(diffs))
                gaps.append(family)
        assert gaps, "no family has a consistency-based gap"
        assert res["consistency"]["splits"]["test"] == 1.0
        agg = entry["aggregate"]
        assert set(agg["consistency"]["families"]) == set(FAMILIES)
        assert agg["consistency"]["families"][gaps[0]]["gap"]["n"] == 1
    md = (pseudo_run / "fidelity.md").read_text()
    assert "pseudo-masks" in md and "Consistency-based gaps" in md
    row = json.loads((pseudo_run / "packages/naive/manifest.json").read_text())
    assert row["configs"]["mito"]["source"]["mask"] == "pseudo"

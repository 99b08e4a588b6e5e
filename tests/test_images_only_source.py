"""The images-only source: real images without masks, whose masks are pseudo-masks
(synthesis.groundtruth.sources.images_only), from detection to a verified package."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from builder.cli import main
from synthesis.groundtruth.pseudo_masks import DEFAULT_MITO, DEFAULT_NUCLEUS
from synthesis.groundtruth.sources import ImagesOnlySource, SourceError, open_source

REAL = Path(__file__).resolve().parents[1].parent / "shared/data/mito-fluorescence"
#: field00 and field03 are test tiles, field01 and field02 train (a sha256 of the tile id).
STEMS = ("field00", "field01", "field02", "field03")


def _field(seed: int, n: int = 300) -> np.ndarray:
    """A 16-bit field of bright tubes (3 px wide) and blobs on a noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n].astype(float)
    signal = np.zeros((n, n))
    for _ in range(12):
        (y0, x0), (y1, x1) = rng.uniform(20, n - 20, (2, 2))
        d = np.array([y1 - y0, x1 - x0])
        length = max(float(np.hypot(*d)), 1.0)
        d /= length
        t = np.clip((yy - y0) * d[0] + (xx - x0) * d[1], 0, length)
        dist = np.hypot(yy - (y0 + t * d[0]), xx - (x0 + t * d[1]))
        signal = np.maximum(signal, rng.uniform(0.5, 1.0) * (dist <= 1.5))
    for cy, cx in rng.uniform(20, n - 20, (6, 2)):
        signal = np.maximum(signal, 0.8 * (np.hypot(yy - cy, xx - cx) <= 4))
    image = 200 + 800 * ndi.gaussian_filter(signal, 0.7) + rng.normal(0, 10, (n, n))
    return np.clip(np.round(image), 0, 65535).astype(np.uint16)


def _folder(root: Path, images: dict[str, np.ndarray] | None = None) -> Path:
    import tifffile

    (root / "images").mkdir(parents=True)
    if images is None:
        images = {stem: _field(i) for i, stem in enumerate(STEMS)}
    for stem, image in images.items():
        tifffile.imwrite(root / "images" / f"{stem}.tif", image)
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _folder(tmp_path_factory.mktemp("src") / "fields")


def test_detected_deterministic_and_items_carry_the_method(folder: Path):
    src = open_source(folder, "mito", seed=0)
    assert isinstance(src, ImagesOnlySource)
    d = src.describe()
    assert d["kind"] == "images" and d["mask"] == "pseudo" and d["split_rule"] == "tile-hash"
    assert d["pseudo_mask"] == DEFAULT_MITO.to_dict()
    assert {s: len(src.ids(s)) for s in ("train", "validation", "test")} == {
        "train": 2,
        "validation": 0,
        "test": 2,
    }
    items = src.load(src.ids("test"))
    again = open_source(folder, "mito", seed=1).load(src.ids("test"))  # a fresh source
    for a, b in zip(items, again, strict=True):
        assert a.mask.tobytes() == b.mask.tobytes() and a.image.tobytes() == b.image.tobytes()
        assert a.mask.dtype == np.uint8 and 0.01 < a.mask.mean() < 0.5
        assert a.instances is None  # mito: as the folder source
        assert a.meta["mask"] == "pseudo" and a.meta["pseudo_mask"]["name"] == "mito-default"
        assert a.source.startswith("images:") and a.split == "test"
    nuclei = open_source(folder, "nucleus", seed=0)
    item = nuclei.load(nuclei.ids("test")[:1])[0]
    assert item.meta["pseudo_mask"] == DEFAULT_NUCLEUS.to_dict()
    assert item.instances is not None and item.instances.max() >= 1


def test_build_loads_verifies_and_records_the_pseudo_mask(folder: Path, tmp_path: Path):
    import datasets

    out = tmp_path / "pkg"
    # real: the real test tiles and their pseudo-masks; test: rendered from the pseudo-masks.
    args = ["build", str(out), "--config", "mito", "--source", str(folder)]
    args += ["--splits", "real", "test", "--train", "2", "--validation", "1", "--test", "2"]
    assert main([*args, "--train-epochs", "1", "--device", "cpu"]) == 0
    cache = str(tmp_path / "cache")
    for split in ("real", "test"):
        ds = datasets.load_dataset(str(out), "mito", split=split, cache_dir=cache)
        assert sorted(ds["id"]) == ["field00_y22x22", "field03_y22x22"]
        for row in ds:
            meta = json.loads(row["params"]["mask_params"])
            assert meta["mask"] == "pseudo" and meta["pseudo_mask"] == DEFAULT_MITO.to_dict()
            assert row["source"].startswith("images:field0")
    assert main(["verify", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["configs"]["mito"]["source"]["pseudo_mask"]["name"] == "mito-default"
    card = (out / "README.md").read_text()
    assert "### Pseudo-masks" in card and "`mito-default`" in card
    assert "not accuracy against ground truth" in card


@pytest.mark.parametrize(
    ("image", "problem"),
    [
        (np.full((300, 300), 500, np.uint16), "constant"),
        (
            np.random.default_rng(0).normal(500, 20, (300, 300)).round().astype(np.uint16),
            "nothing to segment",
        ),
    ],
    ids=["constant", "noise"],
)
def test_an_image_with_nothing_to_segment_is_named(tmp_path: Path, capsys, image, problem):
    src = _folder(tmp_path / "bad", {"field00": _field(0), "empty": image})
    with pytest.raises(SourceError, match=problem) as err:
        open_source(src, "mito", seed=0)
    assert "empty.tif" in str(err.value)
    out = tmp_path / "pkg"
    args = ["build", str(out), "--config", "mito", "--source", str(src), "--splits", "real"]
    assert main([*args, "--device", "cpu"]) == 2
    assert "empty.tif" in capsys.readouterr().err
    assert not out.exists()  # nothing left behind


def test_the_shared_mitochondria_open_with_two_splits_or_more():
    if not (REAL / "images").is_dir():
        pytest.skip(f"real mitochondria images absent ({REAL})")
    src = open_source(REAL, "mito", seed=0)
    assert isinstance(src, ImagesOnlySource)
    splits = [s for s in ("train", "validation", "test") if src.ids(s)]
    assert len(splits) >= 2, src.describe()
    item = src.load(src.ids(splits[-1])[:1])[0]
    assert item.meta["pseudo_mask"]["name"] == "mito-default"

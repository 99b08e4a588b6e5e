"""Source adapters on tiny fixtures made here, on bad input, and on the shared BBBC038 data."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from synthesis.groundtruth.sources import (
    MIN_FOREGROUND_FRACTION,
    SPLIT_FRACTIONS,
    SPLITS,
    TILE,
    Item,
    SourceError,
    assign_split,
    open_source,
    tile_origins,
)

ALL = {"train": 0, "validation": 0, "test": 0}


# ----------------------------------------------------------------------------- fixtures


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _tif(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, arr)
    return path


def _blobs(h: int = TILE, w: int = TILE, seed: int = 0) -> np.ndarray:
    """A 0/1 mask with a few discs (5-15 % foreground)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    m = np.zeros((h, w), np.uint8)
    for _ in range(max(3, h * w // 12000)):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(8, 16)
        m[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
    return m


def _image(mask: np.ndarray, bits: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hi = 3000 if bits == 16 else 200
    img = 100 + mask.astype(np.int64) * hi + rng.integers(0, 20, mask.shape)
    return img.astype(np.uint16 if bits == 16 else np.uint8)


def _folder(root: Path, stems: list[str], shape: tuple[int, int] = (TILE, TILE)) -> Path:
    """images/ + masks/: even stems 16-bit TIFF with 0/1 TIFF masks, odd 8-bit PNG, 0/255."""
    for k, stem in enumerate(stems):
        m = _blobs(*shape, seed=k)
        if k % 2 == 0:
            _tif(root / "images" / f"{stem}.tif", _image(m, 16, k))
            _tif(root / "masks" / f"{stem}.tif", m)
        else:
            _png(root / "images" / f"{stem}.png", _image(m, 8, k))
            _png(root / "masks" / f"{stem}.png", m * 255)
    return root


def _bbbc038(root: Path, n: int = 3, *, colour: bool = True, brightfield: bool = True) -> Path:
    """stage1_train layout: <id>/images/<id>.png (RGBA, R == G == B), <id>/masks/<k>.png."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:TILE, :TILE]
    for i in range(n + colour + brightfield):
        iid = f"{i:02d}abc{i}"
        discs = []
        for k in range(4 + i):
            cy, cx = 40 + 50 * (k % 4), 40 + 50 * (k // 4)
            d = ((yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(10, 20) ** 2).astype(np.uint8)
            discs.append(d)
            _png(root / iid / "masks" / f"m{k:03d}.png", d * 255)
        sem = np.clip(sum(discs), 0, 1)
        grey = (10 + sem * 150).astype(np.uint8)
        if brightfield and i == n + colour:
            grey = (230 - sem * 150).astype(np.uint8)  # dark nuclei on a bright field
        rgba = np.stack([grey, grey, grey, np.full_like(grey, 255)], -1)
        if colour and i == n:
            rgba[..., 1] = grey // 2  # H&E-like colour image
        _png(root / iid / "images" / f"{iid}.png", rgba)
    return root


def _items(src, splits=SPLITS) -> list[Item]:
    return [it for s in splits for it in src.load(src.ids(s))]


# ----------------------------------------------------------------------------- rules


def test_tile_origins_are_a_centred_grid():
    assert tile_origins(256, 256) == [(0, 0)]
    assert tile_origins(255, 1000) == []
    assert tile_origins(600, 300) == [(44, 22), (300, 22)]
    for y, x in tile_origins(1040, 1388):
        assert 0 <= y and y + TILE <= 1040 and 0 <= x and x + TILE <= 1388


def test_split_assignment_fractions_and_stability():
    keys = [f"img_{i:05d}" for i in range(3000)]
    splits = [assign_split(k) for k in keys]
    assert splits == [assign_split(k) for k in keys]
    for split, frac in SPLIT_FRACTIONS.items():
        share = splits.count(split) / len(keys)
        sd = (frac * (1 - frac) / len(keys)) ** 0.5
        assert abs(share - frac) < 4 * sd, (split, share)


# ----------------------------------------------------------------------------- procedural


def test_procedural_source(tmp_path):
    src = open_source("procedural", "nucleus", seed=3, counts={"train": 3, "test": 2})
    assert src.has_real_images is False and src.skipped == {}
    assert src.ids("train") == ["nucleus-train-00000", "nucleus-train-00001", "nucleus-train-00002"]
    assert src.ids("validation") == []
    items = src.load(src.ids("test") + ["nucleus-train-00001"])
    assert [it.split for it in items] == ["test", "test", "train"]
    for it in items:
        assert it.mask.shape == (TILE, TILE) and it.mask.dtype == np.uint8
        assert set(np.unique(it.mask)) == {0, 1}
        assert it.instances.dtype == np.uint16 and np.array_equal(it.instances > 0, it.mask == 1)
        assert it.image is None and it.source == "procedural:nucleus"
        assert isinstance(it.meta["mask_seed"], int)
        json.dumps(it.meta)
    again = open_source("procedural", "nucleus", seed=3, counts={"test": 2}).load(
        ["nucleus-test-00001"]
    )
    assert np.array_equal(again[0].mask, items[1].mask)
    other = open_source("procedural", "nucleus", seed=4, counts={"test": 2}).load(
        ["nucleus-test-00001"]
    )
    assert not np.array_equal(other[0].mask, items[1].mask)
    assert json.loads(json.dumps(src.describe()))["kind"] == "procedural"
    with pytest.raises(SourceError, match="not an id of procedural:nucleus"):
        src.load(["mito-train-00000"])


# ----------------------------------------------------------------------------- folder


def test_folder_source_reads_8_and_16_bit_png_and_tiff(tmp_path):
    root = _folder(tmp_path / "data", ["a", "b", "c", "d"])
    src = open_source(root, "mito", seed=0, counts=ALL)
    assert src.has_real_images and src.describe()["kind"] == "folder"
    items = _items(src)
    assert sorted(it.id for it in items) == ["a", "b", "c", "d"]
    for k, it in enumerate(sorted(items, key=lambda it: it.id)):
        assert it.split == assign_split(it.id)
        assert it.image.dtype == np.uint16 and it.image.shape == (TILE, TILE)
        assert np.array_equal(it.mask, _blobs(seed=k))
        # 8-bit sources keep their values (no rescaling); 16-bit ones too.
        assert np.array_equal(it.image, _image(_blobs(seed=k), 16 if k % 2 == 0 else 8, k))
        assert it.meta["bit_depth"] == (16 if k % 2 == 0 else 8)
        assert it.source == f"folder:{it.id}#tile=0,0"
        json.dumps(it.meta)
    assert not Path(items[0].meta["image_file"]).is_absolute()


def test_tiles_cut_image_and_mask_at_the_same_place(tmp_path):
    h, w = 600, 300
    yy, xx = np.mgrid[:h, :w]
    image = ((yy * 101 + xx * 7) % 60000).astype(np.uint16)  # position-coded pixels
    mask = (((yy // 23) + (xx // 17)) % 2).astype(np.uint8)
    _tif(tmp_path / "d" / "images" / "big.tif", image)
    _tif(tmp_path / "d" / "masks" / "big.tif", mask)
    src = open_source(tmp_path / "d", "er", seed=0, counts=ALL)
    items = _items(src)
    assert sorted(it.id for it in items) == ["big_y300x22", "big_y44x22"]
    for it in items:
        y, x = it.meta["tile_yx"]
        assert np.array_equal(it.image, image[y : y + TILE, x : x + TILE])
        assert np.array_equal(it.mask, mask[y : y + TILE, x : x + TILE])
        assert it.source == f"folder:big#tile={y},{x}"
        assert {it.split} == {assign_split("big")}  # all tiles of an image share its split


def test_tiles_without_foreground_or_background_are_skipped_and_counted(tmp_path):
    m = np.zeros((3 * TILE, TILE), np.uint8)
    m[:TILE] = _blobs(seed=1)  # tile 0: some foreground
    m[2 * TILE :] = 1  # tile 2: no background; tile 1: nothing
    m[TILE + 5, 5] = 1  # one pixel: below the minimum
    _tif(tmp_path / "d" / "images" / "x.tif", _image(m))
    _tif(tmp_path / "d" / "masks" / "x.tif", m)
    _tif(tmp_path / "d" / "images" / "small.tif", _image(_blobs(100, 100)))
    _tif(tmp_path / "d" / "masks" / "small.tif", _blobs(100, 100))
    src = open_source(tmp_path / "d", "er", seed=0, counts=ALL)
    assert [it.id for it in _items(src)] == ["x_y0x0"]
    assert src.skipped == {
        "tile_foreground_below_min": 1,
        "tile_background_below_min": 1,
        "smaller_than_tile": 1,
    }
    assert src.describe()["skipped"] == src.skipped
    assert src.describe()["min_foreground_fraction"] == MIN_FOREGROUND_FRACTION


def test_counts_cap_tiles_per_split_and_adding_images_moves_nothing(tmp_path):
    stems = [f"s{i:02d}" for i in range(12)]
    _folder(tmp_path / "d", stems)
    full = open_source(tmp_path / "d", "er", seed=0, counts=ALL)
    capped = open_source(tmp_path / "d", "er", seed=0, counts={"train": 2})
    assert capped.ids("train") == full.ids("train")[:2]
    assert capped.ids("test") == full.ids("test")
    _folder(tmp_path / "d2", stems + [f"t{i:02d}" for i in range(6)])
    more = open_source(tmp_path / "d2", "er", seed=0, counts=ALL)
    for split in SPLITS:
        assert set(full.ids(split)) <= set(more.ids(split))


# ----------------------------------------------------------------------------- Luo


def _luo(root: Path, names: dict[str, list[str]]) -> Path:
    """Luo et al.'s layout: <split>.txt lists of 'image_path mask_path' (relative)."""
    k = 0
    for lst, stems in names.items():
        lines = []
        for stem in stems:
            m = _blobs(seed=k)
            _tif(root / lst / "img" / f"{stem}.tif", _image(m, 16, k))
            _tif(root / lst / "mask" / f"{stem}.tif", (m * 255).astype(np.uint8))
            lines.append(f"{lst}/img/{stem}.tif {lst}/mask/{stem}.tif")
            k += 1
        (root / f"{lst}.txt").write_text("# image mask\n" + "\n".join(lines) + "\n\n")
    return root


def test_luo_pair_lists_keep_the_authors_splits(tmp_path):
    root = _luo(tmp_path / "luo", {"train": ["a", "b"], "val": ["c"], "test": ["d", "e"]})
    src = open_source(root, "er", seed=0, counts=ALL)
    assert src.describe()["kind"] == "luo" and src.describe()["split_rule"] == "lists"
    assert src.ids("train") == ["a", "b"] and src.ids("validation") == ["c"]
    assert src.ids("test") == ["d", "e"]
    it = src.load(["d"])[0]
    assert it.split == "test" and set(np.unique(it.mask)) == {0, 1}  # 0/255 -> 0/1
    assert it.image.dtype == np.uint16 and it.meta["split_rule"] == "list"


def test_luo_single_list_splits_by_id_and_repeated_stems_get_path_ids(tmp_path):
    root = _luo(tmp_path / "luo", {"train": ["001", "002"], "test": ["001"]})
    merged = tmp_path / "luo" / "all_pairs.txt"
    merged.write_text((root / "train.txt").read_text() + (root / "test.txt").read_text())
    src = open_source(merged, "mito", seed=0, counts=ALL)
    ids = [i for s in SPLITS for i in src.ids(s)]
    assert sorted(ids) == ["test_img_001", "train_img_001", "train_img_002"]
    for s in SPLITS:
        assert all(assign_split(i) == s for i in src.ids(s))


def test_luo_bad_lines_and_missing_files_name_the_list(tmp_path):
    root = _luo(tmp_path / "luo", {"train": ["a"]})
    bad = root / "bad.txt"
    bad.write_text("train/img/a.tif train/mask/a.tif\nonly_one_path.tif\n")
    with pytest.raises(SourceError, match=r"bad\.txt, line 2: expected 'image_path mask_path'"):
        open_source(bad, "er", seed=0, counts=ALL)
    bad.write_text("train/img/a.tif train/mask/zzz.tif\n")
    with pytest.raises(SourceError, match=r"bad\.txt, line 1: file does not exist: .*zzz\.tif"):
        open_source(bad, "er", seed=0, counts=ALL)


# ----------------------------------------------------------------------------- BBBC038


def test_bbbc038_folder_merges_nuclei_and_keeps_fluorescence_only(tmp_path):
    root = _bbbc038(tmp_path / "stage1_train", n=3)
    src = open_source(root, "nucleus", seed=0, counts=ALL)
    assert src.describe()["kind"] == "bbbc038"
    assert src.skipped == {"not_fluorescence": 2}  # the colour and the brightfield image
    items = _items(src)
    assert sorted(it.id for it in items) == ["00abc0", "01abc1", "02abc2"]
    for it in items:
        k = int(it.id[:2])
        assert it.instances.dtype == np.uint16 and int(it.instances.max()) == 4 + k
        assert set(np.unique(it.instances)) == set(range(5 + k))
        assert np.array_equal(it.instances > 0, it.mask == 1)
        assert it.image.dtype == np.uint16 and int(it.image.max()) == 160
        assert it.source == f"bbbc038:{it.id}#tile=0,0"
        assert it.meta["n_instances"] == 4 + k and it.meta["mask_files"] == 4 + k
    # The parent folder of stage1_train is recognised too.
    parent = open_source(tmp_path, "nucleus", seed=0, counts=ALL)
    assert parent.ids("train") + parent.ids("test") == src.ids("train") + src.ids("test")


def test_bbbc038_zip_reads_in_place_like_the_folder(tmp_path):
    root = _bbbc038(tmp_path / "stage1_train", n=3)
    zpath = tmp_path / "stage1_train.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted(root.rglob("*.png")):
            zf.write(f, f.relative_to(tmp_path).as_posix())
    before = sorted(tmp_path.rglob("*"))
    zsrc = open_source(zpath, "nucleus", seed=0, counts=ALL)
    fsrc = open_source(root, "nucleus", seed=0, counts=ALL)
    assert zsrc.skipped == fsrc.skipped
    zi, fi = _items(zsrc), _items(fsrc)
    assert [i.id for i in zi] == [i.id for i in fi]
    for a, b in zip(zi, fi, strict=True):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.instances, b.instances)
        assert a.source == b.source
    assert zi[0].meta["image_file"].startswith("stage1_train/")
    assert sorted(tmp_path.rglob("*")) == before  # nothing extracted


def test_bbbc038_zip_slip_is_refused(tmp_path):
    zpath = tmp_path / "in" / "evil.zip"
    zpath.parent.mkdir()
    png = _png(tmp_path / "n.png", (_blobs() * 255).astype(np.uint8))
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.write(png, "ok/images/ok.png")
        zf.write(png, "ok/masks/0.png")
        zf.write(png, "../../outside/images/outside.png")
    with pytest.raises(SourceError, match=r"unsafe path in zip .*evil\.zip: '\.\./\.\./outside"):
        open_source(zpath, "nucleus", seed=0, counts=ALL)
    assert not (tmp_path / "outside").exists() and not (tmp_path.parent / "outside").exists()


def test_bbbc038_is_for_nuclei_only(tmp_path):
    root = _bbbc038(tmp_path / "stage1_train", n=1, colour=False, brightfield=False)
    with pytest.raises(SourceError, match="holds nuclei: use it for the 'nucleus' config"):
        open_source(root, "er", seed=0, counts=ALL)


def test_bbbc038_image_without_masks(tmp_path):
    root = _bbbc038(tmp_path / "stage1_train", n=1, colour=False, brightfield=False)
    for f in (root / "00abc0" / "masks").iterdir():
        f.unlink()
    with pytest.raises(SourceError, match=r"image without its mask: .*00abc0\.png"):
        open_source(root, "nucleus", seed=0, counts=ALL)


# ----------------------------------------------------------------------------- bad input


def test_image_without_mask(tmp_path):
    root = _folder(tmp_path / "d", ["a", "b"])
    (root / "masks" / "b.png").unlink()
    with pytest.raises(SourceError, match=r"image without its mask: .*images/b\.png"):
        open_source(root, "er", seed=0, counts=ALL)


def test_mask_without_image(tmp_path):
    root = _folder(tmp_path / "d", ["a", "b"])
    (root / "images" / "a.tif").unlink()
    with pytest.raises(SourceError, match=r"mask without its image: .*masks/a\.tif"):
        open_source(root, "er", seed=0, counts=ALL)


def test_mismatched_sizes(tmp_path):
    root = _folder(tmp_path / "d", ["a"])
    _tif(root / "masks" / "a.tif", _blobs(256, 300))
    with pytest.raises(
        SourceError, match=r"sizes differ: .*images/a\.tif is 256x256, .*masks/a\.tif is 300x256"
    ):
        open_source(root, "er", seed=0, counts=ALL)


def test_mask_that_is_not_binary(tmp_path):
    root = _folder(tmp_path / "d", ["a"])
    labels = _blobs() * np.random.default_rng(0).integers(1, 4, (TILE, TILE))
    _tif(root / "masks" / "a.tif", labels.astype(np.uint8))
    with pytest.raises(
        SourceError, match=r"mask .*masks/a\.tif is not binary: .*Got values 0, 1, 2, 3"
    ):
        open_source(root, "er", seed=0, counts=ALL)


@pytest.mark.parametrize("name", ["a.tif", "b.png"])
def test_truncated_files(tmp_path, name):
    root = _folder(tmp_path / "d", ["a", "b"])
    f = root / "images" / name
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(SourceError, match=rf"cannot read .*images/{name}"):
        open_source(root, "er", seed=0, counts=ALL)


def test_unreadable_file(tmp_path):
    root = _folder(tmp_path / "d", ["a"])
    (root / "masks" / "a.tif").write_bytes(b"not an image at all")
    with pytest.raises(SourceError, match=r"cannot read .*masks/a\.tif"):
        open_source(root, "er", seed=0, counts=ALL)


def test_colour_image_in_a_folder_source(tmp_path):
    root = _folder(tmp_path / "d", ["a", "b"])
    rgb = np.stack([_image(_blobs(seed=1), 8)] * 3, -1)
    rgb[..., 2] = 0
    _png(root / "images" / "b.png", rgb)
    with pytest.raises(SourceError, match=r"single-channel \(or grey\) image in .*b\.png"):
        open_source(root, "er", seed=0, counts=ALL)


def test_paths_that_do_not_exist_or_hold_nothing_known(tmp_path):
    with pytest.raises(SourceError, match="source path does not exist: .*nowhere"):
        open_source(tmp_path / "nowhere", "er", seed=0, counts=ALL)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="cannot tell what .*empty holds.*Got an empty folder"):
        open_source(tmp_path / "empty", "er", seed=0, counts=ALL)
    with pytest.raises(SourceError, match="counts must be keyed by"):
        open_source("procedural", "er", seed=0, counts={"val": 3})
    with pytest.raises(ValueError, match="structure must be one of"):
        open_source("procedural", "golgi", seed=0, counts=ALL)


def test_bad_file_in_any_split_fails_before_anything_is_returned(tmp_path):
    # Nothing partial: every split is read when the source is opened.
    stems = [f"s{i:02d}" for i in range(10)]
    root = _folder(tmp_path / "d", stems)
    victim = next(s for s in stems if assign_split(s) == "test")
    f = next((root / "images").glob(f"{victim}.*"))
    f.write_bytes(b"\x89PNG garbage")
    with pytest.raises(SourceError, match=rf"cannot read .*{victim}"):
        open_source(root, "er", seed=0, counts=ALL)


# ----------------------------------------------------------------------------- real data


def test_shared_bbbc038_data(bbbc038_dir):
    counts = {"train": 3, "validation": 1, "test": 2}
    src = open_source(bbbc038_dir, "nucleus", seed=0, counts=counts)
    desc = json.loads(json.dumps(src.describe()))
    assert desc["counts"] == counts
    items = _items(src)
    assert len(items) == 6
    for it in items:
        assert it.mask.shape == (TILE, TILE) and set(np.unique(it.mask)) <= {0, 1}
        assert it.mask.mean() >= MIN_FOREGROUND_FRACTION
        assert np.array_equal(it.instances > 0, it.mask == 1)
        assert it.image.dtype == np.uint16 and int(it.image.max()) <= 255  # 8-bit source
        # Fluorescence: nuclei brighter than the background.
        assert it.image[it.mask == 1].mean() > it.image[it.mask == 0].mean()
        assert it.source.startswith("bbbc038:") and "#tile=" in it.source
        assert it.split == assign_split(it.id.split("_y")[0])
    again = open_source(bbbc038_dir, "nucleus", seed=1, counts=counts)
    assert [again.ids(s) for s in SPLITS] == [src.ids(s) for s in SPLITS]

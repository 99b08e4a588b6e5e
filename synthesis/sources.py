"""Where the ground-truth masks (and, for real sources, the real images) come from.

One interface, :class:`Source`, chosen by ``--source`` through :func:`open_source`:

- ``"procedural"``: the seeded generators of :mod:`synthesis.masks` (no download).
- a folder holding ``images/`` and ``masks/``, matched by file stem (TIFF or PNG, 8 or 16 bit).
- Luo et al.'s pair lists: text files of ``image_path mask_path`` lines (16-bit TIFF images,
  0/255 masks), a single list or a folder of them; paths are relative to the list's folder.
- BBBC038 ``stage1_train``, as a folder or as its zip (read in place, never extracted):
  per-nucleus masks merged into a semantic mask and an instance label image; fluorescence
  images only.

Rules (the same for every real source):

- **Tiling**: an image is cut into the non-overlapping grid of ``TILE`` x ``TILE`` tiles that
  fits inside it, centred (the margin left over is split between both sides); image and mask
  are cut at the same place, so a tile's mask is always that of its pixels. Images smaller
  than a tile are skipped (``skipped["smaller_than_tile"]``). Tile ids are the image id for a
  256x256 image, else ``<image id>_y<row>x<col>`` (pixel offsets).
- **Tiles with (almost) no foreground** or no background are skipped and counted
  (``skipped["tile_foreground_below_min"]``, ``["tile_background_below_min"]``): the SNR is
  measured on the foreground against the background, and a tile with a sliver of structure
  measures nothing. The threshold is :data:`MIN_FOREGROUND_FRACTION` of the tile.
- **Splits**: an image's split is fixed by its id alone (:func:`assign_split`: a sha256
  of the id against :data:`SPLIT_FRACTIONS`), so adding images never moves another; all
  tiles of an image share its split (no leakage between splits). Luo's lists named
  ``train``/``val``/``test`` keep the authors' split instead.
- **Counts**: for real sources, ``counts[split]`` caps the tiles per split, taken in id
  order; 0 or None (or a missing split) means all.
- **Bad input** raises :class:`SourceError` naming the file: an image without its mask (or a
  mask without its image), mismatched sizes, a mask that is not binary, an unreadable or
  truncated file, a path that does not exist, an unsafe zip entry. Every image of every
  split (within the caps) is read and checked when the source is opened, before the builder
  writes anything. BBBC038 images that are not fluorescence (colour, or a background brighter
  than the nuclei) are skipped and counted (``skipped["not_fluorescence"]``).
"""

from __future__ import annotations

import io
import logging
import re
import zipfile
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from synthesis.masks import STRUCTURES, generate_masks
from synthesis.rng import derive_seed

__all__ = [
    "IMAGE_SUFFIXES",
    "MIN_FOREGROUND_FRACTION",
    "SPLITS",
    "SPLIT_FRACTIONS",
    "TILE",
    "Item",
    "Source",
    "SourceError",
    "assign_split",
    "open_source",
    "tile_origins",
]

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "validation", "test")
#: Share of images per split for sources without their own split (Luo's ER: 157/28/38).
SPLIT_FRACTIONS: dict[str, float] = {"train": 0.7, "validation": 0.1, "test": 0.2}
#: Tile side in pixels: every benchmark image is TILE x TILE.
TILE: int = 256
#: Tiles whose foreground (or background) covers less than this fraction are skipped.
MIN_FOREGROUND_FRACTION: float = 0.005
IMAGE_SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".png")

_ID_OK = re.compile(r"[^A-Za-z0-9_.-]")


class SourceError(ValueError):
    """A source that cannot be used as given; the message names the file and the problem."""


@dataclass
class Item:
    """One benchmark image's ground truth (and real image, when the source has one).

    Attributes:
        id: stable id, characters ``[A-Za-z0-9_.-]`` only.
        split: ``"train"``, ``"validation"`` or ``"test"``.
        mask: ``(256, 256)`` uint8, 0 = background, 1 = structure.
        image: the real image tile, ``(256, 256)`` uint16 (8-bit sources keep their values),
            or None for procedural sources.
        instances: ``(256, 256)`` uint16 instance labels (0 = background), or None.
        source: provenance, e.g. ``"procedural:er"`` or ``"bbbc038:<image id>#tile=0,256"``.
        meta: JSON-serialisable details (generator parameters, file names, tile offsets...).
    """

    id: str
    split: str
    mask: np.ndarray
    image: np.ndarray | None = None
    instances: np.ndarray | None = None
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


class Source(ABC):
    """A set of items per split: ``ids(split)`` then ``load(ids)`` in batches."""

    name: str
    has_real_images: bool
    skipped: dict[str, int]

    @abstractmethod
    def ids(self, split: str) -> list[str]:
        """Ids of ``split`` in a deterministic order."""

    @abstractmethod
    def load(self, ids: list[str]) -> list[Item]:
        """The items of ``ids``, in that order."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """JSON-serialisable summary: kind, path, counts per split, skipped inputs."""


def assign_split(key: str) -> str:
    """The split of an image id: a function of the id alone (sha256), so stable as data grows.

    Example:
        >>> assign_split("img_001") in SPLITS
        True
    """
    u = derive_seed("fluorobench-c/split", key) / float(1 << 63)
    edge = 0.0
    for split in SPLITS:
        edge += SPLIT_FRACTIONS[split]
        if u < edge:
            return split
    return SPLITS[-1]


def tile_origins(height: int, width: int, tile: int = TILE) -> list[tuple[int, int]]:
    """Top-left corners of the centred, non-overlapping grid of tiles that fits the image.

    Example:
        >>> tile_origins(256, 256), tile_origins(360, 360), tile_origins(520, 696)
        ([(0, 0)], [(52, 52)], [(4, 92), (4, 348), (260, 92), (260, 348)])
    """
    ny, nx = height // tile, width // tile
    oy, ox = (height - ny * tile) // 2, (width - nx * tile) // 2
    return [(oy + i * tile, ox + j * tile) for i in range(ny) for j in range(nx)]


def open_source(
    source: str | Path,
    structure: str,
    *,
    seed: int,
    counts: dict[str, int | None] | None = None,
) -> Source:
    """Open ``source`` for ``structure``: ``"procedural"`` or a path (kind auto-detected).

    Args:
        source: ``"procedural"``; a BBBC038 ``stage1_train`` folder (or its parent) or zip; a
            Luo pair-list file or folder of lists; a folder with ``images/`` and ``masks/``.
        structure: ``"er"``, ``"mito"`` or ``"nucleus"``.
        seed: build seed (procedural masks; real sources do not depend on it).
        counts: images per split (procedural: required; real: caps, 0/None = all).

    Returns:
        A :class:`Source`; real sources have read and checked every image already.

    Raises:
        SourceError: unknown kind, a path that does not exist, or any bad input.
        ValueError: unknown structure.
    """
    if structure not in STRUCTURES:
        raise ValueError(f"structure must be one of {STRUCTURES}. Got {structure!r}")
    counts = dict(counts or {})
    bad = [k for k in counts if k not in SPLITS]
    if bad:
        raise SourceError(f"counts must be keyed by {SPLITS}. Got {sorted(counts)}")
    if str(source) == "procedural":
        return ProceduralSource(structure, seed=seed, counts=counts)
    path = Path(source).expanduser()
    if not path.exists():
        raise SourceError(f"source path does not exist: {path}")
    if path.is_file() and path.suffix.lower() == ".zip":
        src: _TiledSource = BBBC038Source(path, structure, counts=counts)
    elif path.is_file():
        src = LuoSource([path], path, structure, counts=counts)
    elif (path / "images").is_dir() and (path / "masks").is_dir():
        src = FolderSource(path, structure, counts=counts)
    elif (path / "stage1_train").is_dir():
        src = BBBC038Source(path / "stage1_train", structure, counts=counts)
    elif any(_is_bbbc038_entry(d) for d in path.iterdir()):
        src = BBBC038Source(path, structure, counts=counts)
    elif sorted(path.glob("*.txt")):
        src = LuoSource(sorted(path.glob("*.txt")), path, structure, counts=counts)
    else:
        raise SourceError(
            f"cannot tell what {path} holds: expected images/ and masks/ folders, a BBBC038 "
            f"stage1_train folder or zip, or Luo pair lists (*.txt). Got {_listing(path)}"
        )
    src.scan()
    return src


# ----------------------------------------------------------------------------- procedural


class ProceduralSource(Source):
    """The seeded mask generators: ids ``<structure>-<split>-<index:05d>``."""

    has_real_images = False

    def __init__(self, structure: str, *, seed: int, counts: dict[str, int | None]) -> None:
        self.structure = structure
        self.seed = int(seed)
        self.counts = {s: int(counts.get(s) or 0) for s in SPLITS}
        self.name = f"procedural:{structure}"
        self.skipped: dict[str, int] = {}
        self._pattern = re.compile(rf"{structure}-({'|'.join(SPLITS)})-(\d+)")

    def ids(self, split: str) -> list[str]:
        _check_split(split)
        return [f"{self.structure}-{split}-{i:05d}" for i in range(self.counts[split])]

    def load(self, ids: list[str]) -> list[Item]:
        """Generates the masks of ``ids`` in one :func:`generate_masks` call."""
        if not ids:
            return []
        splits = []
        for i in ids:
            m = self._pattern.fullmatch(i)
            if m is None:
                raise SourceError(
                    f"not an id of {self.name}: expected e.g. "
                    f"'{self.structure}-train-00000'. Got {i!r}"
                )
            splits.append(m.group(1))
        seeds = torch.tensor(
            [derive_seed(self.seed, self.structure, i, "mask") for i in ids], dtype=torch.int64
        )
        batch = generate_masks(self.structure, seeds)
        mask = batch.mask[:, 0].numpy().astype(np.uint8)
        inst = None if batch.instances is None else batch.instances[:, 0].numpy()
        return [
            Item(
                id=i,
                split=sp,
                mask=mask[k],
                instances=None if inst is None else inst[k].astype(np.uint16),
                source=self.name,
                meta=batch.params[k],
            )
            for k, (i, sp) in enumerate(zip(ids, splits, strict=True))
        ]

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "procedural",
            "path": None,
            "structure": self.structure,
            "seed": self.seed,
            "counts": dict(self.counts),
            "skipped": {},
        }


# ----------------------------------------------------------------------------- real sources


@dataclass
class _Pair:
    """One source image: its id, files (paths or zip entries) and the split it belongs to."""

    key: str
    image: str
    masks: list[str]  # one semantic mask, or (BBBC038) one mask per instance
    split: str
    display: str  # how errors name the image


#: (image as decoded, 0/1 uint8 mask, uint16 instance labels or None)
_Decoded = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]


@dataclass
class _Tile:
    pair: _Pair
    y: int
    x: int


class _TiledSource(Source):
    """Shared logic of the real sources: scan, split, tile, validate, load."""

    kind = "real"
    has_real_images = True
    _list_splits = False  # True where the source's own lists fix the splits
    _CACHE = 8  # decoded images kept for load(): the tiles of one image are consecutive

    def __init__(self, root: Path, structure: str, *, counts: dict[str, int | None]) -> None:
        self.root = root
        self.structure = structure
        self.caps = {s: int(counts.get(s) or 0) for s in SPLITS}
        self.name = f"{self.kind}:{root.name}"
        self.skipped: dict[str, int] = {}
        self._ids: dict[str, list[str]] | None = None
        self._tiles: dict[str, _Tile] = {}
        self._images: dict[str, int] = {}
        self._cache: OrderedDict[str, _Decoded] = OrderedDict()

    # -- what subclasses provide
    @abstractmethod
    def _pairs(self) -> list[_Pair]:
        """Every image of the source with its mask file(s) and split (missing pairs raise)."""

    @abstractmethod
    def _read(self, ref: str) -> bytes | Path:
        """The bytes (or the path) of a file reference."""

    def _provenance(self, tile: _Tile) -> str:
        return f"{self.kind}:{tile.pair.key}#tile={tile.y},{tile.x}"

    # -- Source
    def scan(self) -> None:
        """Read and check every image of every split (within the caps); index the tiles."""
        if self._ids is not None:
            return
        pairs = self._pairs()
        keys: dict[str, str] = {}
        for p in pairs:
            if p.key in keys:
                raise SourceError(
                    f"two images map to the id {p.key!r}: {keys[p.key]} and {p.display}"
                )
            keys[p.key] = p.display
        ids: dict[str, list[str]] = {s: [] for s in SPLITS}
        for split in SPLITS:
            todo = sorted((p for p in pairs if p.split == split), key=lambda p: p.key)
            cap = self.caps[split]
            used = 0
            for p in todo:
                if cap and len(ids[split]) >= cap:
                    break
                decoded = self._decode_pair(p)
                if decoded is None:
                    continue
                used += 1
                image, mask, _ = decoded
                origins = tile_origins(*mask.shape)
                if not origins:
                    self._skip("smaller_than_tile")
                    continue
                single = mask.shape == (TILE, TILE)
                for y, x in origins:
                    m = mask[y : y + TILE, x : x + TILE]
                    frac = float(m.mean())
                    if frac < MIN_FOREGROUND_FRACTION:
                        self._skip("tile_foreground_below_min")
                        continue
                    if frac > 1 - MIN_FOREGROUND_FRACTION:
                        self._skip("tile_background_below_min")
                        continue
                    tid = p.key if single else f"{p.key}_y{y}x{x}"
                    self._tiles[tid] = _Tile(p, y, x)
                    ids[split].append(tid)
                    if cap and len(ids[split]) >= cap:
                        break
            self._images[split] = used
        self._ids = ids
        logger.info(
            "%s: %s tiles, skipped %s",
            self.name,
            {s: len(v) for s, v in ids.items()},
            self.skipped or "none",
        )

    def ids(self, split: str) -> list[str]:
        _check_split(split)
        self.scan()
        assert self._ids is not None
        return list(self._ids[split])

    def load(self, ids: list[str]) -> list[Item]:
        self.scan()
        items = []
        for tid in ids:
            tile = self._tiles.get(tid)
            if tile is None:
                raise SourceError(f"not an id of {self.name}: {tid!r}")
            decoded = self._decode_pair(tile.pair)
            assert decoded is not None  # checked by scan()
            image, mask, inst = decoded
            sl = (slice(tile.y, tile.y + TILE), slice(tile.x, tile.x + TILE))
            tile_inst = None if inst is None else _relabel(inst[sl])
            masks = tile.pair.masks
            meta = {
                "image_file": self._rel(tile.pair.image),
                "mask_files": len(masks) if len(masks) > 1 else self._rel(masks[0]),
                "image_shape": list(mask.shape),
                "tile_yx": [tile.y, tile.x],
                "bit_depth": 8 if image.dtype == np.uint8 else 16,
                "split_rule": "list" if self._list_splits else "hash",
                "foreground_fraction": round(float(mask[sl].mean()), 5),
            }
            if tile_inst is not None:
                meta["n_instances"] = int(tile_inst.max())
            items.append(
                Item(
                    id=tid,
                    split=tile.pair.split,
                    mask=np.ascontiguousarray(mask[sl]),
                    image=np.ascontiguousarray(image[sl]).astype(np.uint16),
                    instances=tile_inst,
                    source=self._provenance(tile),
                    meta=meta,
                )
            )
        return items

    def describe(self) -> dict[str, Any]:
        self.scan()
        assert self._ids is not None
        return {
            "kind": self.kind,
            "path": str(self.root),
            "structure": self.structure,
            "counts": {s: len(v) for s, v in self._ids.items()},
            "images": dict(self._images),
            "caps": dict(self.caps),
            "tile": TILE,
            "min_foreground_fraction": MIN_FOREGROUND_FRACTION,
            "skipped": dict(sorted(self.skipped.items())),
        }

    # -- helpers
    def _rel(self, ref: str) -> str:
        """A file reference relative to the source root (no machine paths in the dataset)."""
        root = self.root if self.root.is_dir() else self.root.parent
        try:
            return Path(ref).resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            return Path(ref).name if Path(ref).is_absolute() else ref

    def _skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def _decode_pair(self, p: _Pair) -> _Decoded | None:
        """(image, 0/1 mask, instance labels or None), or None for a skipped image."""
        if p.key in self._cache:
            self._cache.move_to_end(p.key)
            return self._cache[p.key]
        out = self._decode_uncached(p)
        if out is not None:
            self._cache[p.key] = out
            while len(self._cache) > self._CACHE:
                self._cache.popitem(last=False)
        return out

    def _decode_uncached(self, p: _Pair) -> _Decoded | None:
        image = _grey(_decode(self._read(p.image), p.image), p.image, what="image")
        _check_image_dtype(image, p.image)
        mask = _binary(_grey(_decode(self._read(p.masks[0]), p.masks[0]), p.masks[0]), p.masks[0])
        _check_same_shape(image, p.image, mask, p.masks[0])
        return image, mask, None


class FolderSource(_TiledSource):
    """``root/images/<stem>.{tif,tiff,png}`` with ``root/masks/<stem>.{tif,tiff,png}``."""

    kind = "folder"

    def _pairs(self) -> list[_Pair]:
        images = _by_stem(self.root / "images")
        masks = _by_stem(self.root / "masks")
        no_mask = sorted(set(images) - set(masks))
        if no_mask:
            raise SourceError(
                f"image without its mask: {images[no_mask[0]]} has no masks/{no_mask[0]}.* "
                f"({len(no_mask)} image(s) without a mask)"
            )
        no_image = sorted(set(masks) - set(images))
        if no_image:
            raise SourceError(
                f"mask without its image: {masks[no_image[0]]} has no images/{no_image[0]}.* "
                f"({len(no_image)} mask(s) without an image)"
            )
        return [
            _Pair(
                key=_clean_id(stem),
                image=str(images[stem]),
                masks=[str(masks[stem])],
                split=assign_split(_clean_id(stem)),
                display=str(images[stem]),
            )
            for stem in sorted(images)
        ]

    def _read(self, ref: str) -> Path:
        return Path(ref)


class LuoSource(_TiledSource):
    """Luo et al.'s pair lists: ``image_path mask_path`` per line, relative to the list."""

    kind = "luo"

    def __init__(
        self, lists: list[Path], root: Path, structure: str, *, counts: dict[str, int | None]
    ) -> None:
        super().__init__(root, structure, counts=counts)
        self.lists = lists
        self._list_splits = all(_split_of_list(p) is not None for p in lists)

    def _pairs(self) -> list[_Pair]:
        rows: list[tuple[Path, Path, str | None, str]] = []
        for lst in self.lists:
            split = _split_of_list(lst) if self._list_splits else None
            try:
                text = lst.read_text()
            except (OSError, UnicodeDecodeError) as e:
                raise SourceError(f"cannot read pair list {lst}: {e}") from e
            for n, line in enumerate(text.splitlines(), 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                parts = line.split()
                if len(parts) != 2:
                    raise SourceError(
                        f"{lst}, line {n}: expected 'image_path mask_path'. Got {line!r}"
                    )
                img, msk = (Path(q) if Path(q).is_absolute() else lst.parent / q for q in parts)
                for f in (img, msk):
                    if not f.is_file():
                        raise SourceError(f"{lst}, line {n}: file does not exist: {f}")
                rows.append((img, msk, split, f"{lst}, line {n}"))
        if not rows:
            raise SourceError(f"no 'image_path mask_path' lines in {[str(p) for p in self.lists]}")
        stems = [_clean_id(r[0].stem) for r in rows]
        if len(set(stems)) != len(stems):
            # Stems repeat (e.g. train/001.tif and test/001.tif): ids from the relative paths.
            stems = [_clean_id(_relative_key(r[0], self.root)) for r in rows]
        return [
            _Pair(
                key=key,
                image=str(img),
                masks=[str(msk)],
                split=split or assign_split(key),
                display=f"{img} ({where})",
            )
            for key, (img, msk, split, where) in zip(stems, rows, strict=True)
        ]

    def _read(self, ref: str) -> Path:
        return Path(ref)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["lists"] = [str(p) for p in self.lists]
        d["split_rule"] = "lists" if self._list_splits else "hash"
        return d


class BBBC038Source(_TiledSource):
    """BBBC038 (2018 Data Science Bowl) ``stage1_train``: a folder or its zip.

    Layout: ``<id>/images/<id>.png`` (8-bit RGBA, R == G == B for fluorescence) and
    ``<id>/masks/<k>.png`` (one 0/255 mask per nucleus). Masks are merged into a semantic
    mask and an instance label image (label = rank of the mask file name; where two masks
    overlap, the later one wins, counted in ``meta``). Only fluorescence images are kept:
    grey (R == G == B) with nuclei brighter than the background; others are skipped.
    """

    kind = "bbbc038"

    def __init__(self, root: Path, structure: str, *, counts: dict[str, int | None]) -> None:
        if structure != "nucleus":
            raise SourceError(
                f"BBBC038 ({root}) holds nuclei: use it for the 'nucleus' config. Got {structure!r}"
            )
        super().__init__(root, structure, counts=counts)
        self._zip: zipfile.ZipFile | None = None

    def _pairs(self) -> list[_Pair]:
        if self.root.is_file():
            return self._zip_pairs()
        pairs = []
        for d in sorted(self.root.iterdir()):
            if not d.is_dir():
                continue
            images = sorted(
                f for f in (d / "images").glob("*") if f.suffix.lower() in IMAGE_SUFFIXES
            )
            masks = sorted(f for f in (d / "masks").glob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
            if not images and not masks:
                continue  # not an image folder
            pairs.append(self._pair(d.name, [str(f) for f in images], [str(f) for f in masks]))
        if not pairs:
            raise SourceError(f"no BBBC038 image folders (<id>/images, <id>/masks) in {self.root}")
        return pairs

    def _pair(self, key: str, images: list[str], masks: list[str]) -> _Pair:
        where = f"{self.root}/{key}" if self.root.is_dir() else f"{self.root}:{key}"
        if len(images) != 1:
            raise SourceError(f"expected one image in {where}/images. Got {len(images)}")
        if not masks:
            raise SourceError(f"image without its mask: {images[0]} has no {key}/masks/*.png")
        clean = _clean_id(key)
        return _Pair(clean, images[0], masks, assign_split(clean), images[0])

    def _zip_pairs(self) -> list[_Pair]:
        zf = self._zipfile()
        found: dict[str, dict[str, list[str]]] = {}
        for name in zf.namelist():
            _check_zip_entry(name, self.root)
            if name.endswith("/"):
                continue
            parts = PurePosixPath(name).parts
            if len(parts) < 3 or parts[-2] not in ("images", "masks"):
                continue
            if PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            entry = found.setdefault("/".join(parts[:-2]), {"images": [], "masks": []})
            entry[parts[-2]].append(name)
        if not found:
            raise SourceError(
                f"no BBBC038 entries (<id>/images/<id>.png, <id>/masks/*.png) in {self.root}"
            )
        return [
            self._pair(PurePosixPath(d).name, sorted(v["images"]), sorted(v["masks"]))
            for d, v in sorted(found.items())
        ]

    def _zipfile(self) -> zipfile.ZipFile:
        if self._zip is None:
            try:
                self._zip = zipfile.ZipFile(self.root)
            except (OSError, zipfile.BadZipFile) as e:
                raise SourceError(f"cannot read zip {self.root}: {e}") from e
        return self._zip

    def _read(self, ref: str) -> bytes | Path:
        if self.root.is_dir():
            return Path(ref)
        try:
            return self._zipfile().read(ref)
        except (OSError, zipfile.BadZipFile, KeyError, EOFError) as e:
            raise SourceError(f"cannot read {ref} from zip {self.root}: {e}") from e

    def _provenance(self, tile: _Tile) -> str:
        return f"bbbc038:{tile.pair.key}#tile={tile.y},{tile.x}"

    def _decode_uncached(self, p: _Pair) -> _Decoded | None:
        raw = _decode(self._read(p.image), p.image)
        if raw.ndim == 3 and not _equal_channels(raw):
            self._skip("not_fluorescence")
            return None
        image = _grey(raw, p.image, what="image")
        _check_image_dtype(image, p.image)
        labels = np.zeros(image.shape, dtype=np.uint16)
        overlap = 0
        for k, ref in enumerate(p.masks, 1):
            m = _binary(_grey(_decode(self._read(ref), ref), ref), ref)
            _check_same_shape(image, p.image, m, ref)
            on = m.astype(bool)
            overlap += int((labels[on] > 0).sum())
            labels[on] = k
        mask = (labels > 0).astype(np.uint8)
        fg, bg = image[mask == 1], image[mask == 0]
        if bg.size and fg.size and float(bg.mean()) >= float(fg.mean()):
            self._skip("not_fluorescence")  # dark nuclei on a bright field: brightfield
            return None
        if overlap:
            logger.debug("%s: %d px claimed by two nucleus masks", p.display, overlap)
        return image, mask, labels


# ----------------------------------------------------------------------------- file helpers


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}. Got {split!r}")


def _clean_id(text: str) -> str:
    return _ID_OK.sub("-", text) or "-"


def _relative_key(path: Path, root: Path) -> str:
    try:
        rel = path.resolve().relative_to(root.resolve())
    except ValueError:
        rel = Path(*path.parts[-3:])
    return "_".join(rel.with_suffix("").parts)


def _split_of_list(path: Path) -> str | None:
    name = path.stem.lower()
    for split, words in (("validation", ("val",)), ("train", ("train",)), ("test", ("test",))):
        if any(w in name for w in words):
            return split
    return None


def _listing(path: Path, n: int = 8) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    more = f" ... ({len(names)} entries)" if len(names) > n else ""
    return (", ".join(names[:n]) + more) if names else "an empty folder"


def _is_bbbc038_entry(d: Path) -> bool:
    return d.is_dir() and (d / "images").is_dir() and (d / "masks").is_dir()


def _by_stem(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise SourceError(f"folder does not exist: {folder}")
    out: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if f.suffix.lower() not in IMAGE_SUFFIXES or not f.is_file():
            continue
        if f.stem in out:
            raise SourceError(f"two files with the stem {f.stem!r}: {out[f.stem]} and {f}")
        out[f.stem] = f
    if not out:
        raise SourceError(f"no {'/'.join(IMAGE_SUFFIXES)} files in {folder}")
    return out


def _check_zip_entry(name: str, zip_path: Path) -> None:
    """Refuse entries that would land outside a target folder (zip-slip), even unextracted."""
    p = PurePosixPath(name)
    if (
        name.startswith(("/", "\\"))
        or "\\" in name
        or ".." in p.parts
        or re.match(r"^[A-Za-z]:", name)
    ):
        raise SourceError(f"unsafe path in zip {zip_path}: {name!r} points outside the archive")


def _decode(data: bytes | Path, name: str) -> np.ndarray:
    """Decode a TIFF or PNG into an array (2-D, or channels last)."""
    suffix = PurePosixPath(name).suffix.lower()
    src: Any = data if isinstance(data, Path) else io.BytesIO(data)
    if isinstance(data, Path) and not data.is_file():
        raise SourceError(f"file does not exist: {name}")
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            arr = np.asarray(tifffile.imread(src))
        else:
            from PIL import Image

            with Image.open(src) as im:
                im.load()
                arr = np.asarray(im)
    # Decoders raise a zoo of types for a damaged file (OSError, SyntaxError, ValueError,
    # zlib.error, struct.error, TiffFileError...): all mean "unreadable", said with the name.
    except Exception as e:
        raise SourceError(f"cannot read {name}: {type(e).__name__}: {e}") from e
    arr = np.squeeze(arr)
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # channels-first TIFF
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (2, 3, 4)):
        raise SourceError(f"expected a 2-D image in {name}. Got an array of shape {arr.shape}")
    if arr.dtype == np.int32 and arr.size and arr.min() >= 0 and arr.max() <= 65535:
        arr = arr.astype(np.uint16)  # 16-bit PNGs some writers store as 32-bit
    return arr


def _equal_channels(arr: np.ndarray) -> bool:
    colour = arr[..., : 3 if arr.shape[-1] >= 3 else 1]
    return bool((colour == colour[..., :1]).all())


def _grey(arr: np.ndarray, name: str, *, what: str = "mask") -> np.ndarray:
    if arr.ndim == 2:
        return arr
    if not _equal_channels(arr):
        raise SourceError(
            f"expected a single-channel (or grey) {what} in {name}. "
            f"Got {arr.shape[-1]} channels that differ"
        )
    return arr[..., 0]


def _check_image_dtype(image: np.ndarray, name: str) -> None:
    if image.dtype not in (np.uint8, np.uint16):
        raise SourceError(f"expected an 8- or 16-bit image in {name}. Got dtype {image.dtype}")


def _binary(mask: np.ndarray, name: str) -> np.ndarray:
    """0/1 uint8 from a mask holding 0 and one other value (0/1, 0/255, 0/65535...)."""
    if mask.dtype == bool:
        return mask.astype(np.uint8)
    values = np.unique(mask)
    if values.size > 2 or (values.size == 2 and values[0] != 0):
        shown = ", ".join(str(v) for v in values[:6]) + (" ..." if values.size > 6 else "")
        raise SourceError(
            f"mask {name} is not binary: expected 0 and one foreground value. Got values {shown}"
        )
    return (mask > 0).astype(np.uint8)


def _check_same_shape(image: np.ndarray, iname: str, mask: np.ndarray, mname: str) -> None:
    if image.shape != mask.shape:
        raise SourceError(
            f"image and mask sizes differ: {iname} is {image.shape[1]}x{image.shape[0]}, "
            f"{mname} is {mask.shape[1]}x{mask.shape[0]}"
        )


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Consecutive labels 1..N (uint16) for the instances present in a tile."""
    present = np.unique(labels)
    present = present[present > 0]
    lut = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.uint16)
    lut[present] = np.arange(1, present.size + 1, dtype=np.uint16)
    return lut[labels]


def _iter_chunks(seq: list[str], n: int) -> Iterator[list[str]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _all_items(source: Source, splits: Iterable[str] = SPLITS, batch: int = 16) -> Iterator[Item]:
    """Every item of ``splits`` (a helper for scripts and tests)."""
    for split in splits:
        for chunk in _iter_chunks(source.ids(split), batch):
            yield from source.load(chunk)

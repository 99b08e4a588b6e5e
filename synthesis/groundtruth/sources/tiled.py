"""The shared logic of the real sources (:class:`_TiledSource`): scan, split, tile, check, load.

A real source lists its images as :class:`_Pair` (id, image file, mask file(s) or none for an
images-only source, which makes pseudo-masks, and a split); this base reads and checks every
one when scanned, cuts it into tiles (:class:`_Tile`), skips tiles with too little
foreground or background (:meth:`_TiledSource._kept_tiles`), splits by image or, where the
source says so, by tile, and loads tiles with their instance labels relabelled 1..N
(:func:`_relabel`).
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synthesis.groundtruth.sources.base import (
    MIN_FOREGROUND_FRACTION,
    SPLITS,
    TILE,
    Item,
    Source,
    SourceError,
    _check_split,
    assign_split,
    tile_origins,
)
from synthesis.groundtruth.sources.readers import (
    _binary,
    _check_image_dtype,
    _check_same_shape,
    _decode,
    _grey,
)

# The package's logger, so log lines keep the name they had before the package was split.
logger = logging.getLogger(__package__)


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
    split: str = ""  # the tile's own split (sources that split by tile); else its pair's


class _TiledSource(Source):
    """Shared logic of the real sources: scan, split, tile, validate, load."""

    kind = "real"
    has_real_images = True
    _list_splits = False  # True where the source's own lists fix the splits
    _tile_splits = False  # True where each tile's id fixes its split (not its image's)
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

    def _mask_meta(self, pair: _Pair) -> dict[str, Any]:
        """What an item's ``meta`` says of its mask: the mask file(s) it was read from."""
        masks = pair.masks
        return {"mask_files": len(masks) if len(masks) > 1 else self._rel(masks[0])}

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
        if self._tile_splits:
            self._ids = self._scan_by_tile(pairs)
            self._log_counts()
            return
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
                for tid, y, x in self._kept_tiles(p, decoded[1]):
                    self._tiles[tid] = _Tile(p, y, x)
                    ids[split].append(tid)
                    if cap and len(ids[split]) >= cap:
                        break
            self._images[split] = used
        self._ids = ids
        self._log_counts()

    def _kept_tiles(self, p: _Pair, mask: np.ndarray) -> Iterator[tuple[str, int, int]]:
        """``(tile id, y, x)`` of each tile of ``p`` whose foreground fraction is within the
        bounds, in order (lazily: the others are counted as skipped as they are reached)."""
        origins = tile_origins(*mask.shape)
        if not origins:
            self._skip("smaller_than_tile")
            return
        single = mask.shape == (TILE, TILE)
        for y, x in origins:
            frac = float(mask[y : y + TILE, x : x + TILE].mean())
            if frac < MIN_FOREGROUND_FRACTION:
                self._skip("tile_foreground_below_min")
                continue
            if frac > 1 - MIN_FOREGROUND_FRACTION:
                self._skip("tile_background_below_min")
                continue
            yield (p.key if single else f"{p.key}_y{y}x{x}"), y, x

    def _scan_by_tile(self, pairs: list[_Pair]) -> dict[str, list[str]]:
        """Tile ids per split where each tile's split is :func:`assign_split` of its id:
        images read in id order until every split's cap is met (all of them without caps)."""
        ids: dict[str, list[str]] = {s: [] for s in SPLITS}
        used: dict[str, set[str]] = {s: set() for s in SPLITS}

        def full(split: str) -> bool:
            return bool(self.caps[split]) and len(ids[split]) >= self.caps[split]

        for p in sorted(pairs, key=lambda p: p.key):
            if all(full(s) for s in SPLITS):
                break
            decoded = self._decode_pair(p)
            if decoded is None:
                continue
            for tid, y, x in self._kept_tiles(p, decoded[1]):
                split = assign_split(tid)
                if full(split):
                    continue
                self._tiles[tid] = _Tile(p, y, x, split)
                ids[split].append(tid)
                used[split].add(p.key)
        self._images = {s: len(used[s]) for s in SPLITS}
        return ids

    def _log_counts(self) -> None:
        assert self._ids is not None
        ids = self._ids
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
            meta = {
                "image_file": self._rel(tile.pair.image),
                **self._mask_meta(tile.pair),
                "image_shape": list(mask.shape),
                "tile_yx": [tile.y, tile.x],
                "bit_depth": 8 if image.dtype == np.uint8 else 16,
                "split_rule": self._split_rule(),
                "foreground_fraction": round(float(mask[sl].mean()), 5),
            }
            if tile_inst is not None:
                meta["n_instances"] = int(tile_inst.max())
            items.append(
                Item(
                    id=tid,
                    split=tile.split or tile.pair.split,
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
    def _split_rule(self) -> str:
        """How splits are assigned: ``list`` (the source's lists), ``hash`` (of the image
        id) or ``tile-hash`` (of the tile id)."""
        if self._tile_splits:
            return "tile-hash"
        return "list" if self._list_splits else "hash"

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


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Consecutive labels 1..N (uint16) for the instances present in a tile."""
    present = np.unique(labels)
    present = present[present > 0]
    lut = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.uint16)
    lut[present] = np.arange(1, present.size + 1, dtype=np.uint16)
    return lut[labels]

"""The core of every source: constants, :class:`Item`, :class:`SourceError`, :class:`Source`.

Also the rules shared by all sources: tile placement (:func:`tile_origins`), split assignment
by a sha256 of the image id (:func:`assign_split`), id cleaning, and iteration helpers.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from synthesis.rng import derive_seed
from synthesis.runtime.errors import InputError

SPLITS: tuple[str, ...] = ("train", "validation", "test")
#: Share of images per split for sources without their own split (Luo's ER: 157/28/38).
SPLIT_FRACTIONS: dict[str, float] = {"train": 0.7, "validation": 0.1, "test": 0.2}
#: Tile side in pixels: every benchmark image is TILE x TILE.
TILE: int = 256
#: Tiles whose foreground (or background) covers less than this fraction are skipped.
MIN_FOREGROUND_FRACTION: float = 0.005
IMAGE_SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".png")

_ID_OK = re.compile(r"[^A-Za-z0-9_.-]")


class SourceError(InputError):
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


def stack_items(items: list[Item]) -> tuple[Any, Any, Any]:
    """The real tiles of ``items`` as tensors: ``(images float32 (N, 1, H, W) in grey
    levels, masks bool, instance labels int32 or None when an item has none)``.

    Raises:
        ValueError: an item without a real image (procedural sources have none).
    """
    import torch

    missing = [it.id for it in items if it.image is None]
    if missing:
        raise ValueError(f"items without a real image: {missing[:5]}")
    x = torch.from_numpy(np.stack([it.image.astype(np.float32) for it in items]))[:, None]
    m = torch.from_numpy(np.stack([np.asarray(it.mask) != 0 for it in items]))[:, None]
    inst = None
    if all(it.instances is not None for it in items):
        inst = torch.from_numpy(np.stack([it.instances.astype(np.int32) for it in items]))[:, None]
    return x, m, inst


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}. Got {split!r}")


def _clean_id(text: str) -> str:
    return _ID_OK.sub("-", text) or "-"


def _iter_chunks(seq: list[str], n: int) -> Iterator[list[str]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _all_items(source: Source, splits: Iterable[str] = SPLITS, batch: int = 16) -> Iterator[Item]:
    """Every item of ``splits`` (a helper for scripts and tests)."""
    for split in splits:
        for chunk in _iter_chunks(source.ids(split), batch):
            yield from source.load(chunk)

"""BBBC038 ``stage1_train`` as a folder or as its zip (read in place, never extracted).

Per-nucleus masks are merged into a semantic mask and an instance label image; only
fluorescence images are kept. Zip entries are checked against zip-slip paths.
"""

from __future__ import annotations

import logging
import re
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np

from synthesis.groundtruth.sources.base import (
    IMAGE_SUFFIXES,
    SourceError,
    _clean_id,
    assign_split,
)
from synthesis.groundtruth.sources.readers import (
    _binary,
    _check_image_dtype,
    _check_same_shape,
    _decode,
    _equal_channels,
    _grey,
)
from synthesis.groundtruth.sources.tiled import _Decoded, _Pair, _Tile, _TiledSource

# The package's logger, so log lines keep the name they had before the package was split.
logger = logging.getLogger(__package__)


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


def _is_bbbc038_entry(d: Path) -> bool:
    return d.is_dir() and (d / "images").is_dir() and (d / "masks").is_dir()


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

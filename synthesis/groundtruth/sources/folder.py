"""The folder source: ``images/`` and ``masks/`` matched by file stem (TIFF or PNG, 8 or 16 bit)."""

from __future__ import annotations

from pathlib import Path

from synthesis.groundtruth.sources.base import (
    IMAGE_SUFFIXES,
    SourceError,
    _clean_id,
    assign_split,
)
from synthesis.groundtruth.sources.tiled import _Pair, _TiledSource


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

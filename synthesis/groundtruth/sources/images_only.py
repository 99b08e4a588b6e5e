"""The images-only source: ``images/`` (TIFF or PNG, 8 or 16 bit) and no ``masks/`` folder.

Real images without manual masks: each image's mask is a **pseudo-mask**, a classical
segmentation of the whole image (before tiling; :func:`~synthesis.groundtruth.pseudo_masks.
pseudo_mask` with the structure's method, :data:`~synthesis.groundtruth.pseudo_masks.
DEFAULT_METHODS`). It is not ground truth: every item says so in its ``meta`` (``"mask":
"pseudo"`` and ``"pseudo_mask"``, the method and its parameters), and so does the source's
:meth:`~ImagesOnlySource.describe`.

Instances: ``nucleus`` items carry the pseudo-mask's 8-connected components (touching nuclei
merge); ``er`` and ``mito`` items carry none, as with the folder source.

Splits: such a source is often a few large fields, so each **tile**'s split is fixed by its
own id (``split_rule`` ``tile-hash``: :func:`~synthesis.groundtruth.sources.base.
assign_split` of the tile id), not by its image's; tiles do not overlap, but neighbouring
tiles of one field may fall in different splits.

Bad input raises :class:`SourceError` naming the file: anything the folder source rejects
in an image, an image the method cannot segment (constant), and an image with nothing to
segment (no foreground, or a foreground less than :data:`~synthesis.groundtruth.
pseudo_masks.MIN_CONTRAST_SD` noise sd above its background, as on pure noise).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from synthesis.groundtruth.pseudo_masks import (
    DEFAULT_METHODS,
    MIN_CONTRAST_SD,
    MaskMethod,
    contrast_sd,
    pseudo_mask,
)
from synthesis.groundtruth.sources.base import SourceError, _clean_id
from synthesis.groundtruth.sources.folder import _by_stem
from synthesis.groundtruth.sources.readers import _check_image_dtype, _decode, _grey
from synthesis.groundtruth.sources.tiled import _Decoded, _Pair, _TiledSource


class ImagesOnlySource(_TiledSource):
    """``root/images/<stem>.{tif,tiff,png}`` with pseudo-masks (module docstring)."""

    kind = "images"
    _tile_splits = True

    def __init__(
        self,
        root: Path,
        structure: str,
        *,
        counts: dict[str, int | None],
        method: MaskMethod | None = None,
    ) -> None:
        super().__init__(root, structure, counts=counts)
        self.method = method if method is not None else DEFAULT_METHODS[structure]

    def _pairs(self) -> list[_Pair]:
        images = _by_stem(self.root / "images")
        return [
            _Pair(
                key=_clean_id(stem),
                image=str(images[stem]),
                masks=[],
                split="",  # per tile: _TiledSource._scan_by_tile
                display=str(images[stem]),
            )
            for stem in sorted(images)
        ]

    def _read(self, ref: str) -> Path:
        return Path(ref)

    def _mask_meta(self, pair: _Pair) -> dict[str, Any]:
        return {"mask": "pseudo", "pseudo_mask": self.method.to_dict()}

    def _decode_uncached(self, p: _Pair) -> _Decoded:
        image = _grey(_decode(self._read(p.image), p.image), p.image, what="image")
        _check_image_dtype(image, p.image)
        name = self.method.name
        try:
            fg = pseudo_mask(image, self.method)
        except ValueError as e:
            raise SourceError(f"cannot make a pseudo-mask ({name}) of {p.display}: {e}") from None
        if not fg.any():
            raise SourceError(
                f"nothing to segment in {p.display}: its pseudo-mask ({name}) has no foreground"
            )
        contrast = contrast_sd(image, fg)
        if not contrast >= MIN_CONTRAST_SD:
            raise SourceError(
                f"nothing to segment in {p.display}: its pseudo-mask ({name}) covers "
                f"{fg.mean():.0%} of the image at only {contrast:.2g} noise sd above the "
                f"background (at least {MIN_CONTRAST_SD:g} needed; pure noise gives about 1)"
            )
        inst = None
        if self.structure == "nucleus":
            from skimage import measure

            labels = measure.label(fg, connectivity=2)
            if labels.max() > np.iinfo(np.uint16).max:
                raise SourceError(
                    f"too many objects in the pseudo-mask of {p.display}: {labels.max()} "
                    "(at most 65535)"
                )
            inst = labels.astype(np.uint16)
        return image, fg.astype(np.uint8), inst

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["mask"] = "pseudo"
        d["pseudo_mask"] = self.method.to_dict()
        d["split_rule"] = self._split_rule()
        return d

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

Pixel size (:mod:`.pixel_size`, docs/definitions.md#pixel-size-of-a-source): each image's,
when known (given in ``pixel_sizes``, or read from its TIFF metadata), is recorded in every
item's ``meta`` and in :meth:`~ImagesOnlySource.describe`. When the config states a pixel
size (:data:`synthesis.levels.PIXEL_SIZE_UM`, mito's 0.085 µm) and the image's is known, the
whole image is resampled to it (:func:`~.pixel_size.resample`) before it is pseudo-masked and
tiled, and its default pseudo-mask method is scaled from the pixel size the defaults were
tuned at (:data:`METHOD_PIXEL_SIZE_UM`) to that one (``DEFAULT_MITO.scaled(1.6)`` for mito); an
image whose pixel size is unknown is used as it is, with the default method, and its items
say ``pixel_size_um: null`` (a warning is logged).

Bad input raises :class:`SourceError` naming the file: anything the folder source rejects
in an image, an image the method cannot segment (constant), and an image with nothing to
segment (no foreground, or a foreground less than :data:`~synthesis.groundtruth.
pseudo_masks.MIN_CONTRAST_SD` noise sd above its background, as on pure noise); a pixel size
given for a stem the folder does not hold, or given or read outside the plausible range.
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
from synthesis.groundtruth.sources.pixel_size import (
    ALL,
    check_scale,
    resample,
    tiff_pixel_size_um,
)
from synthesis.groundtruth.sources.readers import _check_image_dtype, _decode, _grey
from synthesis.groundtruth.sources.tiled import _Decoded, _Pair, _TiledSource, logger
from synthesis.levels import PIXEL_SIZE_UM

#: The pixel size (µm) the default pseudo-mask methods of tubules were tuned at: the HCS
#: field of ``shared/data/mito-fluorescence``, ~0.136 µm/px as implied by its tubule widths.
METHOD_PIXEL_SIZE_UM: float = 0.136


def method_at_target(structure: str) -> MaskMethod:
    """The structure's default pseudo-mask method at its config's stated pixel size
    (:data:`synthesis.levels.PIXEL_SIZE_UM`): scaled from :data:`METHOD_PIXEL_SIZE_UM` to it,
    the method an images-only source uses on every image it resamples (and so the one to
    pseudo-mask renders of that config with); the default itself where the config states no
    pixel size (or the method cannot be scaled).

    Example:
        >>> method_at_target("mito").name, method_at_target("er").name
        ('mito-default-x1.6', 'er-default')
    """
    method = DEFAULT_METHODS[structure]
    target = PIXEL_SIZE_UM.get(structure)
    if target is None or not hasattr(method, "scaled"):
        return method
    return method.scaled(round(METHOD_PIXEL_SIZE_UM / target, 4))


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
        pixel_sizes: dict[str, float] | None = None,
    ) -> None:
        super().__init__(root, structure, counts=counts)
        self._given_method = method is not None
        self.method = method if method is not None else DEFAULT_METHODS[structure]
        self.pixel_sizes = dict(pixel_sizes or {})
        #: The config's stated pixel size (µm), or None: then nothing is resampled.
        self.target_um = PIXEL_SIZE_UM.get(structure)
        #: Per image id: its pixel size, where it came from, the resampling, the method.
        self.scales: dict[str, dict[str, Any]] = {}

    def _pairs(self) -> list[_Pair]:
        images = _by_stem(self.root / "images")
        unknown = sorted(s for s in self.pixel_sizes if s != ALL and s not in images)
        if unknown:
            raise SourceError(
                f"--source-pixel-size names {unknown[0]!r}: no image of that stem in "
                f"{self.root / 'images'} (stems: {', '.join(sorted(images))})"
            )
        for stem in sorted(images):
            self.scales[_clean_id(stem)] = self._scale_of(stem, images[stem])
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

    def _scale_of(self, stem: str, path: Path) -> dict[str, Any]:
        """An image's pixel size (given, else from its TIFF, else unknown), the factor that
        resamples it to the config's, and the pseudo-mask method at the resulting scale."""
        um: float | None = None
        where: str | None = None
        given = self.pixel_sizes.get(stem, self.pixel_sizes.get(ALL))
        if given is not None:
            um, where = float(given), "given"
        elif path.suffix.lower() in (".tif", ".tiff"):
            um, where = tiff_pixel_size_um(path)
        scale = 1.0
        method = self.method
        if um is None:
            logger.warning(
                "%s: pixel size unknown (no TIFF resolution metadata, none given with "
                "--source-pixel-size %s=UM): used as it is, not resampled%s",
                path,
                stem,
                f" to {self.target_um:g} µm/px" if self.target_um else "",
            )
        elif self.target_um is not None:
            scale = check_scale(um / self.target_um, str(path))
            if not self._given_method:
                method = method_at_target(self.structure)
        return {
            "native_um": um,
            "from": where,
            "scale": scale,
            "pixel_size_um": None if um is None else (self.target_um if scale != 1.0 else um),
            "method": method,
        }

    def _mask_meta(self, pair: _Pair) -> dict[str, Any]:
        s = self.scales[pair.key]
        return {
            "mask": "pseudo",
            "pseudo_mask": s["method"].to_dict(),
            "pixel_size_um": s["pixel_size_um"],
            "pixel_size_from": s["from"],
            "resampled_from_um": s["native_um"] if s["scale"] != 1.0 else None,
            "scale": s["scale"],
        }

    def _decode_uncached(self, p: _Pair) -> _Decoded:
        image = _grey(_decode(self._read(p.image), p.image), p.image, what="image")
        _check_image_dtype(image, p.image)
        s = self.scales[p.key]
        if s["scale"] != 1.0:
            image = resample(image, s["scale"])
        method = s["method"]
        name = method.name
        try:
            fg = pseudo_mask(image, method)
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
        used = {s["method"] for s in self.scales.values()}
        # The method every image was segmented with (scaled to the config's pixel size
        # where they were resampled); where images differ, the base method, and each
        # image's under pixel_size.
        d["pseudo_mask"] = (used.pop() if len(used) == 1 else self.method).to_dict()
        d["split_rule"] = self._split_rule()
        d["pixel_size"] = {
            "target_um": self.target_um,
            "images": {
                key: {
                    "pixel_size_um": s["native_um"],
                    "from": s["from"],
                    "scale": s["scale"],
                    "pseudo_mask": s["method"].name,
                }
                for key, s in sorted(self.scales.items())
            },
        }
        return d

"""Where the ground-truth masks (and, for real sources, the real images) come from.

One interface, :class:`Source`, chosen by ``--source`` through :func:`open_source`:

- ``"procedural"``: the seeded generators of :mod:`synthesis.groundtruth.masks` (no download;
  :mod:`.procedural`).
- a folder holding ``images/`` and ``masks/``, matched by file stem (TIFF or PNG, 8 or 16 bit;
  :mod:`.folder`).
- a folder holding ``images/`` and no ``masks/``: real images without manual masks, whose
  masks are pseudo-masks (:mod:`synthesis.groundtruth.pseudo_masks`, computed on each whole
  image before tiling; every item records the method; :mod:`.images_only`).
- Luo et al.'s pair lists: text files of ``image_path mask_path`` lines (16-bit TIFF images,
  0/255 masks), a single list or a folder of them; paths are relative to the list's folder
  (:mod:`.luo`).
- BBBC038 ``stage1_train``, as a folder or as its zip (read in place, never extracted):
  per-nucleus masks merged into a semantic mask and an instance label image; fluorescence
  images only (:mod:`.bbbc038`).

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
  ``train``/``val``/``test`` keep the authors' split instead; images-only sources (often a
  few large fields) split by a sha256 of each tile's id instead.
- **Counts**: for real sources, ``counts[split]`` caps the tiles per split, taken in id
  order; 0 or None (or a missing split) means all.
- **Bad input** raises :class:`SourceError` naming the file: an image without its mask (or a
  mask without its image), mismatched sizes, a mask that is not binary, an unreadable or
  truncated file, a path that does not exist, an unsafe zip entry, an image without masks
  whose pseudo-mask finds nothing to segment. Every image of every
  split (within the caps) is read and checked when the source is opened, before the builder
  writes anything. BBBC038 images that are not fluorescence (colour, or a background brighter
  than the nuclei) are skipped and counted (``skipped["not_fluorescence"]``).

Layout of the package: this module re-exports the public API (and the adapter classes);
:mod:`.base` the constants, :class:`Item`, :class:`SourceError`, :class:`Source`, tiling and
split rules; :mod:`.tiled` the logic shared by the real sources (scan, tile, check, load);
:mod:`.readers` image and mask file decoding and checks; :mod:`.detect` :func:`open_source`;
one module per adapter (:mod:`.procedural`, :mod:`.folder`, :mod:`.images_only`, :mod:`.luo`,
:mod:`.bbbc038`).
"""

from __future__ import annotations

from synthesis.groundtruth.sources.base import (
    IMAGE_SUFFIXES,
    MIN_FOREGROUND_FRACTION,
    SPLIT_FRACTIONS,
    SPLITS,
    TILE,
    Item,
    Source,
    SourceError,
    assign_split,
    stack_items,
    tile_origins,
)
from synthesis.groundtruth.sources.base import _all_items as _all_items
from synthesis.groundtruth.sources.bbbc038 import BBBC038Source as BBBC038Source
from synthesis.groundtruth.sources.detect import open_source
from synthesis.groundtruth.sources.folder import FolderSource as FolderSource
from synthesis.groundtruth.sources.images_only import ImagesOnlySource as ImagesOnlySource
from synthesis.groundtruth.sources.luo import LuoSource as LuoSource
from synthesis.groundtruth.sources.procedural import ProceduralSource as ProceduralSource

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
    "stack_items",
    "tile_origins",
]

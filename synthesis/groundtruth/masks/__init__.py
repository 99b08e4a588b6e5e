"""Procedural ground-truth masks: ER networks, mitochondria and nuclei, seeded and batched.

The embedded default source of the benchmark: no download, exactly known ground truth.
Each row is a pure function of its seed. A layout (sites, paths, shapes: variable counts) is
drawn first on the CPU from a ``torch.Generator`` seeded with the row's seed ("sample"), then
all rows are rasterised together with tensor ops ("apply").

- **ER** (:mod:`.er`): the Voronoi diagram of a hard-core point process is a planar network
  whose vertices have degree three almost surely, like the three-way junctions of the
  peripheral ER; its cells are the polygonal loops. Site density rises towards the nucleus
  (perinuclear ER is denser), a smooth displacement field bends the tubules, a few edges are
  dropped (larger loops, free ends) and a few small cells near the nucleus are filled
  (small sheets). Tubules are drawn at their exact distance from the cell bisector.
- **Mitochondria**, two generators (``mito_masks``; the build's ``--mito-masks``):
  ``worms`` (:mod:`.mito`, the default): persistent random walks with smoothly varying
  curvature, swept by a disc of the object's width; some branched, some fragmented into
  short rods or round puncta, placed without overlap inside a cytoplasm region.
  ``cells`` (:mod:`.mito_cells`): one to three cells at Mito-C's stated pixel size
  (:data:`synthesis.levels.PIXEL_SIZE_UM`), each with a nucleus-shaped hole; networks of
  fusing, branching tubules packed around the nucleus and thinning outwards, fragments and
  puncta, and empty space between cells; with instance labels (connected objects).
- **Nuclei** (:mod:`.nucleus`): star-shaped ellipses with low-order harmonic irregularity,
  sizes and coverage drawn from the ranges measured on BBBC038 (``benchmarks/realism.py``
  prints them), clustered or spread; overlapping neighbours are split along the curve of
  equal normalised radius, so touching nuclei stay separate instances.

Shared helpers (per-row draws, smooth fields, stamping of shapes) are in :mod:`.common`. This
module holds the public API: the settings tables, :class:`MaskBatch` and the dispatcher
:func:`generate_masks`.

Streams of :mod:`synthesis.rng` used here: :data:`streams.ER_WARP` (the displacement field
that bends ER tubules). All other draws come from the per-row generator.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from synthesis.checks import check_seeds
from synthesis.groundtruth.masks.er import ERSettings, _er
from synthesis.groundtruth.masks.er import _er_layout as _er_layout
from synthesis.groundtruth.masks.mito import MitoSettings, _mito
from synthesis.groundtruth.masks.mito_cells import MitoCellsSettings, _mito_cells
from synthesis.groundtruth.masks.nucleus import NucleusSettings, _nuclei
from synthesis.levels import CONFIGS

__all__ = [
    "MASK_SETTINGS",
    "MITO_CELLS_SETTINGS",
    "MITO_MASKS",
    "STRUCTURES",
    "ERSettings",
    "MaskBatch",
    "MitoCellsSettings",
    "MitoSettings",
    "NucleusSettings",
    "generate_masks",
]

logger = logging.getLogger(__name__)

#: The structures masks are generated for, named as the dataset's configs.
STRUCTURES: tuple[str, ...] = CONFIGS

#: One settings table per structure, keyed by the dataset's config names.
MASK_SETTINGS: dict[str, ERSettings | MitoSettings | NucleusSettings] = {
    "er": ERSettings(),
    "mito": MitoSettings(),
    "nucleus": NucleusSettings(),
}

#: The generators of mito masks: ``worms`` (:mod:`.mito`, the default, whose settings are
#: ``MASK_SETTINGS["mito"]``) and ``cells`` (:mod:`.mito_cells`).
MITO_MASKS: tuple[str, ...] = ("worms", "cells")
#: The settings table of the ``cells`` generator.
MITO_CELLS_SETTINGS = MitoCellsSettings()


@dataclass
class MaskBatch:
    """Masks of one batch.

    Attributes:
        mask: ``(B, 1, H, W)`` bool, True on the structure.
        instances: ``(B, 1, H, W)`` int32 labels (0 = background, 1..N) for nuclei and for
            mito ``cells`` (its connected objects), else None.
        params: per row, the drawn generator parameters (JSON-serialisable), with the seed.
    """

    mask: Tensor
    instances: Tensor | None
    params: list[dict[str, Any]]


def generate_masks(
    structure: str,
    seeds: Tensor | int | list[int],
    *,
    size: int = 256,
    device: torch.device | str | None = None,
    mito_masks: str = "worms",
) -> MaskBatch:
    """Draw ``B`` procedural masks of ``structure``, row ``i`` a function of ``seeds[i]`` only.

    Args:
        structure: one of :data:`STRUCTURES`.
        seeds: ``(B,)`` int64 seeds (or an int for one row).
        size: image side in pixels (lengths in the settings are in pixels, not scaled).
        device: where the masks are rasterised; default: the device of ``seeds`` (or CPU).
        mito_masks: the mito generator, one of :data:`MITO_MASKS` (ignored for the other
            structures). ``cells`` rows record it in ``generator``
            (``procedural:mito:cells``) and their pixel size in ``pixel_size_um``.

    Returns:
        :class:`MaskBatch` with ``mask`` ``(B, 1, size, size)`` bool; every row has both
        foreground and background.

    Raises:
        ValueError: unknown structure or mito generator, ``size`` < 32, or bad seeds.

    Example:
        >>> out = generate_masks("mito", torch.tensor([1, 2]), size=64)
        >>> out.mask.shape, out.mask.dtype, out.instances is None
        (torch.Size([2, 1, 64, 64]), torch.bool, True)
    """
    if structure not in STRUCTURES:
        raise ValueError(f"structure must be one of {STRUCTURES}. Got {structure!r}")
    if mito_masks not in MITO_MASKS:
        raise ValueError(f"mito_masks must be one of {MITO_MASKS}. Got {mito_masks!r}")
    if not isinstance(size, int) or size < 32:
        raise ValueError(f"size must be an int >= 32. Got {size!r}")
    if device is None:
        device = seeds.device if isinstance(seeds, Tensor) else torch.device("cpu")
    seeds_t = torch.as_tensor(seeds)
    seeds_t = check_seeds(seeds_t, seeds_t.reshape(-1).shape[0], device=torch.device(device))
    seed_list = [int(s) for s in seeds_t.cpu().tolist()]
    settings = MASK_SETTINGS[structure]
    if structure == "er":
        mask, instances, params = _er(seed_list, seeds_t, size, settings)
    elif structure == "mito" and mito_masks == "cells":
        mask, instances, params = _mito_cells(seed_list, size, MITO_CELLS_SETTINGS, seeds_t.device)
    elif structure == "mito":
        mask, instances, params = _mito(seed_list, size, settings, seeds_t.device)
    else:
        mask, instances, params = _nuclei(seed_list, size, settings, seeds_t.device)
    fg = mask.flatten(1).sum(1)
    bad = torch.nonzero((fg == 0) | (fg == mask[0].numel())).flatten().tolist()
    if bad:  # the layouts guarantee both; this guards the guarantee
        raise RuntimeError(
            f"{structure} masks of seeds {[seed_list[i] for i in bad]} lack fg or bg"
        )
    generator = f"procedural:{structure}"
    if structure == "mito" and mito_masks != "worms":
        generator += f":{mito_masks}"
    for p, f, s in zip(params, (fg.float() / mask[0].numel()).tolist(), seed_list, strict=True):
        p["foreground_fraction"] = round(f, 5)
        p["mask_seed"] = s
        p["generator"] = generator
    return MaskBatch(mask=mask, instances=instances, params=params)


def settings_dict(structure: str, mito_masks: str = "worms") -> dict[str, Any]:
    """The settings table of ``structure`` (of mito's ``mito_masks`` generator) as a
    JSON-serialisable dict (for dataset cards)."""
    if structure not in STRUCTURES:
        raise ValueError(f"structure must be one of {STRUCTURES}. Got {structure!r}")
    if mito_masks not in MITO_MASKS:
        raise ValueError(f"mito_masks must be one of {MITO_MASKS}. Got {mito_masks!r}")
    if structure == "mito" and mito_masks == "cells":
        return asdict(MITO_CELLS_SETTINGS)
    return asdict(MASK_SETTINGS[structure])

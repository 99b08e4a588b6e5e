"""The procedural source: masks from the seeded generators of :mod:`synthesis.groundtruth.masks`."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch

from synthesis.groundtruth.masks import MITO_MASKS, generate_masks
from synthesis.groundtruth.sources.base import SPLITS, Item, Source, SourceError, _check_split
from synthesis.rng import derive_seed


class ProceduralSource(Source):
    """The seeded mask generators: ids ``<structure>-<split>-<index:05d>``; ``mito_masks``
    picks the mito generator (:data:`synthesis.groundtruth.masks.MITO_MASKS`)."""

    has_real_images = False

    def __init__(
        self,
        structure: str,
        *,
        seed: int,
        counts: dict[str, int | None],
        mito_masks: str = "worms",
    ) -> None:
        if mito_masks not in MITO_MASKS:
            raise SourceError(f"mito_masks must be one of {MITO_MASKS}. Got {mito_masks!r}")
        self.structure = structure
        self.mito_masks = mito_masks
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
        batch = generate_masks(self.structure, seeds, mito_masks=self.mito_masks)
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
        out: dict[str, Any] = {
            "kind": "procedural",
            "path": None,
            "structure": self.structure,
            "seed": self.seed,
            "counts": dict(self.counts),
            "skipped": {},
        }
        if self.structure == "mito" and self.mito_masks != "worms":  # the default adds nothing
            out["mito_masks"] = self.mito_masks
        return out

"""Toy data shared by the tests (and by ``benchmarks/same_bytes.py``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from synthesis import rng


def toy_data(n: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer ADU images of 1-3 bright disks (contrast 300 ADU, noise sigma 150 ADU)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    cy, cx = (torch.rand(n, 3, 1, 1, generator=g) * size for _ in range(2))
    r = 2 + torch.rand(n, 3, 1, 1, generator=g) * size / 6
    mask = (((yy - cy) ** 2 + (xx - cx) ** 2) < r**2).any(1, keepdim=True)
    noise = rng.normal(torch.arange(n) + 1000 * seed, (1, size, size), stream=7)
    adu = torch.round(200 + 300 * mask.float() + 150 * noise).clamp(0, 65535)
    return adu, mask


def disc_source(
    root: Path,
    n: int = 12,
    *,
    seed: int = 0,
    levels: tuple[float, float] = (6.0, 60.0),
    noise: Callable[[int], float] = lambda i: 1.5,
    discs: int = 8,
    radius: tuple[int, int] = (8, 20),
) -> Path:
    """A folder source (images/ + masks/): n 8-bit 256x256 images of bright discs
    (background, disc levels ``levels``; image ``i`` has Gaussian noise of sd ``noise(i)``).
    The real pairs a tiny GAN learns (also used by ``benchmarks/same_bytes.py``), and real
    tiles of known noise for the real-image splits."""
    rs = np.random.Generator(np.random.PCG64(seed))
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:256, :256]
    for i in range(n):
        mask = np.zeros((256, 256), bool)
        for _ in range(discs):
            cy, cx = rs.integers(20, 236, 2)
            mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= rs.integers(*radius) ** 2
        img = np.where(mask, levels[1], levels[0]) + rs.normal(0, noise(i), mask.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
            root / "images" / f"img{i:02d}.png"
        )
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"img{i:02d}.png")
    return root

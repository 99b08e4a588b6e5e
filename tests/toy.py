"""Toy segmentation data shared by the model-side tests."""

from __future__ import annotations

import torch

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

"""The GAN renderer: mask -> pix2pix generator -> denoiser -> noise-free image.

It has the interface of the physics renderer (:mod:`synthesis.render.physics`)::

    renderer = GanRenderer.from_weights("weights/", "nucleus", device="cpu")
    result = renderer(mask, seeds, "nucleus")   # result.image (B, 1, H, W), result.params

A weights folder holds ``<structure>-pix2pix.safetensors`` (the generator) and, optionally,
``<structure>-denoiser.safetensors`` (written by ``fluorobench-c train-synthesizer``). No
weights ship with the package: the folder is always given (``build --weights DIR``).

The image is the denoised generator output in normalised units (foreground mean ~0.4 of a
[0, 1] range, :data:`synthesis.models.pix2pix.FG_LEVEL`) times :data:`IMAGE_SCALE`, floored at
:data:`MIN_VALUE` so the background mean is > 0 as the noise model needs. Every row's params
name the generator and denoiser files and their sha256, and the row's seed: the image is a
pure function of (mask, seed, weights) on a given device (the noise input comes from
:func:`synthesis.rng.normal`, batch norm runs on its stored statistics, dropout is off).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from synthesis.checks import check_seeds
from synthesis.models.pix2pix import (
    UNetGenerator,
    generator_input,
    load_weights,
    to_unit,
)
from synthesis.render.denoise import denoise, residual_noise
from synthesis.rng import streams
from synthesis.runtime.files import sha256_file
from synthesis.thread_invariant import model_threads

__all__ = [
    "IMAGE_SCALE",
    "MIN_VALUE",
    "GanRenderResult",
    "GanRenderer",
    "weight_files",
]

logger = logging.getLogger(__name__)

#: Normalised [0, 1] intensities are stored on a 16-bit range.
IMAGE_SCALE: float = 65535.0
#: Floor of the output (image units): keeps the background mean > 0.
MIN_VALUE: float = 1.0


@dataclass
class GanRenderResult:
    """``image``: ``(B, 1, H, W)`` float32 >= 0, noise-free; ``params``: one dict per row."""

    image: Tensor
    params: list[dict[str, Any]]


def weight_files(folder: str | os.PathLike[str], structure: str) -> tuple[Path, Path | None]:
    """``(generator file, denoiser file or None)`` of ``structure`` in ``folder``.

    ``folder`` may also be the generator file itself (its denoiser is looked up beside it).

    Raises:
        FileNotFoundError: no generator file for ``structure``.
    """
    p = Path(folder)
    if p.is_file():
        gen = p
        den = p.with_name(p.name.replace("-pix2pix", "-denoiser"))
    else:
        gen = p / f"{structure}-pix2pix.safetensors"
        den = p / f"{structure}-denoiser.safetensors"
    if not gen.is_file():
        raise FileNotFoundError(
            f"no generator weights for {structure!r}: expected {gen} (train them with "
            f"'fluorobench-c train-synthesizer --config {structure} ...'). Got no such file"
        )
    return gen, den if den.is_file() and den != gen else None


class GanRenderer:
    """Render noise-free images from masks with a trained generator (and denoiser).

    Args:
        generator: the trained :class:`synthesis.models.pix2pix.UNetGenerator`.
        structure: the config it was trained for (``er``, ``mito``, ``nucleus``).
        denoiser: optional one-channel :class:`UNetGenerator` trained noisy -> clean.
        info: provenance stored in every row's params (file names, sha256).
        batch_size: rows per forward pass.
    """

    def __init__(
        self,
        generator: UNetGenerator,
        structure: str,
        *,
        denoiser: UNetGenerator | None = None,
        info: dict[str, Any] | None = None,
        batch_size: int = 8,
    ) -> None:
        self.generator = generator.eval()
        self.denoiser = denoiser.eval() if denoiser is not None else None
        self.structure = structure
        self.info = dict(info or {})
        self.batch_size = batch_size

    @classmethod
    def from_weights(
        cls,
        path_or_dir: str | os.PathLike[str],
        structure: str,
        device: torch.device | str = "cpu",
    ) -> GanRenderer:
        """Load ``<structure>-pix2pix.safetensors`` (+ ``-denoiser``) from a folder or file.

        Raises:
            FileNotFoundError: no generator for ``structure`` there.
            ValueError: a file that is not a generator of the expected kind.
        """
        gen_path, den_path = weight_files(path_or_dir, structure)
        gen, meta = load_weights(gen_path, device=device)
        if not isinstance(gen, UNetGenerator) or gen.out_channels != 1:
            raise ValueError(
                f"{gen_path} must hold a one-channel UNetGenerator. Got {type(gen).__name__}"
            )
        trained_for = meta.get("structure")
        if trained_for is not None and trained_for != structure:
            raise ValueError(
                f"{gen_path} was trained for {trained_for!r}, not {structure!r}. Got a mismatch"
            )
        info: dict[str, Any] = {
            "generator": gen_path.name,
            "generator_sha256": sha256_file(gen_path),
            "denoiser": None,
            "denoiser_sha256": None,
        }
        den = None
        if den_path is not None:
            den, _ = load_weights(den_path, device=device)
            if not isinstance(den, UNetGenerator) or den.in_channels != 1:
                raise ValueError(f"{den_path} must hold a one-channel UNetGenerator denoiser")
            info.update(denoiser=den_path.name, denoiser_sha256=sha256_file(den_path))
        else:
            logger.warning(
                "%s: no denoiser beside the generator; images keep the GAN's noise", gen_path
            )
        return cls(gen, structure, denoiser=den, info=info)

    @torch.no_grad()
    def render_unit(self, mask: Tensor, seeds: Tensor) -> tuple[Tensor, Tensor]:
        """``(generated, denoised)`` normalised images in [0, 1], each ``(B, 1, H, W)``."""
        device = next(self.generator.parameters()).device
        mask = mask.to(device)
        seeds = seeds.to(device)
        gens = []
        with model_threads(device):  # oneDNN's bits follow the thread count
            for m, s in zip(mask.split(self.batch_size), seeds.split(self.batch_size), strict=True):
                x = generator_input(m, s, self.generator.noise_channels)
                gens.append(to_unit(self.generator(x)))
            raw = torch.cat(gens)
            clean = (
                denoise(raw, self.denoiser, batch_size=self.batch_size) if self.denoiser else raw
            )
        return raw, clean

    def __call__(
        self, mask: Tensor, seeds: Tensor, structure: str, *, instances: Tensor | None = None
    ) -> GanRenderResult:
        """Render ``(B, 1, H, W)`` bool masks with per-row seeds ``(B,)`` int64.

        ``instances`` is accepted for interface compatibility and ignored (the generator is
        conditioned on the binary mask only).

        Raises:
            ValueError: another structure than the one the weights were loaded for, or bad
                mask / seeds.
        """
        if structure != self.structure:
            raise ValueError(
                f"this GanRenderer holds the {self.structure!r} generator. Got structure {structure!r}"
            )
        if not isinstance(mask, Tensor) or mask.dim() != 4 or mask.shape[1] != 1:
            raise ValueError(
                f"mask must be a (B, 1, H, W) tensor. Got {getattr(mask, 'shape', mask)}"
            )
        out_device = mask.device
        seeds = check_seeds(seeds, mask.shape[0], out_device)
        raw, clean = self.render_unit(mask != 0, seeds)
        image = (clean * IMAGE_SCALE).clamp_min_(MIN_VALUE).to(out_device)
        fg = mask.bool().to(image.device)
        has_both = bool(fg.flatten(1).any(1).all()) and bool((~fg).flatten(1).any(1).all())
        # What the denoiser left, relative to the contrast (see synthesis.render.denoise).
        stats = residual_noise(clean, fg.to(clean.device)) if has_both else None
        params = []
        for i in range(mask.shape[0]):
            p = {
                "renderer": "gan",
                "structure": self.structure,
                **self.info,
                "seed": int(seeds[i]),
                "noise_stream": streams.GAN_INPUT,
                "image_scale": IMAGE_SCALE,
                "min_value": MIN_VALUE,
            }
            if stats is not None:
                p["residual_rel_noise"] = float(stats["rel_total"][i])
            params.append(p)
        return GanRenderResult(image=image, params=params)

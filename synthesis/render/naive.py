"""The naive renderer: the mask, blurred by a Gaussian PSF, and nothing else.

The baseline every realism claim is measured against (``benchmarks/fidelity.py``,
``benchmarks/realism.py``): no texture, no per-object brightness, no background, no haze.
Noise is added afterwards by the camera, like for every renderer, so a "naive" split is
mask + blur + exact Poisson-Gaussian noise at the split's SNR.
"""

from __future__ import annotations

from torch import Tensor

from synthesis.checks import check_seeds
from synthesis.filters.gaussian import gaussian_blur
from synthesis.render.physics import RenderResult

__all__ = ["NAIVE_PSF_PX", "NAIVE_SCALE", "render"]

#: PSF sigma (px) of the naive rendering.
NAIVE_PSF_PX = 1.5
#: Image units of the mask's interior (the camera solves the exposure, so the scale only
#: sets the units, as for the other renderers).
NAIVE_SCALE = 1000.0


def render(
    mask: Tensor, seeds: Tensor | int, structure: str, *, instances: Tensor | None = None
) -> RenderResult:
    """``NAIVE_SCALE * blur(mask, NAIVE_PSF_PX)``: ``(B, 1, H, W)`` float32, same signature
    as :func:`synthesis.render.physics.render` (``seeds``, ``structure`` and ``instances``
    are accepted and unused: the rendering draws nothing)."""
    check_seeds(seeds, mask.shape[0], mask.device)
    image = gaussian_blur(mask.float(), NAIVE_PSF_PX) * NAIVE_SCALE
    params = {"renderer": "naive", "psf_sigma_px": NAIVE_PSF_PX, "scale": NAIVE_SCALE}
    return RenderResult(image=image, params=[dict(params) for _ in range(mask.shape[0])])

"""Optical blur: Gaussian PSFs, space-invariant (SIB) and space-variant (SVB).

Definitions (``docs/definitions.md#blur``):

* **SIB**: a Gaussian PSF of ``sigma = SIB_SIGMA_PX[level]`` (1..5 px), sampled on the pixel
  grid out to ``truncate`` sigmas (scipy's convention: radius ``int(truncate * sigma + 0.5)``),
  normalised to sum 1, applied with symmetric ("reflect") boundaries: the image continues as
  its mirror image about its edge (``d c b a | a b c d``, scipy's ``mode="reflect"``). With
  that boundary the blur preserves the total flux exactly (the mirrored image is periodic and
  symmetric, so each period keeps its sum).
* **SVB** (field curvature): the PSF at a source pixel ``p`` is a Gaussian of
  ``sigma(r) = sigma_c + (sigma_L - sigma_c) (r / r_max)^2``, ``r`` the distance of ``p`` from
  the field centre ``((H-1)/2, (W-1)/2)``, ``r_max`` that of a corner pixel, ``sigma_L`` the SIB
  sigma of the level. It is computed as the flux-preserving basis (Nagy & O'Leary 1998;
  Denis et al. 2015) ``y = sum_k h_k * (w_k x)`` over ``K`` rings: ``h_k`` Gaussians of
  ``sigma_k = sigma_c (sigma_L / sigma_c)^(k / (K - 1))`` (geometric nodes) and ``w_k`` a
  partition of unity (``sum_k w_k = 1`` at every pixel): piecewise-linear "hat" functions of
  ``log sigma(r)`` between neighbouring nodes. Each source pixel spreads its flux with a
  mixture of the two Gaussians whose widths bracket its own, and every ``h_k`` sums to 1, so
  the total flux is preserved (it is not a blend of blurred outputs). Against the exact
  per-pixel convolution (:func:`space_variant_blur_exact`), at 256x256 and corner sigma
  5 px, the RMS error relative to the change the blur makes is 4.2% for K = 4, 1.6% for
  K = 6 (the benchmark's ``SVB.rings``) and 0.8% for K = 8; even node spacing was ~3x worse
  at equal K, and hats in ``sigma^2`` (exact mixture variance) ~2x worse on point sources.
  A flux-preserving space-variant blur does not keep a constant image exactly constant:
  where the PSF widens it moves flux by ~(1/2) laplacian of ``sigma^2`` (exact operator,
  level 5: 0.3% inside a 32 px margin, 5% at the corners; the basis with K = 6: 0.9%, 4.5%).
  Each ring is blurred only on the bounding boxes of its support per image quadrant.

Implementation: each 1-D pass is a sum of ``2 r + 1`` shifted, weighted slices of a padded
block of images (one in-place multiply-add per tap), far faster than ``conv2d`` (im2col) or
banded matrix products, whose skinny GEMMs reached only 8-12 GMAC/s here. On CPU (float32 and
float64, outside autograd) a compiled kernel computes exactly these operations, in the same
order and with the same roundings, image groups and bands at a time in cache, and skips the
zeros of the SVB ring weights (see "compiled CPU path" below: the same bytes as the torch ops,
whatever the threads, the batch or the instruction set); other devices run the torch ops, on
blocks of ~1 MB on CPU. Past a radius of :data:`FFT_MIN_RADIUS_PX` the cost of the taps
exceeds that of an FFT of the padded block, which is used instead (same kernel, same
boundary; the two paths agree to float32 rounding).

No randomness is used here.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numba
import numpy as np
import torch
from llvmlite import ir
from numba.core import types as nb_types
from numba.extending import intrinsic
from torch import Tensor

from synthesis.checks import check_images, per_sample
from synthesis.levels import SIB_SIGMA_PX, SVB
from synthesis.rng.kernels import launch

__all__ = [
    "DEFAULT_TRUNCATE",
    "FFT_MIN_RADIUS_PX",
    "PSF_KINDS",
    "gaussian_blur",
    "gaussian_kernel1d",
    "psf_params",
    "sib",
    "space_variant_blur",
    "space_variant_blur_exact",
    "svb",
    "svb_ring_sigmas",
    "svb_sigma_map",
    "svb_weights",
]

#: Kernel half-width in sigmas (scipy's default).
DEFAULT_TRUNCATE: float = 4.0
#: ``kind`` values of :func:`psf_params`, as stored per row.
PSF_KINDS: tuple[str, ...] = ("none", "gaussian", "space_variant_gaussian")
#: Kernel radius (px) from which the FFT path replaces the direct taps. Measured on 4 images
#: of 256x256, one core: taps 2x faster at r = 20 (sigma 5), FFT 1.7x faster at r = 40.
FFT_MIN_RADIUS_PX: int = 32

# Elements per block of the torch ops on CPU (only where the compiled kernel does not run:
# other dtypes, autograd). ~1 MB of float32, so a block and its padded copy fit in L2.
_BLOCK_ELEMS = 1 << 18
# SVB: 2**19 (chosen on an AMD EPYC) made each op's block and padded copy (~4 MB) leave the
# 2 MB L2 of an Intel Xeon core: 148 ms for 64 images of 256x256 at K = 4 on one thread,
# against 94 ms at 2**18 and 68 ms at 2**17 (issue 21).
_SVB_BLOCK_ELEMS = 1 << 17


def _radius(sigma: float, truncate: float) -> int:
    return int(truncate * sigma + 0.5)


def gaussian_taps(
    sigma: Tensor, radius: int, *, cut: Tensor | None = None, sigma_floor: float | None = None
) -> Tensor:
    """The one Gaussian kernel factory: ``(B, 2 radius + 1)`` sampled, normalised 1-D
    Gaussians, one per ``sigma`` (``(B,)``, computed in its dtype).

    Args:
        sigma: standard deviations in pixels, ``(B,)``.
        radius: taps on each side of the centre (the kernels' common width).
        cut: optional ``(B,)`` per-row half-width: taps beyond it are zero (a row's kernel
            then does not depend on the widest sigma of its batch).
        sigma_floor: optional lower bound on sigma (a zero sigma then gives a delta).

    Every Gaussian of the package (PSFs, renderer textures and fields, the denoiser's noise
    and texture models) comes from here; callers differ only in radius and cut-off.

    Example:
        >>> k = gaussian_taps(torch.tensor([1.0, 2.0], dtype=torch.float64), 4)
        >>> k.shape, [round(float(v), 6) for v in k.sum(1)]
        (torch.Size([2, 9]), [1.0, 1.0])
    """
    t = torch.arange(-radius, radius + 1, dtype=sigma.dtype, device=sigma.device)
    s = sigma if sigma_floor is None else sigma.clamp_min(sigma_floor)
    k = torch.exp(-0.5 * (t[None, :] / s[:, None]) ** 2)
    if cut is not None:
        k = k * (t[None, :].abs() <= cut[:, None])
    return k / k.sum(1, keepdim=True)


def gaussian_kernel1d(
    sigma_px: float,
    *,
    truncate: float = DEFAULT_TRUNCATE,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """A sampled, normalised 1-D Gaussian of ``2 r + 1`` taps, ``r = int(truncate sigma + 0.5)``.

    Args:
        sigma_px: standard deviation in pixels (>= 0; 0 gives the identity ``[1.0]``).
        truncate: half-width in sigmas (> 0).
        device, dtype: of the result.

    Returns:
        ``(2 r + 1,)`` tensor summing to 1 (computed in float64, then cast).

    Raises:
        ValueError: negative or non-finite sigma, non-positive truncate.

    Example:
        >>> k = gaussian_kernel1d(1.0)
        >>> k.shape, round(float(k.sum()), 6), bool(k[4] == k.max())
        (torch.Size([9]), 1.0, True)
    """
    sigma_px = float(sigma_px)
    if not math.isfinite(sigma_px) or sigma_px < 0:
        raise ValueError(f"sigma_px must be finite and >= 0. Got {sigma_px}")
    if not truncate > 0:
        raise ValueError(f"truncate must be > 0. Got {truncate}")
    r = _radius(sigma_px, truncate)
    if r == 0 or sigma_px == 0:
        return torch.ones(1, dtype=dtype, device=device)
    k = gaussian_taps(torch.tensor([sigma_px], dtype=torch.float64), r)[0]
    return k.to(dtype=dtype, device=device)


def gaussian_blur(
    x: Tensor, sigma_px: float | Tensor, *, truncate: float = DEFAULT_TRUNCATE
) -> Tensor:
    """Space-invariant Gaussian blur (SIB) with symmetric boundaries, per-sample sigma.

    Args:
        x: images, float ``(B, 1, H, W)``, on any device. Any size: kernels wider than the
            image fold back at the edges again and again (the mirrored image is periodic).
        sigma_px: PSF sigma in pixels, a scalar or ``(B,)`` (>= 0; 0 leaves an image as is).
        truncate: kernel half-width in sigmas.

    Returns:
        Blurred images, same shape, dtype and device; each keeps its total flux.

    Raises:
        TypeError: ``x`` not a float tensor.
        ValueError: wrong shape, non-finite values, negative sigma.

    Example:
        >>> x = torch.zeros(2, 1, 32, 32); x[:, :, 16, 16] = 1.0
        >>> y = gaussian_blur(x, torch.tensor([1.0, 3.0]))
        >>> [round(float(v), 5) for v in y.sum((1, 2, 3))]
        [1.0, 1.0]
    """
    x = check_images(x, "x", nonnegative=False)
    sigma = per_sample(sigma_px, x.shape[0], "sigma_px", dtype=torch.float64, nonnegative=True)
    return _blur_grouped(x, sigma.tolist(), truncate)


def _blur_grouped(x: Tensor, sigmas: list[float], truncate: float) -> Tensor:
    """Blur ``x`` sample by sample with ``sigmas``, one batched pass per distinct sigma."""
    distinct = sorted(set(sigmas))
    if len(distinct) == 1:
        return _blur_same(x, distinct[0], truncate)
    out = torch.empty_like(x)
    for s in distinct:
        idx = torch.tensor([i for i, v in enumerate(sigmas) if v == s], device=x.device)
        out.index_copy_(0, idx, _blur_same(x.index_select(0, idx), s, truncate))
    return out


def _blur_same(x: Tensor, sigma: float, truncate: float) -> Tensor:
    """Blur all of ``x`` (``(B, 1, H, W)``) with one sigma: the compiled kernel on CPU, else
    torch ops in cache-sized blocks."""
    k = gaussian_kernel1d(sigma, truncate=truncate, dtype=torch.float64)
    r = (k.numel() - 1) // 2
    b, _, h, w = x.shape
    if _compiled(x, r):
        tables = _sib_tables(h, w, tuple(k.tolist()), _np_dtype(x))
        return _run_compiled(x, tables, sparse=False)
    step = max(1, _BLOCK_ELEMS // ((h + 2 * r) * (w + 2 * r)))
    if x.device.type != "cpu" or step >= b or r >= FFT_MIN_RADIUS_PX:
        return _blur_kernel(x, k)
    out = torch.empty_like(x)
    for i in range(0, b, step):
        out[i : i + step] = _blur_kernel(x[i : i + step], k)
    return out


def _blur_kernel(x: Tensor, k: Tensor) -> Tensor:
    """Separable blur of ``x`` with the 1-D kernel ``k`` (float64, odd length) on both axes."""
    r = (k.numel() - 1) // 2
    if r == 0:
        return x * float(k[0])
    if r >= FFT_MIN_RADIUS_PX:
        return _blur_fft(x, k)
    return _blur_taps(x, k.tolist())


def _pad_symmetric(x: Tensor, r: int, dim: int) -> Tensor:
    """Pad ``dim`` by ``r`` on both sides with the mirror image (``d c b a | a b c d``)."""
    n = x.shape[dim]
    if r <= n:
        lo = x.narrow(dim, 0, r).flip(dim)
        hi = x.narrow(dim, n - r, r).flip(dim)
        return torch.cat([lo, x, hi], dim)
    return x.index_select(dim, _symmetric_index(n, -r, n + r, x.device))


def _symmetric_index(n: int, lo: int, hi: int, device: torch.device) -> Tensor:
    """Source index of positions ``lo..hi-1`` under repeated mirroring of ``0..n-1``."""
    m = torch.remainder(torch.arange(lo, hi, device=device), 2 * n)
    return torch.where(m >= n, 2 * n - 1 - m, m)


def _blur_taps(x: Tensor, taps: list[float]) -> Tensor:
    """Separable blur by shifted slices: ``2 r + 1`` multiply-adds per axis."""
    r = (len(taps) - 1) // 2
    h, w = x.shape[-2:]
    p = _pad_symmetric(x, r, -1)
    y = p[..., 0:w] * taps[0]
    for j in range(1, len(taps)):
        y.add_(p[..., j : j + w], alpha=taps[j])
    p = _pad_symmetric(y, r, -2)
    z = p[..., 0:h, :] * taps[0]
    for j in range(1, len(taps)):
        z.add_(p[..., j : j + h, :], alpha=taps[j])
    return z


def _blur_fft(x: Tensor, k: Tensor) -> Tensor:
    """Separable blur by FFT of the symmetrically padded images (no circular wrap-around)."""
    r = (k.numel() - 1) // 2
    h, w = x.shape[-2:]
    p = _pad_symmetric(_pad_symmetric(x, r, -1), r, -2)
    hp, wp = p.shape[-2:]
    # Kernel centred at index 0 of a length-n circular buffer: output i sums inputs i-r..i+r.
    kh = torch.zeros(hp, dtype=torch.float64, device=x.device)
    kw = torch.zeros(wp, dtype=torch.float64, device=x.device)
    kd = k.to(x.device)
    kh[torch.arange(-r, r + 1, device=x.device) % hp] = kd
    kw[torch.arange(-r, r + 1, device=x.device) % wp] = kd
    transfer = torch.fft.fft(kh)[:, None] * torch.fft.rfft(kw)[None, :]
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    transfer = transfer.to(torch.complex128 if work == torch.float64 else torch.complex64)
    out = torch.empty_like(x)
    # One image per transform: batched 1-D FFTs vectorise across rows and round differently
    # with the number of rows (seen on CPU, torch 2.13), which would tie an image to its batch.
    for i in range(x.shape[0]):
        spec = torch.fft.rfft2(p[i].to(work)) * transfer
        out[i] = torch.fft.irfft2(spec, s=(hp, wp))[..., r : r + h, r : r + w].to(x.dtype)
    return out


# --- space-variant blur -------------------------------------------------------------------


def svb_sigma_map(
    h: int,
    w: int,
    sigma_edge_px: float,
    *,
    sigma_center_px: float = SVB.sigma_center_px,
    device: torch.device | str | None = None,
) -> Tensor:
    """``sigma(r) = c + (L - c) (r / r_max)^2`` at each pixel, float64 ``(H, W)``.

    ``r`` is the distance from the field centre ``((H-1)/2, (W-1)/2)`` and ``r_max`` that of a
    corner pixel (a 1x1 image has sigma_center everywhere).
    """
    yy = torch.arange(h, dtype=torch.float64, device=device) - (h - 1) / 2
    xx = torch.arange(w, dtype=torch.float64, device=device) - (w - 1) / 2
    r2 = yy[:, None] ** 2 + xx[None, :] ** 2
    r2max = ((h - 1) / 2) ** 2 + ((w - 1) / 2) ** 2
    t = r2 / r2max if r2max > 0 else torch.zeros_like(r2)
    return sigma_center_px + (sigma_edge_px - sigma_center_px) * t


def svb_ring_sigmas(sigma_edge_px: float, rings: int, sigma_center_px: float) -> list[float]:
    """Node sigmas ``sigma_k`` of the K rings, from the centre's to the edge's.

    Evenly spaced in ``log(sigma)`` (a geometric series) when both ends are > 0, else evenly
    spaced in sigma. Geometric nodes are denser where the PSF is narrow, where a mixture of
    two Gaussians of different widths differs most from the Gaussian between them: at equal
    K they cut the error against the exact convolution ~3x compared with even spacing (see
    the module docstring), and the extra rings are cheap (narrow kernels).
    """
    a, b = float(sigma_center_px), float(sigma_edge_px)
    if a > 0 and b > 0:
        return [a * (b / a) ** (k / (rings - 1)) for k in range(rings)]
    return [a + (b - a) * k / (rings - 1) for k in range(rings)]


def svb_weights(sigma_map: Tensor, ring_sigmas: list[float]) -> Tensor:
    """Partition of unity ``(K, H, W)``: hat functions of ``log(sigma)`` between the nodes.

    A pixel whose PSF sigma lies between ``sigma_k`` and ``sigma_{k+1}`` gets weight on those
    two rings only, linear in ``log(sigma)`` (in sigma when a node is 0), and the weights
    sum to 1 at every pixel.
    """
    nodes = torch.tensor(ring_sigmas, dtype=torch.float64, device=sigma_map.device)
    v = sigma_map.double()
    if bool((nodes > 0).all()) and bool((v > 0).all()):
        nodes, v = nodes.log(), v.log()
    if nodes[0] > nodes[-1]:  # sharper at the edge than at the centre: same hats, mirrored
        nodes, v = -nodes, -v
    k = nodes.numel()
    out = torch.zeros((k, *v.shape), dtype=torch.float64, device=v.device)
    if k == 1 or float(nodes[-1] - nodes[0]) == 0.0:
        out[0] = 1.0
        return out
    v = v.clamp(min=float(nodes[0]), max=float(nodes[-1]))
    # Interval of each pixel: nodes[i] <= v <= nodes[i + 1]; weight f on the upper node.
    i = (torch.searchsorted(nodes, v.flatten(), right=True) - 1).clamp(0, k - 2).reshape(v.shape)
    lo, hi = nodes[i], nodes[i + 1]
    f = (v - lo) / (hi - lo)
    out.scatter_(0, i[None], (1 - f)[None])
    out.scatter_add_(0, (i + 1)[None], f[None])
    return out


def space_variant_blur(
    x: Tensor,
    sigma_edge_px: float | Tensor,
    *,
    sigma_center_px: float = SVB.sigma_center_px,
    rings: int = SVB.rings,
    truncate: float = DEFAULT_TRUNCATE,
) -> Tensor:
    """Space-variant Gaussian blur (SVB): ``sum_k h_k * (w_k x)`` over ``rings`` rings.

    Args:
        x: images, float ``(B, 1, H, W)``, on any device.
        sigma_edge_px: PSF sigma at the field corners, a scalar or ``(B,)`` (>= 0).
        sigma_center_px: PSF sigma at the field centre (>= 0).
        rings: number K of basis PSFs (>= 2; the benchmark uses ``SVB.rings``).
        truncate: kernel half-width in sigmas.

    Returns:
        Blurred images, same shape, dtype and device; each keeps its total flux.

    Raises:
        TypeError: ``x`` not a float tensor.
        ValueError: wrong shape, non-finite values, negative sigmas, ``rings`` < 2.

    Example:
        >>> x = torch.zeros(1, 1, 64, 64); x[0, 0, ::8, ::8] = 1.0
        >>> y = space_variant_blur(x, 3.0, rings=4)
        >>> round(float(y.sum()), 3), float(y[0, 0, 32, 32]) > float(y[0, 0, 0, 0])
        (64.0, True)
    """
    x = check_images(x, "x", nonnegative=False)
    b, _, h, w = x.shape
    sigma = per_sample(sigma_edge_px, b, "sigma_edge_px", dtype=torch.float64, nonnegative=True)
    if not (isinstance(rings, int) and rings >= 2):
        raise ValueError(f"rings must be an int >= 2. Got {rings!r}")
    if not (math.isfinite(sigma_center_px) and sigma_center_px >= 0):
        raise ValueError(f"sigma_center_px must be finite and >= 0. Got {sigma_center_px}")
    return _svb_grouped(x, sigma.tolist(), sigma_center_px, rings, truncate)


def _svb_grouped(
    x: Tensor, sigmas: list[float], sigma_center: float, rings: int, truncate: float
) -> Tensor:
    """SVB of checked images, sample by sample, one batched pass per distinct corner sigma."""
    distinct = sorted(set(sigmas))
    if len(distinct) == 1:
        return _svb_same(x, distinct[0], sigma_center, rings, truncate)
    out = torch.empty_like(x)
    for s in distinct:
        idx = torch.tensor([i for i, v in enumerate(sigmas) if v == s], device=x.device)
        sub = _svb_same(x.index_select(0, idx), s, sigma_center, rings, truncate)
        out.index_copy_(0, idx, sub)
    return out


def _svb_same(
    x: Tensor, sigma_edge: float, sigma_center: float, rings: int, truncate: float
) -> Tensor:
    b, _, h, w = x.shape
    plan = _svb_plan(h, w, sigma_edge, sigma_center, rings, truncate, str(x.device), x.dtype)
    if _compiled(x, max(((k.numel() - 1) // 2 for k, _ in plan), default=0), sib=False):
        tables = _svb_tables(h, w, sigma_edge, sigma_center, rings, truncate, x.dtype)
        return _run_compiled(x, tables, sparse=True)
    if x.device.type != "cpu":
        return _svb_apply(x, plan)
    step = max(1, _SVB_BLOCK_ELEMS // (h * w))
    if step >= b:
        return _svb_apply(x, plan)
    out = torch.empty_like(x)
    for i in range(0, b, step):
        out[i : i + step] = _svb_apply(x[i : i + step], plan)
    return out


@dataclass(frozen=True)
class _Crop:
    """A rectangle of the image holding (part of) a ring's support, dilated by its radius."""

    y0: int
    y1: int
    x0: int
    x1: int
    weight: Tensor  # (y1 - y0, x1 - x0): the ring weight inside this rectangle


@functools.lru_cache(maxsize=64)
def _svb_plan(
    h: int,
    w: int,
    sigma_edge: float,
    sigma_center: float,
    rings: int,
    truncate: float,
    device: str,
    dtype: torch.dtype,
) -> tuple[tuple[Tensor, tuple[_Crop, ...]], ...]:
    """Per ring: its kernel and the rectangles where ``h_k * (w_k x)`` can be non-zero.

    Each ring's weight is zero outside an annulus, so its blur is computed only on the
    bounding boxes of the support in each image quadrant, dilated by the kernel radius (the
    outer ring lives in the four corners, the inner ones around the centre): on 256x256 this
    halves the work. Inside a box the input is zero within a radius of any edge that is not
    an image edge, so symmetric padding of the box is exact there too.
    """
    ring_sigmas = svb_ring_sigmas(sigma_edge, rings, sigma_center)
    weights = svb_weights(
        svb_sigma_map(h, w, sigma_edge, sigma_center_px=sigma_center), ring_sigmas
    )
    quadrants = [
        (y0, y1, x0, x1)
        for y0, y1 in ((0, h // 2), (h // 2, h))
        for x0, x1 in ((0, w // 2), (w // 2, w))
        if y1 > y0 and x1 > x0
    ]
    plan = []
    for k, sigma in enumerate(ring_sigmas):
        kernel = gaussian_kernel1d(sigma, truncate=truncate, dtype=torch.float64)
        r = (kernel.numel() - 1) // 2
        wk = weights[k]
        crops = []
        for qy0, qy1, qx0, qx1 in quadrants:
            part = torch.zeros_like(wk)
            part[qy0:qy1, qx0:qx1] = wk[qy0:qy1, qx0:qx1]
            box = _dilated_box(part, r)
            if box is not None:
                crops.append((box, part))
        if not crops:
            continue
        area = sum((y1 - y0) * (x1 - x0) for (y0, y1, x0, x1), _ in crops)
        y0, y1, x0, x1 = box = _dilated_box(wk, r)
        if (y1 - y0) * (x1 - x0) <= 1.2 * area:  # one box costs less than four small ones
            crops = [(box, wk)]
        plan.append(
            (
                kernel,
                tuple(
                    _Crop(y0, y1, x0, x1, part[y0:y1, x0:x1].to(device=device, dtype=dtype))
                    for (y0, y1, x0, x1), part in crops
                ),
            )
        )
    return tuple(plan)


def _dilated_box(weight: Tensor, r: int) -> tuple[int, int, int, int] | None:
    """Bounding box of ``weight > 0`` grown by ``r`` and clipped to the image, or None."""
    rows = torch.nonzero(weight.gt(0).any(1)).flatten()
    cols = torch.nonzero(weight.gt(0).any(0)).flatten()
    if rows.numel() == 0:
        return None
    h, w = weight.shape
    return (
        max(0, int(rows[0]) - r),
        min(h, int(rows[-1]) + 1 + r),
        max(0, int(cols[0]) - r),
        min(w, int(cols[-1]) + 1 + r),
    )


def _svb_apply(x: Tensor, plan: tuple[tuple[Tensor, tuple[_Crop, ...]], ...]) -> Tensor:
    out = torch.zeros_like(x)
    for kernel, crops in plan:
        for c in crops:
            sub = x[..., c.y0 : c.y1, c.x0 : c.x1] * c.weight
            out[..., c.y0 : c.y1, c.x0 : c.x1] += _blur_kernel(sub, kernel)
    return out


def space_variant_blur_exact(
    x: Tensor,
    sigma_edge_px: float,
    *,
    sigma_center_px: float = SVB.sigma_center_px,
    truncate: float = DEFAULT_TRUNCATE,
) -> Tensor:
    """The exact per-pixel space-variant convolution that :func:`space_variant_blur` approximates.

    Every source pixel ``p`` spreads its value with its own normalised, truncated, sampled
    Gaussian of ``sigma(r_p)`` (symmetric boundaries, like the fast path): ``y = sum_p x_p
    a_p b_p^T`` with ``a_p``, ``b_p`` the folded 1-D kernels along H and W. A reference for
    tests and benchmarks: float64, memory ``O(H W (H + W))`` per image (fine up to ~256x256).

    Args:
        x: images, float ``(B, 1, H, W)``.
        sigma_edge_px: PSF sigma at the corners (one value for the batch).
        sigma_center_px, truncate: as :func:`space_variant_blur`.

    Returns:
        Blurred images, float64, same shape.
    """
    x = check_images(x, "x", nonnegative=False)
    b, _, h, w = x.shape
    smap = svb_sigma_map(
        h, w, float(sigma_edge_px), sigma_center_px=sigma_center_px, device=x.device
    )
    s = smap.flatten()  # (P,)
    rows = torch.arange(h, device=x.device).repeat_interleave(w)
    cols = torch.arange(w, device=x.device).repeat(h)
    a = _folded_kernels(rows, s, h, truncate)  # (P, H)
    bm = _folded_kernels(cols, s, w, truncate)  # (P, W)
    xf = x.double().reshape(b, -1)  # (B, P)
    out = torch.einsum("ph,bp,pw->bhw", a, xf, bm)
    return out.reshape(b, 1, h, w)


def _folded_kernels(centre: Tensor, sigma: Tensor, n: int, truncate: float) -> Tensor:
    """``(P, n)``: each row a sampled Gaussian at ``centre`` of ``sigma``, mirrored into 0..n-1."""
    radius = torch.floor(truncate * sigma + 0.5)
    rmax = int(radius.max())
    j = torch.arange(-rmax, rmax + 1, dtype=torch.float64, device=sigma.device)
    k = gaussian_taps(sigma.double(), rmax, cut=radius, sigma_floor=1e-12)
    k = torch.where(sigma[:, None] == 0, (j[None, :] == 0).double(), k)
    pos = centre[:, None] + j.long()[None, :]
    m = torch.remainder(pos, 2 * n)
    idx = torch.where(m >= n, 2 * n - 1 - m, m)
    out = torch.zeros(centre.shape[0], n, dtype=torch.float64, device=sigma.device)
    return out.scatter_add_(1, idx, k)


# --- compiled CPU path ----------------------------------------------------------------------
#
# On CPU, float32 and float64 images outside autograd are blurred by one compiled kernel
# (Numba) that computes every value with the operations of the torch code above, in its
# order: along W then along H, each output ``p[c] * t_0`` then ``fma(p[c + j], t_j, .)`` for
# j = 1..2r (torch's ``add_(p, alpha=t)`` is a fused multiply-add, in its vectorised loops and
# their scalar tails alike, at the AVX2 and AVX-512 ATen capabilities), and for SVB
# ``out += h_k * (w_k x)`` crop after crop from zero. The fused multiply-add is LLVM's
# ``llvm.fma``: one rounding on every CPU whatever the vector width, so the bytes depend on
# neither the thread count, the batch nor the instruction set (tests compare the two paths
# bit for bit).
#
# Why (benchmarks/RESULTS.md, issue 21): the torch ops run each tap as one whole-array
# pass, ``2 (2 r + 1)`` passes per ring and crop, over blocks of images; SVB's blocks (2**19
# values then) outgrew the 2 MB L2 of an Intel Xeon core, whose L3 is slower than an AMD
# EPYC's, so SVB waited on memory there (4x SIB on one thread). The kernel instead:
#
# * blurs ``_LANES`` images together, their values interleaved (``(H, W lanes)``), so that
#   every loop runs over ``lanes`` values per column: long vectorised loops even over the
#   narrow runs of an SVB ring;
# * applies four taps per pass over a row (``_fma4``: one load and one fma per tap);
# * goes down the image in bands of ``_BAND`` output rows, all crops in turn within a band
#   (each pixel still receives the crops in order), keeping for each crop only the last
#   ``2 r + 1`` W-pass rows (a ring buffer): the band and those rows stay in cache;
# * rounds loop lengths up to ``_STEP`` values (buffers are padded) so no loop ends in a
#   scalar remainder.
#
# SVB also skips the zeros of the ring weights: a term whose input is an exact zero leaves
# a non-zero sum unchanged (``fma(0, t, s) = s``) and can change only the sign of a zero sum,
# and the output starts at +0 and is only added to, so it never holds -0 and those signs are
# lost. Along W a row is computed only over the runs of its non-zero weighted input (each
# pass of taps over the outputs it reaches); along H only from rows and columns holding
# non-zero W-pass values; rows without input are not computed (they read as a row of zeros).
# Runs closer than ``_GAP`` columns are merged, so a rounded-up loop never reaches the next
# run (whose terms it would add out of order). SIB computes every term, as the torch code.

_jit = numba.njit(cache=True, nogil=True, error_model="numpy")
_inline = numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
_Array = np.ndarray  # (annotations only: Numba compiles from the values)
_Plan = tuple[np.ndarray, ...]

#: Values per trip of the vectorised loops: loop lengths are rounded up to a multiple.
_STEP = 32
#: Runs of non-zero columns closer than this are merged (see the notes above).
_GAP = _STEP + 8
#: Images blurred together, their values interleaved, at most.
_LANES = 8
#: Values of the interleaved copies of the images (per copy and thread), at most: fewer
#: images go together when they are large (one image always).
_GROUP_VALUES = 1 << 21
#: Output rows per band.
_BAND = 16


@intrinsic
def _fma(typingctx, a, b, c):  # noqa: ANN001 (Numba's intrinsic signature)
    """``a * b + c`` with one rounding (LLVM's ``llvm.fma``), the arithmetic of ``add_``."""
    if not (isinstance(a, nb_types.Float) and a == b and b == c):
        return None

    def codegen(context, builder, sig, args):  # noqa: ANN001
        ty = context.get_value_type(sig.return_type)
        fn = builder.module.declare_intrinsic("llvm.fma", [ty], ir.FunctionType(ty, [ty] * 3))
        return builder.call(fn, args)

    return a(a, b, c), codegen


@_inline
def _mul1(out: np.ndarray, p0: np.ndarray, t0: float) -> None:
    for c in range(out.shape[0]):
        out[c] = p0[c] * t0


@_inline
def _fma1(out: np.ndarray, p0: np.ndarray, t0: float) -> None:
    for c in range(out.shape[0]):
        out[c] = _fma(p0[c], t0, out[c])


@_inline
def _fma4(
    out: _Array,
    p0: _Array,
    p1: _Array,
    p2: _Array,
    p3: _Array,
    t0: float,
    t1: float,
    t2: float,
    t3: float,
) -> None:
    for c in range(out.shape[0]):
        out[c] = _fma(p3[c], t3, _fma(p2[c], t2, _fma(p1[c], t1, _fma(p0[c], t0, out[c]))))


@_inline
def _taps_w(out: _Array, p: _Array, b: int, d: int, taps: _Array, t: int, nt: int) -> None:
    """Taps ``t..t+nt-1`` of ``out[c] += taps[t + q] p[b + q d + c]`` (fma, in order of q)."""
    n = out.shape[0]
    q = 0
    while q + 4 <= nt:
        e = b + q * d
        _fma4(
            out, p[e : e + n], p[e + d : e + d + n], p[e + 2 * d : e + 2 * d + n],
            p[e + 3 * d : e + 3 * d + n], taps[t + q], taps[t + q + 1], taps[t + q + 2],
            taps[t + q + 3],
        )  # fmt: skip
        q += 4
    while q < nt:
        e = b + q * d
        _fma1(out, p[e : e + n], taps[t + q])
        q += 1


@_inline
def _taps_h(out: _Array, y: _Array, offs: _Array, a: int, taps: _Array, t: int, nt: int) -> None:
    """Taps ``t..t+nt-1`` of ``out[c] += taps[t + q] y[offs[q] + a + c]`` (fma, in order)."""
    n = out.shape[0]
    q = 0
    while q + 4 <= nt:
        b0 = offs[q] + a
        b1 = offs[q + 1] + a
        b2 = offs[q + 2] + a
        b3 = offs[q + 3] + a
        _fma4(
            out, y[b0 : b0 + n], y[b1 : b1 + n], y[b2 : b2 + n], y[b3 : b3 + n],
            taps[t + q], taps[t + q + 1], taps[t + q + 2], taps[t + q + 3],
        )  # fmt: skip
        q += 4
    while q < nt:
        b0 = offs[q] + a
        _fma1(out, y[b0 : b0 + n], taps[t + q])
        q += 1


@_jit
def _step_columns(lanes: int) -> int:
    """Columns per rounding unit: the fewest whose ``lanes`` values are a multiple of _STEP."""
    a, b = _STEP, lanes
    while b:
        a, b = b, a % b
    return _STEP // a


@_jit
def _round_up(n: int, step: int) -> int:
    return n + (-n) % step


@_jit
def _weigh(out: _Array, x: _Array, w: _Array, g: int) -> None:
    """``out[c g + q] = x[c g + q] * w[c]``: the weight of column c times its ``g`` values."""
    if g == _LANES:  # unrolled, unsigned indices: one vector multiply per column
        for c in range(w.shape[0]):
            v = w[c]
            b = np.uint64(c) * np.uint64(_LANES)
            for q in range(_LANES):
                out[b + np.uint64(q)] = x[b + np.uint64(q)] * v
    else:
        for c in range(w.shape[0]):
            v = w[c]
            for q in range(g):
                out[c * g + q] = x[c * g + q] * v


@_jit
def _mirror_pads(prow: _Array, pads: _Array, r: int, wc: int, g: int) -> None:
    """Padded columns ``0..r-1`` and ``r+wc..wc+2r-1`` of ``prow`` from columns ``r + pads``."""
    for q in range(2 * r):
        dst = (q if q < r else q + wc) * g
        src = (r + pads[q]) * g
        if g == _LANES:
            d = np.uint64(dst)
            e = np.uint64(src)
            for m in range(_LANES):
                prow[d + np.uint64(m)] = prow[e + np.uint64(m)]
        else:
            for m in range(g):
                prow[dst + m] = prow[src + m]


@_jit
def _interleave(x: _Array, i: int, g: int, xg: _Array, y0: int, y1: int) -> None:
    """Rows ``y0..y1-1`` of ``xg[y, c g + q] = x[i + q, y, c]``: images ``i..i+g-1`` side by
    side per pixel."""
    for y in range(y0, y1):
        xr = xg[y]
        for c in range(x.shape[2]):
            for q in range(g):
                xr[c * g + q] = x[i + q, y, c]


@_jit
def _deinterleave(og: _Array, i: int, g: int, out: _Array, y0: int, y1: int) -> None:
    """Rows ``y0..y1-1`` of ``out[i + q, y, c] = og[y, c g + q]`` (see :func:`_interleave`)."""
    for y in range(y0, y1):
        orow = og[y]
        for c in range(out.shape[2]):
            for q in range(g):
                out[i + q, y, c] = orow[c * g + q]


@_inline
def _w_pass(
    xr: _Array,
    yr: _Array,
    prow: _Array,
    d: int,
    k: int,
    g: int,
    sc: int,
    plan: _Plan,
    taps: _Array,
    weights: _Array,
    sparse: bool,
) -> None:
    """W-pass row ``d`` of crop ``k`` (input row ``xr``) into ``yr``; ``prow`` is all zeros
    before and after (SVB; SIB overwrites it) and so is ``yr`` (SVB)."""
    crops, h_ptr, h_seg, pads = plan[:4]
    wc = crops[k, 3] - crops[k, 2]
    r = crops[k, 4]
    toff = crops[k, 5]
    woff = crops[k, 6] + d * wc
    s0 = h_ptr[crops[k, 7] + d]
    s1 = h_ptr[crops[k, 7] + d + 1]
    nt = 2 * r + 1
    if sparse:
        for s in range(s0, s1):  # the weighted input of each run
            lo = max(0, h_seg[s, 0] - r)
            hi = min(wc, h_seg[s, 1] - r)
            _weigh(
                prow[(r + lo) * g : (r + hi) * g],
                xr[lo * g : hi * g],
                weights[woff + lo : woff + hi],
                g,
            )
    else:
        pm = prow[r * g : (r + wc) * g]
        for c in range(wc * g):
            pm[c] = xr[c]
    if h_seg[s0, 0] < r or h_seg[s1 - 1, 1] > r + wc:  # the mirrored input is non-zero
        _mirror_pads(prow, pads[crops[k, 10] : crops[k, 10] + 2 * r], r, wc, g)
    if not sparse:
        n = _round_up(wc, sc) * g
        _mul1(yr[:n], prow[:n], taps[toff])
        _taps_w(yr[:n], prow, g, g, taps, toff + 1, nt - 1)
        return
    for s in range(s0, s1):  # each pass of taps over the outputs it reaches
        a = h_seg[s, 0]
        e = h_seg[s, 1]
        j = 0
        while j < nt:
            m = 4 if nt - j >= 4 else 1
            lo = max(0, a - j - m + 1)
            n = _round_up(min(wc, e - j) - lo, sc) * g
            if n > 0:
                _taps_w(yr[lo * g : lo * g + n], prow, (lo + j) * g, g, taps, toff + j, m)
            j += m
    for s in range(s0, s1):  # back to zeros
        prow[max(r, h_seg[s, 0]) * g : min(r + wc, h_seg[s, 1]) * g] = 0.0
    prow[: r * g] = 0.0
    prow[(r + wc) * g : (2 * r + wc) * g] = 0.0


@_inline
def _h_pass(
    orow: _Array,
    zrow: _Array,
    ring: _Array,
    offs: _Array,
    row: int,
    k: int,
    g: int,
    sc: int,
    plan: _Plan,
    taps: _Array,
    sparse: bool,
) -> None:
    """Output row ``row`` of crop ``k`` along H into ``orow`` (stored for SIB, added to for
    SVB), from the W-pass rows at ``offs`` in ``ring``."""
    crops = plan[0]
    g_ptr, g_seg, v_ptr, v_seg = plan[5:9]
    wc = crops[k, 3] - crops[k, 2]
    nt = 2 * crops[k, 4] + 1
    toff = crops[k, 5]
    roff = crops[k, 7]
    if not sparse:
        n = _round_up(wc, sc) * g
        zv = zrow[:n]
        _mul1(zv, ring[offs[0] : offs[0] + n], taps[toff])
        _taps_h(zv, ring, offs[1:], 0, taps, toff + 1, nt - 1)
        for c in range(wc * g):
            orow[c] = zv[c]
        return
    v0 = v_ptr[roff + row]
    v1 = v_ptr[roff + row + 1]
    for s in range(v0, v1):
        a = v_seg[s, 0] * g
        zrow[a : a + _round_up(v_seg[s, 1] - v_seg[s, 0], sc) * g] = 0.0
    q = crops[k, 8] + row * (nt // 4 + nt % 4)  # passes of 4 taps, then of 1
    j = 0
    while j < nt:
        m = 4 if nt - j >= 4 else 1
        for s in range(g_ptr[q], g_ptr[q + 1]):  # columns where rows j..j+m-1 are non-zero
            a = g_seg[s, 0] * g
            n = _round_up(g_seg[s, 1] - g_seg[s, 0], sc) * g
            _taps_h(zrow[a : a + n], ring, offs[j : j + m], a, taps, toff + j, m)
        j += m
        q += 1
    for s in range(v0, v1):
        a = v_seg[s, 0] * g
        e = v_seg[s, 1] * g
        ov = orow[a:e]
        zv = zrow[a:e]
        for c in range(e - a):
            ov[c] += zv[c]


@_jit
def _blur_lanes(
    x: _Array,
    out: _Array,
    i: int,
    g: int,
    xg: _Array,
    og: _Array,
    plan: _Plan,
    taps: _Array,
    weights: _Array,
    sparse: bool,
    prow: _Array,
    ring: _Array,
    zero: int,
    zrow: _Array,
    offs: _Array,
    done: _Array,
) -> None:
    """Blur images ``i..i+g-1`` of ``x`` into ``out`` through their interleaved copies ``xg``
    and ``og`` (``(H, W g)``), crop by crop per band of output rows.

    ``ring`` holds, per crop, its last ``2 r + 1`` W-pass rows (slots of ``(wc + _STEP) g``
    values) and, from ``zero`` on, a slot of zeros for the rows without input. The input is
    interleaved as bands need it and the output leaves band by band, while in cache.
    """
    crops, h_ptr, _, _, rows = plan[:5]
    y_ptr, y_seg = plan[9:11]
    h = x.shape[1]
    sc = _step_columns(g)
    done[:] = 0  # W-pass rows computed so far, per crop
    ready = 0  # input rows interleaved so far
    max_r = 0
    for k in range(crops.shape[0]):
        max_r = max(max_r, crops[k, 4])
    for band in range(0, h, _BAND):
        end = min(h, band + _BAND)
        _interleave(x, i, g, xg, ready, min(h, end + max_r))
        ready = max(ready, min(h, end + max_r))
        if sparse:
            og[band:end] = 0.0
        for k in range(crops.shape[0]):
            y0 = crops[k, 0]
            x0 = crops[k, 2]
            hc = crops[k, 1] - y0
            wc = crops[k, 3] - x0
            r = crops[k, 4]
            roff = crops[k, 7]
            base = crops[k, 11] * g
            nt = 2 * r + 1
            ws = (wc + _STEP) * g
            for row in range(max(band, y0) - y0, min(band + _BAND, y0 + hc) - y0):
                while done[k] < hc and done[k] <= row + r:  # the W-pass rows this row needs
                    d = done[k]
                    done[k] = d + 1
                    if h_ptr[roff + d] < h_ptr[roff + d + 1]:
                        yr = ring[base + (d % nt) * ws : base + (d % nt + 1) * ws]
                        xr = xg[y0 + d, x0 * g : (x0 + wc) * g]
                        _w_pass(xr, yr, prow, d, k, g, sc, plan, taps, weights, sparse)
                for j in range(nt):
                    q = rows[crops[k, 9] + row + j]
                    offs[j] = zero if q < 0 else base + (q % nt) * ws
                orow = og[y0 + row, x0 * g : (x0 + wc) * g]
                _h_pass(orow, zrow, ring, offs, row, k, g, sc, plan, taps, sparse)
                if not sparse:
                    continue
                # W-pass rows no later output row reads go back to zeros (where written):
                # row - r, and after the crop's last row all the rows still kept.
                for d in range(max(0, row - r), row - r + 1 if row < hc - 1 else hc):
                    slot = base + (d % nt) * ws
                    for s in range(y_ptr[roff + d], y_ptr[roff + d + 1]):
                        a = slot + y_seg[s, 0] * g
                        ring[a : slot + min(wc + _STEP, y_seg[s, 1] + sc) * g] = 0.0
        _deinterleave(og, i, g, out, band, end)


@numba.njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _blur_images(
    x: _Array,
    out: _Array,
    plan: _Plan,
    taps: _Array,
    weights: _Array,
    sparse: bool,
    max_wc: int,
    max_r: int,
    ring_columns: int,
    threads: int,
) -> None:
    """Blur every image of ``x`` (``(B, H, W)``) into ``out``, up to ``_LANES`` at a time, on
    ``threads`` threads (no value depends on how the images are grouped or split)."""
    b, h, w = x.shape
    chunks = min(b, threads)
    for chunk in numba.prange(chunks):  # one per thread, each with its own buffers
        lanes = max(1, min(_LANES, b, _GROUP_VALUES // (h * w)))
        xg = np.empty((h, w * lanes), dtype=x.dtype)
        og = np.empty((h, w * lanes), dtype=x.dtype)
        prow = np.zeros((max_wc + 2 * max_r + 2 * _STEP) * lanes, dtype=x.dtype)
        zrow = np.zeros((max_wc + 2 * _STEP) * lanes, dtype=x.dtype)
        zero = ring_columns * lanes
        ring = np.zeros(zero + zrow.shape[0], dtype=x.dtype)
        offs = np.empty(2 * max_r + 1, dtype=np.int64)
        done = np.zeros(plan[0].shape[0], dtype=np.int64)
        i = chunk * b // chunks
        i1 = (chunk + 1) * b // chunks
        while i < i1:
            g = min(lanes, i1 - i)
            _blur_lanes(
                x, out, i, g, xg, og, plan, taps, weights, sparse, prow, ring, zero, zrow,
                offs, done,
            )  # fmt: skip
            i += g


# --- tables of the compiled path (built once per shape and blur, cached) ----------------------


def _compiled(x: Tensor, r: int, *, sib: bool = True) -> bool:
    """Whether the compiled kernel blurs ``x`` with kernels of radius up to ``r``."""
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and not (x.requires_grad and torch.is_grad_enabled())
        and r < FFT_MIN_RADIUS_PX
        and (r > 0 or not sib)  # SIB with r = 0 is x * 1.0, as the torch code does
    )


def _mirror(k: np.ndarray, n: int) -> np.ndarray:
    """Source index of positions ``k`` under repeated mirroring of ``0..n-1``."""
    m = np.remainder(k, 2 * n)
    return np.where(m >= n, 2 * n - 1 - m, m)


def _runs(nonzero: np.ndarray) -> list[tuple[int, int]]:
    """``[start, end)`` of each run of True."""
    d = np.diff(np.concatenate([[0], nonzero.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist(), strict=True))


def _merge(runs: list[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    """``runs`` clipped to ``[lo, hi)``, sorted, and merged when less than ``_GAP`` apart."""
    out: list[list[int]] = []
    for a, e in sorted((max(lo, a), min(hi, e)) for a, e in runs):
        if e <= a:
            continue
        if out and a <= out[-1][1] + _GAP:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([a, e])
    return [(a, e) for a, e in out]


@dataclass(frozen=True)
class _Tables:
    """A compiled blur: its crops and their runs of non-zeros (see :func:`_crop_tables`)."""

    plan: tuple[np.ndarray, ...]
    taps: np.ndarray
    weights: np.ndarray
    max_wc: int
    max_r: int
    ring_columns: int


def _crop_tables(
    crops: list[tuple[int, int, int, int, tuple[float, ...], np.ndarray | None]], dtype: type
) -> _Tables:
    """The kernel's tables for ``crops`` = ``(y0, y1, x0, x1, taps, weight)`` (weight None: SIB).

    ``plan`` holds: per crop its box, radius and offsets into the other tables (``crops``);
    per crop row the runs of non-zero input in padded columns (``h_ptr``, ``h_seg``) and of
    non-zero W-pass output (``y_ptr``, ``y_seg``); per output row and pass of taps along H
    (4 taps, then 1) the columns where those rows are non-zero (``g_ptr``, ``g_seg``) and
    their union (``v_ptr``, ``v_seg``); per padded row its crop row, -1 if without input
    (``rows``); per crop the source columns of its mirrored pads (``pads``).
    """
    table: list[list[int]] = []
    taps: list[float] = []
    weights: list[np.ndarray] = []
    h_ptr, h_seg, pads, rows = [], [], [], []
    g_ptr, g_seg, v_ptr, v_seg, y_ptr, y_seg = [], [], [], [], [], []
    ring = 0  # columns of the ring buffer before this crop's part
    for y0, y1, x0, x1, t, weight in crops:
        hc, wc, r = y1 - y0, x1 - x0, (len(t) - 1) // 2
        nt = 2 * r + 1
        table.append(
            [y0, y1, x0, x1, r, len(taps), sum(w.size for w in weights), len(h_ptr), len(g_ptr),
             len(rows), len(pads), ring]
        )  # fmt: skip
        cols = _mirror(np.arange(wc + 2 * r) - r, wc)  # padded column -> crop column
        nz = np.ones((hc, wc), dtype=bool) if weight is None else weight != 0
        y_runs = []
        for row in range(hc):
            runs = _merge(_runs(nz[row][cols]), 0, wc + 2 * r)
            h_ptr.append(len(h_seg))
            h_seg.extend(runs)
            # Output c reads padded columns c..c+2r: a run [a, e) reaches outputs a-2r..e-1.
            y_runs.append(_merge([(a - 2 * r, e) for a, e in runs], 0, wc))
            y_ptr.append(len(y_seg))
            y_seg.extend(y_runs[-1])
        h_ptr.append(len(h_seg))
        y_ptr.append(len(y_seg))
        pads.extend(cols[:r].tolist() + cols[r + wc :].tolist())
        src = _mirror(np.arange(hc + 2 * r) - r, hc)  # padded row -> crop row
        rows.extend(int(s) if y_runs[s] else -1 for s in src)
        for row in range(hc):
            v_ptr.append(len(v_seg))
            if weight is None:
                continue
            union: list[tuple[int, int]] = []
            j = 0
            while j < nt:
                m = 4 if nt - j >= 4 else 1
                runs = _merge([s for q in range(j, j + m) for s in y_runs[src[row + q]]], 0, wc)
                g_ptr.append(len(g_seg))
                g_seg.extend(runs)
                union.extend(runs)
                j += m
            v_seg.extend(_merge(union, 0, wc))
        v_ptr.append(len(v_seg))
        if weight is not None:
            weights.append(np.ascontiguousarray(weight, dtype=dtype).reshape(-1))
        taps.extend(t)
        ring += nt * (wc + _STEP)
    g_ptr.append(len(g_seg))

    def ints(v: list, pairs: bool = False) -> np.ndarray:
        a = np.array(v, dtype=np.int64)
        return a.reshape(-1, 2) if pairs else a

    plan = (
        ints(table).reshape(-1, 12), ints(h_ptr), ints(h_seg, True), ints(pads), ints(rows),
        ints(g_ptr), ints(g_seg, True), ints(v_ptr), ints(v_seg, True), ints(y_ptr),
        ints(y_seg, True),
    )  # fmt: skip
    return _Tables(
        plan=plan,
        taps=np.array(taps, dtype=dtype),
        weights=np.concatenate(weights) if weights else np.zeros(0, dtype=dtype),
        max_wc=max(x1 - x0 for _, _, x0, x1, *_ in crops),
        max_r=max((len(t) - 1) // 2 for *_, t, _ in crops),
        ring_columns=ring,
    )


def _np_dtype(x: Tensor) -> type:
    return np.float64 if x.dtype == torch.float64 else np.float32


@functools.lru_cache(maxsize=64)
def _sib_tables(h: int, w: int, taps: tuple[float, ...], dtype: type) -> _Tables:
    return _crop_tables([(0, h, 0, w, taps, None)], dtype)


@functools.lru_cache(maxsize=64)
def _svb_tables(
    h: int,
    w: int,
    sigma_edge: float,
    sigma_center: float,
    rings: int,
    truncate: float,
    dtype: torch.dtype,
) -> _Tables:
    plan = _svb_plan(h, w, sigma_edge, sigma_center, rings, truncate, "cpu", dtype)
    crops = [
        (c.y0, c.y1, c.x0, c.x1, tuple(kernel.tolist()), c.weight.numpy())
        for kernel, ring in plan
        for c in ring
    ]
    return _crop_tables(crops, np.float64 if dtype == torch.float64 else np.float32)


def _run_compiled(x: Tensor, tables: _Tables, *, sparse: bool) -> Tensor:
    """The compiled blur of CPU images ``x`` (``(B, 1, H, W)``, float32 or float64)."""
    xn = x.detach().contiguous().numpy()[:, 0]
    out = np.empty_like(xn)
    with launch():
        _blur_images(
            xn, out, tables.plan, tables.taps, tables.weights, sparse, tables.max_wc,
            tables.max_r, tables.ring_columns, numba.get_num_threads(),
        )  # fmt: skip
    return torch.from_numpy(out)[:, None]


# --- levels -------------------------------------------------------------------------------


def _level_sigmas(level: int | Tensor, batch: int, device: torch.device) -> Tensor:
    lv = torch.as_tensor(level, device="cpu")
    if lv.is_floating_point() and not bool((lv == lv.round()).all()):
        raise ValueError(
            f"level must be an integer in {sorted(SIB_SIGMA_PX)} (or 0). Got {lv.tolist()}"
        )
    lv = per_sample(lv.to(torch.int64), batch, "level", dtype=torch.int64).tolist()
    table = {0: 0.0, **SIB_SIGMA_PX}
    bad = [v for v in lv if v not in table]
    if bad:
        raise ValueError(f"level must be one of {sorted(table)} (0 = no blur). Got {bad}")
    return torch.tensor([table[v] for v in lv], dtype=torch.float64, device=device)


def sib(x: Tensor, level: int | Tensor) -> Tensor:
    """Space-invariant blur at benchmark level(s) 1..5 (``SIB_SIGMA_PX``; 0 = none).

    Args:
        x: images, float ``(B, 1, H, W)``.
        level: an int or ``(B,)`` ints.

    Returns:
        Blurred images (see :func:`gaussian_blur`).
    """
    x = check_images(x, "x", nonnegative=False)
    return _blur_grouped(x, _level_sigmas(level, x.shape[0], x.device).tolist(), DEFAULT_TRUNCATE)


def svb(x: Tensor, level: int | Tensor) -> Tensor:
    """Space-variant blur at benchmark level(s) 1..5: corner sigma = the SIB sigma of the level.

    Uses ``SVB.sigma_center_px`` and ``SVB.rings`` (``synthesis.levels``); level 0 leaves an
    image as it is (also at the centre).
    """
    x = check_images(x, "x", nonnegative=False)
    sigma = _level_sigmas(level, x.shape[0], x.device)
    blurred = torch.nonzero(sigma > 0).flatten()
    settings = (SVB.sigma_center_px, SVB.rings, DEFAULT_TRUNCATE)
    if blurred.numel() == x.shape[0]:
        return _svb_grouped(x, sigma.tolist(), *settings)
    out = x.clone()
    if blurred.numel():
        sub = _svb_grouped(x.index_select(0, blurred), sigma[blurred].tolist(), *settings)
        out.index_copy_(0, blurred, sub)
    return out


def psf_params(kind: str, level: int) -> dict[str, object]:
    """The PSF description stored with each row (fixed keys; what does not apply is None).

    Args:
        kind: ``"none"``, ``"gaussian"`` (SIB) or ``"space_variant_gaussian"`` (SVB).
        level: blur level 1..5 (ignored for ``"none"``).

    Returns:
        ``{"kind", "sigma_px", "sigma_center_px", "sigma_edge_px", "rings", "truncate"}``.

    Raises:
        ValueError: unknown kind or level.
    """
    out: dict[str, object] = {
        "kind": kind,
        "sigma_px": None,
        "sigma_center_px": None,
        "sigma_edge_px": None,
        "rings": None,
        "truncate": None,
    }
    if kind not in PSF_KINDS:
        raise ValueError(f"kind must be one of {PSF_KINDS}. Got {kind!r}")
    if kind == "none":
        return out
    if level not in SIB_SIGMA_PX:
        raise ValueError(f"level must be one of {sorted(SIB_SIGMA_PX)}. Got {level!r}")
    out["truncate"] = DEFAULT_TRUNCATE
    if kind == "gaussian":
        out["sigma_px"] = SIB_SIGMA_PX[level]
    else:
        out["sigma_center_px"] = SVB.sigma_center_px
        out["sigma_edge_px"] = SIB_SIGMA_PX[level]
        out["rings"] = SVB.rings
    return out

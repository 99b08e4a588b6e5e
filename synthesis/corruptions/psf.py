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

Implementation: the Gaussian kernels and the separable blur are those of
:mod:`synthesis.filters.gaussian` (taps, symmetric boundaries, an FFT past
:data:`~synthesis.filters.gaussian.FFT_MIN_RADIUS_PX`); on CPU (float32 and float64, outside
autograd) the compiled kernel of :mod:`synthesis.filters.separable` runs both blurs with the
torch code's exact operations and skips the zeros of the SVB ring weights; other devices run
the torch ops, SVB on blocks of ~0.5 MB on CPU.

No randomness is used here.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from synthesis.checks import check_images, per_sample
from synthesis.filters.gaussian import (
    DEFAULT_TRUNCATE,
    FFT_MIN_RADIUS_PX,
    blur_by_sigma,
    gaussian_kernel1d,
    gaussian_taps,
    separable_blur,
)
from synthesis.filters.separable import Tables, applies, crop_tables, run_compiled
from synthesis.grouping import by_key
from synthesis.levels import SIB_SIGMA_PX, SVB

__all__ = [
    "PSF_KINDS",
    "psf_params",
    "sib",
    "space_variant_blur",
    "space_variant_blur_exact",
    "svb",
    "svb_ring_sigmas",
    "svb_sigma_map",
    "svb_weights",
]

#: ``kind`` values of :func:`psf_params`, as stored per row.
PSF_KINDS: tuple[str, ...] = ("none", "gaussian", "space_variant_gaussian")
# SVB: 2**19 (chosen on an AMD EPYC) made each op's block and padded copy (~4 MB) leave the
# 2 MB L2 of an Intel Xeon core: 148 ms for 64 images of 256x256 at K = 4 on one thread,
# against 94 ms at 2**18 and 68 ms at 2**17 (issue 21).
_SVB_BLOCK_ELEMS = 1 << 17


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
    if len(set(sigmas)) == 1:
        return _svb_same(x, sigmas[0], sigma_center, rings, truncate)
    return by_key(
        sigmas, lambda rows, s: _svb_same(x[rows], s, sigma_center, rings, truncate), x.device
    )


def _svb_same(
    x: Tensor, sigma_edge: float, sigma_center: float, rings: int, truncate: float
) -> Tensor:
    b, _, h, w = x.shape
    plan = _svb_plan(h, w, sigma_edge, sigma_center, rings, truncate, str(x.device), x.dtype)
    r = max(((k.numel() - 1) // 2 for k, _ in plan), default=0)
    if r < FFT_MIN_RADIUS_PX and applies(x, r, sib=False):
        tables = _svb_tables(h, w, sigma_edge, sigma_center, rings, truncate, x.dtype)
        return run_compiled(x, tables, sparse=True)
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
            out[..., c.y0 : c.y1, c.x0 : c.x1] += separable_blur(sub, kernel)
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


@functools.lru_cache(maxsize=64)
def _svb_tables(
    h: int,
    w: int,
    sigma_edge: float,
    sigma_center: float,
    rings: int,
    truncate: float,
    dtype: torch.dtype,
) -> Tables:
    plan = _svb_plan(h, w, sigma_edge, sigma_center, rings, truncate, "cpu", dtype)
    crops = [
        (c.y0, c.y1, c.x0, c.x1, tuple(kernel.tolist()), c.weight.numpy())
        for kernel, ring in plan
        for c in ring
    ]
    return crop_tables(crops, np.float64 if dtype == torch.float64 else np.float32)


# --- levels -------------------------------------------------------------------------------


def _level_sigmas(level: int | Tensor, batch: int) -> Tensor:
    """The PSF sigma of each row's level, float64 ``(B,)`` on the CPU: the blurs group rows
    by these numbers on the host, so making them on a GPU would only copy them back."""
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
    return torch.tensor([table[v] for v in lv], dtype=torch.float64)


def sib(x: Tensor, level: int | Tensor) -> Tensor:
    """Space-invariant blur at benchmark level(s) 1..5 (``SIB_SIGMA_PX``; 0 = none).

    Args:
        x: images, float ``(B, 1, H, W)``.
        level: an int or ``(B,)`` ints.

    Returns:
        Blurred images (see :func:`gaussian_blur`).
    """
    x = check_images(x, "x", nonnegative=False)
    return blur_by_sigma(x, _level_sigmas(level, x.shape[0]).tolist(), DEFAULT_TRUNCATE)


def svb(x: Tensor, level: int | Tensor) -> Tensor:
    """Space-variant blur at benchmark level(s) 1..5: corner sigma = the SIB sigma of the level.

    Uses ``SVB.sigma_center_px`` and ``SVB.rings`` (``synthesis.levels``); level 0 leaves an
    image as it is (also at the centre).
    """
    x = check_images(x, "x", nonnegative=False)
    sigma = _level_sigmas(level, x.shape[0])
    blurred = torch.nonzero(sigma > 0).flatten()
    settings = (SVB.sigma_center_px, SVB.rings, DEFAULT_TRUNCATE)
    if blurred.numel() == x.shape[0]:
        return _svb_grouped(x, sigma.tolist(), *settings)
    out = x.clone()
    if blurred.numel():
        rows = blurred.to(x.device)
        sub = _svb_grouped(x.index_select(0, rows), sigma[blurred].tolist(), *settings)
        out.index_copy_(0, rows, sub)
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

"""Gaussian filtering: the one Gaussian kernel factory and the separable Gaussian blur.

* :func:`gaussian_taps` samples normalised 1-D Gaussians on the pixel grid (per-row sigma,
  optional per-row cut and floor); :func:`gaussian_kernel1d` is one such kernel out to
  ``truncate`` sigmas (scipy's convention: radius ``int(truncate * sigma + 0.5)``).
* :func:`gaussian_blur` blurs with symmetric ("reflect") boundaries: the image continues as
  its mirror image about its edge (``d c b a | a b c d``, scipy's ``mode="reflect"``), so the
  total flux is preserved exactly (the mirrored image is periodic and symmetric, so each
  period keeps its sum).

Each 1-D pass is a sum of ``2 r + 1`` shifted, weighted slices of a padded block of images
(one in-place multiply-add per tap), far faster than ``conv2d`` (im2col) or banded matrix
products, whose skinny GEMMs reached only 8-12 GMAC/s here. On CPU (float32 and float64,
outside autograd) the compiled kernel of :mod:`synthesis.filters.separable` computes exactly
these operations; elsewhere on CPU the torch ops run on blocks of ~1 MB. On CUDA the two
passes are ``conv2d`` calls instead (each reads its input once; the slices would read and
write the whole batch once per tap), in full float32. Past a radius
of :data:`FFT_MIN_RADIUS_PX` the cost of the taps exceeds that of an FFT of the padded block,
which is used instead (same kernel, same boundary; the two paths agree to float32 rounding).

The SIB corruption (:mod:`synthesis.corruptions.psf`), the renderers and the denoiser's noise
model use these. No randomness is used here.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from synthesis.checks import check_images, per_sample
from synthesis.filters.separable import applies, np_dtype, run_compiled, sib_tables
from synthesis.grouping import by_key

__all__ = [
    "DEFAULT_TRUNCATE",
    "FFT_MIN_RADIUS_PX",
    "blur_by_sigma",
    "gaussian_blur",
    "gaussian_kernel1d",
    "gaussian_taps",
    "separable_blur",
]

#: Kernel half-width in sigmas (scipy's default).
DEFAULT_TRUNCATE: float = 4.0
#: Kernel radius (px) from which the FFT path replaces the direct taps. Measured on 4 images
#: of 256x256, one core: taps 2x faster at r = 20 (sigma 5), FFT 1.7x faster at r = 40.
FFT_MIN_RADIUS_PX: int = 32

# Elements per block of the torch ops on CPU (only where the compiled kernel does not run:
# other dtypes, autograd). ~1 MB of float32, so a block and its padded copy fit in L2.
_BLOCK_ELEMS = 1 << 18


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
    return blur_by_sigma(x, sigma.tolist(), truncate)


def blur_by_sigma(x: Tensor, sigmas: list[float], truncate: float) -> Tensor:
    """Blur checked images ``x`` sample by sample with ``sigmas``, one batched pass per
    distinct sigma."""
    if len(set(sigmas)) == 1:
        return _blur_same(x, sigmas[0], truncate)
    return by_key(sigmas, lambda rows, s: _blur_same(x[rows], s, truncate), x.device)


def _blur_same(x: Tensor, sigma: float, truncate: float) -> Tensor:
    """Blur all of ``x`` (``(B, 1, H, W)``) with one sigma: the compiled kernel on CPU, else
    torch ops in cache-sized blocks."""
    k = gaussian_kernel1d(sigma, truncate=truncate, dtype=torch.float64)
    r = (k.numel() - 1) // 2
    b, _, h, w = x.shape
    if r < FFT_MIN_RADIUS_PX and applies(x, r):
        tables = sib_tables(h, w, tuple(k.tolist()), np_dtype(x))
        return run_compiled(x, tables, sparse=False)
    step = max(1, _BLOCK_ELEMS // ((h + 2 * r) * (w + 2 * r)))
    if x.device.type != "cpu" or step >= b or r >= FFT_MIN_RADIUS_PX:
        return separable_blur(x, k)
    out = torch.empty_like(x)
    for i in range(0, b, step):
        out[i : i + step] = separable_blur(x[i : i + step], k)
    return out


def separable_blur(x: Tensor, k: Tensor) -> Tensor:
    """Separable blur of ``x`` with the 1-D kernel ``k`` (float64, odd length) on both axes:
    shifted slices on CPU (:func:`_blur_taps`), two 1-D convolutions on CUDA
    (:func:`_blur_conv`), an FFT from :data:`FFT_MIN_RADIUS_PX`."""
    r = (k.numel() - 1) // 2
    if r == 0:
        return x * float(k[0])
    if r >= FFT_MIN_RADIUS_PX:
        return _blur_fft(x, k)
    if x.device.type == "cuda":
        return _blur_conv(x, k)
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


def _blur_conv(x: Tensor, k: Tensor) -> Tensor:
    """Separable blur as two 1-D convolutions (``conv2d`` with a ``1 x n`` then an ``n x 1``
    kernel) of the symmetrically padded images: the path of CUDA devices.

    Each pass reads its input once, where the shifted slices of :func:`_blur_taps` read and
    write the whole block once per tap (25 times per axis at sigma 3): on a GPU the slices
    are memory-bound at a few percent of the bandwidth. The same sums in another order
    (float32 rounding apart), with cuDNN's TF32 off for the call (:func:`_ieee_convolutions`),
    so every product is a full float32 one as on CPU. Works on any device (tests run it on
    CPU against the slices).
    """
    import torch.nn.functional as F

    r = (k.numel() - 1) // 2
    h, w = x.shape[-2:]
    lead = x.shape[:-2]
    taps = _taps_on(tuple(k.tolist()), str(x.device), x.dtype)
    y = _pad_symmetric(x.reshape(-1, 1, h, w), r, -1)
    with _ieee_convolutions(x.device):
        y = F.conv2d(y, taps.view(1, 1, 1, -1))
        y = F.conv2d(_pad_symmetric(y, r, -2), taps.view(1, 1, -1, 1))
    return y.reshape(*lead, h, w)


@functools.lru_cache(maxsize=256)
def _taps_on(taps: tuple[float, ...], device: str, dtype: torch.dtype) -> Tensor:
    """A kernel's taps as a tensor on ``device``, made once (not copied at every call)."""
    return torch.tensor(taps, dtype=torch.float64).to(device=device, dtype=dtype)


@contextmanager
def _ieee_convolutions(device: torch.device) -> Iterator[None]:
    """cuDNN convolutions in full float32 (TF32 off, which torch turns on for cuDNN by
    default) and deterministic algorithms, restored after; nothing on other devices."""
    if device.type != "cuda":
        yield
        return
    cudnn = torch.backends.cudnn
    # torch >= 2.9 sets TF32 per operation; reading the old global flag after that raises.
    per_op = getattr(getattr(cudnn, "conv", None), "fp32_precision", None) is not None
    saved = (
        cudnn.conv.fp32_precision if per_op else cudnn.allow_tf32,
        cudnn.deterministic,
        cudnn.benchmark,
    )
    if per_op:
        cudnn.conv.fp32_precision = "ieee"
    else:
        cudnn.allow_tf32 = False
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        if per_op:
            cudnn.conv.fp32_precision = saved[0]
        else:
            cudnn.allow_tf32 = saved[0]
        cudnn.deterministic, cudnn.benchmark = saved[1:]


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

"""Physics renderer: binary mask -> noise-free fluorescence image (float32, 16-bit-like units).

The default mask-to-image path (no weights needed). Image formation, per row:

1. **Fluorophore density** inside the structure: a spatially correlated random texture
   (white noise smoothed at a fine and a coarse scale, unit variance) mapped to a gamma
   marginal with the Wilson-Hilferty transform ``k theta (1 - 1/(9k) + z / (3 sqrt k))^3``.
   The authors of FluoroBench fitted a gamma distribution to real mitochondria foreground
   (shape ~6.9, scale ~100 in 16-bit units); each structure's shape and scale ranges are in
   :data:`RENDER_SETTINGS`. Nuclei add a per-instance brightness (DNA content and
   compaction differ between cells) and a dimmer rim (a nucleus is thinner at its edge).
2. **Optics**: the density is convolved with a diffraction-limited PSF (Gaussian
   approximation of the Airy disc, ``sigma ~ 0.21 lambda / NA``, about 1-1.6 px at Nyquist
   sampling; :func:`synthesis.filters.gaussian.gaussian_blur`, flux-preserving), plus **out-of-focus
   haze**: a fraction of the same density spread by a wide Gaussian (light from the
   structure above and below the focal plane).
3. **Background autofluorescence**: a dim, strictly positive, smoothly varying level
   (on average a few % of the foreground mean or less; for nuclei it varies strongly, up to
   bright diffuse regions), added to the optical image.

So ``mean(image[fg]) - mean(image[bg])`` is large and positive and ``mean(image[bg]) > 0``:
the SNR of :mod:`synthesis.levels` is defined on every row.

"Sample, then apply": :func:`sample_render_params` draws the per-row parameters,
:func:`render_with_params` uses only them and the seeds (for the texture fields), so an
image is replayed exactly from the ``params`` stored with its row.

Streams of :mod:`synthesis.rng` used here: :data:`streams.RENDER_PARAMS` (per-row parameter
draws), :data:`streams.TEXTURE_FINE`, :data:`streams.TEXTURE_COARSE`,
:data:`streams.BACKGROUND`, :data:`streams.INSTANCE` (per-nucleus brightness).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from synthesis import rng
from synthesis.checks import check_images, check_mask, check_seeds
from synthesis.filters.gaussian import gaussian_blur, gaussian_taps
from synthesis.grouping import by_key
from synthesis.rng import streams

__all__ = [
    "RENDER_SETTINGS",
    "RenderResult",
    "RenderSettings",
    "render",
    "render_with_params",
    "sample_render_params",
]

logger = logging.getLogger(__name__)


Range = tuple[float, float]


@dataclass(frozen=True)
class RenderSettings:
    """Per-structure ranges of the renderer's parameters; each row draws uniformly in them.

    Intensities are in 16-bit-like units (the noise model rescales to photo-electrons).
    """

    gamma_shape: Range  # foreground density marginal: Gamma(shape, scale)
    gamma_scale: Range
    texture_sigma_px: Range  # correlation length of the fine texture
    coarse_sigma_px: Range  # correlation length of the slow (regional) brightness variation
    coarse_weight: Range  # share of the texture variance at the coarse scale
    instance_log_sd: Range  # per-instance brightness, log-normal sd (needs instance labels)
    rim_dimming: Range  # relative density lost at an object's edge (nuclei: thinner rims)
    rim_sigma_px: Range  # width of the rim profile
    background_fraction: Range  # autofluorescence / mean foreground density
    background_variation: Range  # log-sd of the smooth background variation
    background_sigma_px: Range
    haze_fraction: Range  # out-of-focus light / in-focus light
    haze_sigma_px: Range
    psf_sigma_px: Range  # in-focus PSF (Gaussian approximation of the Airy disc)


#: Renderer settings, keyed by the dataset's config names.
RENDER_SETTINGS: dict[str, RenderSettings] = {
    # ER: high-resolution imaging (SIM/Airyscan-like), much out-of-focus ER in a thick cell.
    "er": RenderSettings(
        gamma_shape=(5.0, 9.0),
        gamma_scale=(70.0, 130.0),
        texture_sigma_px=(1.0, 2.5),
        coarse_sigma_px=(10.0, 30.0),
        coarse_weight=(0.2, 0.6),
        instance_log_sd=(0.0, 0.0),
        rim_dimming=(0.0, 0.0),
        rim_sigma_px=(1.0, 1.0),
        background_fraction=(0.03, 0.10),
        background_variation=(0.1, 0.4),
        background_sigma_px=(30.0, 60.0),
        haze_fraction=(0.10, 0.35),
        haze_sigma_px=(5.0, 12.0),
        psf_sigma_px=(1.0, 1.6),
    ),
    # Mitochondria: gamma fitted by the authors to real foreground, shape ~6.9, scale ~100.
    # Background and haze: fitted by code (synthesis/render/fit.py, `benchmarks/fit_renderer.py
    # --config mito`) on the train tiles of the shared real mitochondria, resampled to Mito-C's
    # 0.085 um/px, against their pseudo-masks; the held-out test tiles are closer to the fitted
    # ranges than to the unfitted ones (benchmarks/RESULTS.md, "Mito-C renderer fitted").
    "mito": RenderSettings(
        gamma_shape=(5.5, 8.5),
        gamma_scale=(80.0, 120.0),
        texture_sigma_px=(1.0, 2.5),
        coarse_sigma_px=(8.0, 20.0),
        coarse_weight=(0.3, 0.6),
        instance_log_sd=(0.0, 0.0),
        rim_dimming=(0.0, 0.0),
        rim_sigma_px=(1.0, 1.0),
        background_fraction=(0.01, 0.08),
        background_variation=(0.1, 0.5),
        background_sigma_px=(30.0, 60.0),
        haze_fraction=(0.2, 0.6),
        haze_sigma_px=(5.0, 12.0),
        psf_sigma_px=(1.0, 1.6),
    ),
    # Nuclei (widefield, 10-40x): ranges set on the BBBC038 train tiles (benchmarks/realism.py
    # reports the held-out test tiles). At 0.3-0.65 um pixels the diffraction PSF is under a
    # pixel; 0.5-1.1 px covers pixel integration and mild defocus. Real foreground CV 0.22-0.59
    # (mostly between nuclei). Texture: real
    # within-nucleus variation is smooth (dome-shaped nuclei), so the texture is 2-5 px with
    # 30-70 % of its variance at the coarse scale. Background and haze: fitted by code on the
    # train tiles (synthesis/render/fit.py, benchmarks/fit_renderer.py;
    # docs/definitions.md#renderer-fit): real backgrounds are mostly dark but vary strongly
    # (bright diffuse regions), and nuclei carry a wide halo. What each component does to
    # transfer, over seeds: benchmarks/RESULTS.md, "Fidelity over seeds".
    "nucleus": RenderSettings(
        gamma_shape=(15.0, 40.0),
        gamma_scale=(15.0, 45.0),
        texture_sigma_px=(2.0, 5.0),
        coarse_sigma_px=(6.0, 15.0),
        coarse_weight=(0.3, 0.7),
        instance_log_sd=(0.1, 0.45),
        rim_dimming=(0.1, 0.5),
        rim_sigma_px=(1.0, 3.0),
        background_fraction=(0.002, 0.03),
        background_variation=(1.0, 2.0),
        background_sigma_px=(30.0, 60.0),
        haze_fraction=(0.2, 0.6),
        haze_sigma_px=(8.0, 25.0),
        psf_sigma_px=(0.5, 1.1),
    ),
}

#: Parameter names of a row, in the order of their uniform draws.
PARAM_NAMES: tuple[str, ...] = tuple(f.name for f in fields(RenderSettings))


@dataclass
class RenderResult:
    """Rendered images of one batch.

    Attributes:
        image: ``(B, 1, H, W)`` float32 >= 0, noise-free, 16-bit-like linear units.
        params: per row, the renderer parameters (JSON-serialisable floats), replayable with
            :func:`render_with_params`.
    """

    image: Tensor
    params: list[dict[str, Any]]


def sample_render_params(
    seeds: Tensor | int,
    structure: str,
    *,
    device: torch.device | str | None = None,
    settings: RenderSettings | None = None,
) -> dict[str, Tensor]:
    """Draw the renderer parameters of each row, uniformly in the ranges of ``structure``.

    Args:
        seeds: ``(B,)`` int64 render seeds.
        structure: a key of :data:`RENDER_SETTINGS`.
        device: device of the returned tensors (default: that of ``seeds``).
        settings: other ranges than ``RENDER_SETTINGS[structure]`` (a renderer fit tries
            candidates with it, :mod:`synthesis.render.fit`).

    Returns:
        ``{name: (B,) float32}`` for every name of :data:`PARAM_NAMES`.

    Raises:
        ValueError: unknown structure or bad seeds.
    """
    if structure not in RENDER_SETTINGS:
        raise ValueError(f"structure must be one of {tuple(RENDER_SETTINGS)}. Got {structure!r}")
    if device is None:
        device = seeds.device if isinstance(seeds, Tensor) else torch.device("cpu")
    s = torch.as_tensor(seeds)
    s = check_seeds(s, s.reshape(-1).shape[0], device=device)
    u = rng.uniform(s, (len(PARAM_NAMES),), streams.RENDER_PARAMS)
    table = asdict(RENDER_SETTINGS[structure] if settings is None else settings)
    out = {}
    for j, name in enumerate(PARAM_NAMES):
        lo, hi = table[name]
        out[name] = (lo + (hi - lo) * u[:, j]).to(torch.float32)
    return out


def render(
    mask: Tensor,
    seeds: Tensor | int,
    structure: str,
    *,
    instances: Tensor | None = None,
    settings: RenderSettings | None = None,
) -> RenderResult:
    """Render noise-free fluorescence images of the masks (sample, then apply).

    Args:
        mask: ``(B, 1, H, W)`` bool (or 0/1) structure masks, each with fg and bg.
        seeds: ``(B,)`` int64 render seeds (row ``i`` depends only on ``seeds[i]``).
        structure: ``"er"``, ``"mito"`` or ``"nucleus"``.
        instances: optional ``(B, 1, H, W)`` integer instance labels (0 = background); used
            for per-nucleus brightness.
        settings: other ranges than ``RENDER_SETTINGS[structure]``.

    Returns:
        :class:`RenderResult` with ``image`` ``(B, 1, H, W)`` float32 and per-row ``params``.

    Raises:
        TypeError, ValueError: bad mask, instances, seeds or structure.

    Example:
        >>> m = torch.zeros(2, 1, 64, 64, dtype=torch.bool); m[:, :, 20:40, 20:40] = True
        >>> out = render(m, torch.tensor([1, 2]), "nucleus")
        >>> out.image.shape, bool((out.image > 0).all())
        (torch.Size([2, 1, 64, 64]), True)
    """
    params = sample_render_params(seeds, structure, device=_device_of(mask), settings=settings)
    image = render_with_params(mask, seeds, params, instances=instances)
    rows = [
        {"renderer": "physics", "structure": structure}
        | {name: float(params[name][i]) for name in PARAM_NAMES}
        for i in range(image.shape[0])
    ]
    return RenderResult(image=image, params=rows)


def render_with_params(
    mask: Tensor,
    seeds: Tensor | int,
    params: dict[str, Tensor | float] | list[dict[str, Any]],
    *,
    instances: Tensor | None = None,
) -> Tensor:
    """Render from given parameters (``{name: scalar or (B,)}`` or the per-row dicts).

    Args:
        mask: ``(B, 1, H, W)`` bool (or 0/1) masks, each with foreground and background.
        seeds: ``(B,)`` int64 render seeds (for the texture and background fields).
        params: every name of :data:`PARAM_NAMES`, per row or shared.
        instances: optional ``(B, 1, H, W)`` integer instance labels.

    Returns:
        ``(B, 1, H, W)`` float32 image, > 0 everywhere.

    Raises:
        TypeError, ValueError: bad inputs or a missing parameter.
    """
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a torch.Tensor of shape (B, 1, H, W). Got {type(mask)}")
    like = check_images(mask.to(torch.float32), "mask")
    mask = check_mask(mask, like)
    b, _, h, w = mask.shape
    device = mask.device
    seeds_t = check_seeds(torch.as_tensor(seeds, device=device), b, device=device)
    p = _param_tensors(params, b, device)
    fg = mask.to(torch.float32)

    z_f = _unit_field(seeds_t, streams.TEXTURE_FINE, (h, w), p["texture_sigma_px"])
    z_c = _unit_field(seeds_t, streams.TEXTURE_COARSE, (h, w), p["coarse_sigma_px"])
    wc = _col(p["coarse_weight"])
    z = torch.sqrt(1 - wc) * z_f + torch.sqrt(wc) * z_c
    density = _gamma_wilson_hilferty(z, _col(p["gamma_shape"]), _col(p["gamma_scale"]))
    if instances is not None:
        density = density * _instance_gain(instances, mask, seeds_t, p["instance_log_sd"])
    rim = _col(p["rim_dimming"])
    if bool((rim > 0).any()):
        # Inside a large object the blurred mask is ~1; at its edge ~0.5: dim the rim.
        inner = gaussian_blur(fg, p["rim_sigma_px"])
        density = density * (1 - rim * (2 * (1 - inner)).clamp(0, 1))
    density = density * fg

    image = gaussian_blur(density, p["psf_sigma_px"])
    image = image + _col(p["haze_fraction"]) * _wide_blur(density, p["haze_sigma_px"])
    z_b = _unit_field(seeds_t, streams.BACKGROUND, (h, w), p["background_sigma_px"])
    v = _col(p["background_variation"])
    mean_fg = _col(p["gamma_shape"] * p["gamma_scale"])
    background = _col(p["background_fraction"]) * mean_fg * torch.exp(v * z_b - v * v / 2)
    return (image + background).to(torch.float32)


# ----------------------------------------------------------------------------- internals


def _wide_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Gaussian blur for haze: rows with sigma >= 6 px are blurred at half resolution.

    2x2 mean pooling, a blur of ``sigma / 2`` and bilinear upsampling add ~0.5 px of width
    (< 1 % of the variance at sigma >= 6 px) at a quarter of the cost. The choice depends on
    a row's own sigma, so rows stay independent of their batch.
    """
    h, w = x.shape[-2:]
    half = [(v >= 6.0 and h % 2 == 0 and w % 2 == 0) for v in sigma.tolist()]

    def blur(rows: Tensor, small: bool) -> Tensor:
        if not small:
            return gaussian_blur(x[rows], sigma[rows])
        low = gaussian_blur(F.avg_pool2d(x[rows], 2), sigma[rows] / 2)
        return F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)

    return by_key(half, blur, x.device)


def _device_of(x: object) -> torch.device:
    return x.device if isinstance(x, Tensor) else torch.device("cpu")


def _col(v: Tensor) -> Tensor:
    return v.reshape(-1, 1, 1, 1)


def _param_tensors(
    params: dict[str, Tensor | float] | list[dict[str, Any]], batch: int, device: torch.device
) -> dict[str, Tensor]:
    if isinstance(params, list):
        if len(params) != batch:
            raise ValueError(f"params must have one dict per row ({batch}). Got {len(params)}")
        missing = [n for n in PARAM_NAMES if any(n not in r for r in params)]
        if missing:
            raise ValueError(f"params must hold {PARAM_NAMES}. Got rows without {missing}")
        params = {n: torch.tensor([float(r[n]) for r in params]) for n in PARAM_NAMES}
    missing = [n for n in PARAM_NAMES if n not in params]
    if missing:
        raise ValueError(f"params must hold {PARAM_NAMES}. Got none for {missing}")
    out = {}
    for n in PARAM_NAMES:
        t = torch.as_tensor(params[n], dtype=torch.float32, device=device).reshape(-1)
        if t.shape[0] not in (1, batch) or not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
            raise ValueError(
                f"params[{n!r}] must be finite, >= 0, scalar or ({batch},). Got {t.tolist()}"
            )
        out[n] = t.expand(batch).contiguous()
    for n in ("gamma_shape", "gamma_scale", "texture_sigma_px", "psf_sigma_px"):
        if bool((out[n] <= 0).any()):
            raise ValueError(f"params[{n!r}] must be > 0. Got {out[n].tolist()}")
    if bool((out["coarse_weight"] > 1).any()):
        raise ValueError(f"params['coarse_weight'] must be in [0, 1]. Got {out['coarse_weight']}")
    return out


def _unit_field(seeds: Tensor, stream: int, shape: tuple[int, int], sigma: Tensor) -> Tensor:
    """Stationary Gaussian random field, unit variance, Gaussian correlation of ``sigma`` px.

    White noise circularly convolved (by FFT: the cost does not grow with ``sigma``) with a
    normalised separable kernel ``f``, folded onto the image period, has variance
    ``sum(f^2)`` exactly: dividing by its square root gives unit variance per row. Smooth
    fields are made on a grid ``2^j`` times coarser (at most 8x, keeping sigma >= 1.5 grid
    steps) and upsampled bicubically: 4-64x fewer random values and FFT points, which were
    most of the render time. A row's grid depends on its own sigma only, so rows stay
    independent of their batch.
    """
    h, w = shape
    b = seeds.shape[0]
    sig = sigma.reshape(-1).expand(b).clamp(min=1e-3)
    factors = []
    for v in sig.tolist():
        f = 1
        while f < 8 and v / (2 * f) >= 1.5 and h % (2 * f) == 0 and w % (2 * f) == 0:
            f *= 2
        factors.append(f)

    def field(rows: Tensor, f: int) -> Tensor:
        hs, ws = h // f, w // f
        noise = rng.finite_normal(seeds[rows], (hs, ws), stream)
        sr = sig[rows] / f
        ky, kx = _folded_kernel(sr, hs), _folded_kernel(sr, ws)
        # One transform per row: batched FFTs gave bits that depend on the batch size, and a
        # row's bytes must not (same seed, same bytes whatever the batch).
        out = torch.stack(
            [
                torch.fft.irfft2(
                    torch.fft.rfft2(noise[i])
                    * torch.fft.fft(ky[i])[:, None]
                    * torch.fft.rfft(kx[i])[None, :],
                    s=(hs, ws),
                )
                for i in range(noise.shape[0])
            ]
        )
        out = (out / torch.sqrt((ky * ky).sum(1) * (kx * kx).sum(1))[:, None, None])[:, None]
        if f > 1:
            out = F.interpolate(out, size=(h, w), mode="bicubic", align_corners=False)
        return out.to(torch.float32)

    return by_key(factors, field, seeds.device)


def _folded_kernel(sig: Tensor, period: int) -> Tensor:
    """Normalised Gaussian kernels (B, period) of radius ``ceil(4 sigma)``, wrapped onto
    ``period`` taps with the centre at index 0."""
    radius = int(math.ceil(4 * float(sig.max())))
    # Row i cut at ceil(4 sig_i), its own cut: a row's field does not depend on its batch.
    sig64 = sig.double()
    k = gaussian_taps(sig64, radius, cut=torch.ceil(4 * sig64))
    idx = torch.remainder(torch.arange(-radius, radius + 1, device=sig.device), period)
    folded = torch.zeros(k.shape[0], period, device=sig.device, dtype=k.dtype)
    folded.index_add_(1, idx, k)
    return folded.to(torch.float32)


def _gamma_wilson_hilferty(z: Tensor, shape: Tensor, scale: Tensor) -> Tensor:
    """Gamma(shape, scale) values from standard normal ``z`` (Wilson-Hilferty, 1931).

    The cube root of a gamma variable is nearly normal; the map is monotone, so a correlated
    Gaussian field becomes a correlated field with a (nearly exact, for shape >= 3) gamma
    marginal.
    """
    c = 1.0 / (9.0 * shape)
    return shape * scale * (1 - c + z * torch.sqrt(c)).clamp(min=0) ** 3


def _instance_gain(instances: Tensor, mask: Tensor, seeds: Tensor, log_sd: Tensor) -> Tensor:
    """Per-instance log-normal brightness (mean 1); 1 where the label is 0."""
    if not isinstance(instances, Tensor) or instances.shape != mask.shape:
        got = tuple(instances.shape) if isinstance(instances, Tensor) else type(instances)
        raise ValueError(
            f"instances must be an integer tensor of shape {tuple(mask.shape)}. Got {got}"
        )
    if instances.is_floating_point() or instances.dtype == torch.bool:
        raise TypeError(f"instances must hold integer labels. Got dtype {instances.dtype}")
    lab = instances.to(device=mask.device, dtype=torch.int64)
    if bool((lab < 0).any()):
        raise ValueError(f"instances must be >= 0. Got minimum {int(lab.min())}")
    n = int(lab.max()) + 1
    # Values depend only on (seed, label): the same nucleus gets the same gain in any batch.
    g = rng.finite_normal(seeds, (n,), streams.INSTANCE)
    sd = log_sd.reshape(-1, 1)
    gain = torch.exp(sd * g - sd * sd / 2)
    gain[:, 0] = 1.0
    b = lab.shape[0]
    return torch.gather(gain, 1, lab.reshape(b, -1)).reshape(lab.shape)

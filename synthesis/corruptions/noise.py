"""Camera noise at an exact signal-to-noise ratio (``docs/definitions.md#snr``).

The camera is simulated in physical order, in photo-electrons (e-)::

    noise-free image x  ->  mean electrons k x  ->  Poisson (shot noise)
      ->  + Normal(0, read_noise_e^2)  ->  ADU = round(offset_adu + e / e_per_adu)
      ->  clip to [0, adc_max_adu]  ->  integers

**SNR** is the camera equation on the structure being segmented,
``SNR = S / sqrt(S + B + sigma^2)``, with ``S = k c`` the mean foreground signal above
background, ``B = k beta`` the mean background per pixel (``c``, ``beta`` measured on the
noise-free image with the mask) and ``sigma^2 = read_noise_e^2 + e_per_adu^2 / 12``: rounding
to integer ADU is uniform noise of ``e_per_adu^2 / 12`` e-^2, counted so that the stored
integer image, not only the float one, has the target SNR. The exposure ``k`` solves the
equation in closed form (:func:`exposure_for_snr`); one batch can mix SNR levels.

Models (:data:`NOISE_MODELS`):

* ``"poisson_gaussian"``: ``e = Poisson(k x) + Normal(0, read_noise_e^2)``, exact Poisson
  sampling (:func:`synthesis.rng.poisson`).
* ``"gaussian"`` (the first release): ``e = k x + Normal(0, sigma_g^2)``, signal-independent,
  with ``k`` chosen as above (same image scale) and ``sigma_g^2 = (S / SNR)^2 - e_per_adu^2/12``
  so that the total noise, quantisation included, is ``S / SNR``.

Sample, then apply: :func:`noise_parameters` draws nothing and returns every per-image
number; :func:`apply_noise` uses only those and the row seeds, so a stored row can be
replayed bit for bit. :func:`add_noise` does both.

Random streams (per-row seeds, :mod:`synthesis.rng`): :data:`streams.SHOT` (Poisson),
:data:`streams.READ` (read noise), :data:`streams.GAUSSIAN` (``"gaussian"`` model).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from synthesis import rng
from synthesis.checks import check_foreground, check_images, check_mask, check_seeds, per_sample
from synthesis.levels import Camera
from synthesis.rng import streams

__all__ = [
    "DEFAULT_CAMERA",
    "NOISE_MODELS",
    "PARAM_KEYS",
    "NoiseResult",
    "add_noise",
    "apply_noise",
    "camera_images",
    "electrons_from_adu",
    "exposure_for_snr",
    "measure_snr",
    "noise_parameters",
]

logger = logging.getLogger(__name__)

NOISE_MODELS: tuple[str, ...] = ("poisson_gaussian", "gaussian")


#: Keys of the per-image parameter dict, every value a (B,) float tensor.
PARAM_KEYS: tuple[str, ...] = (
    "snr_target",
    "k_e_per_unit",
    "signal_e",
    "background_e",
    "read_noise_e",
    "offset_adu",
    "e_per_adu",
    "adc_max_adu",
    "noise_sigma_e",
)

#: The camera of the benchmark (``synthesis.levels.Camera`` defaults).
DEFAULT_CAMERA = Camera()

# Read noise whose negative excursions reach 0 ADU is clipped, which lowers the noise; warn
# when the offset is less than this many read-noise sigmas.
_OFFSET_MIN_SIGMAS = 4.0


@dataclass(frozen=True)
class NoiseResult:
    """Output of :func:`add_noise`.

    Attributes:
        adu: noisy camera images, int32 ``(B, 1, H, W)`` in ``[0, adc_max_adu]``.
        params: per-image ``(B,)`` tensors: :data:`PARAM_KEYS` and ``snr_measured``.
    """

    adu: Tensor
    params: dict[str, Tensor]


def exposure_for_snr(snr: Tensor, c: Tensor, beta: Tensor, var_e: Tensor) -> Tensor:
    """Electrons per image unit ``k`` with ``k c / sqrt(k c + k beta + var_e) = snr`` exactly.

    The positive root of ``c^2 k^2 - snr^2 (c + beta) k - snr^2 var_e = 0`` (spec section 3),
    computed in float64 for any broadcastable shapes.

    Args:
        snr: target SNR (> 0).
        c: foreground mean above background of the noise-free image (> 0, image units).
        beta: background mean of the noise-free image (>= 0, image units).
        var_e: signal-independent variance in e-^2 (read noise^2 + quantisation).

    Returns:
        ``k`` (float64), e- per image unit.
    """
    s2 = snr.double() ** 2
    c, beta, var_e = c.double(), beta.double(), var_e.double()
    b = s2 * (c + beta)
    return (b + torch.sqrt(b * b + 4 * c * c * s2 * var_e)) / (2 * c * c)


def noise_parameters(
    clean: Tensor,
    mask: Tensor,
    snr: float | Tensor,
    *,
    camera: Camera = DEFAULT_CAMERA,
    model: str = "poisson_gaussian",
) -> dict[str, Tensor]:
    """Per-image noise parameters that give ``clean`` the target SNR (draws nothing).

    Args:
        clean: noise-free images, float ``(B, 1, H, W)``, >= 0, any linear scale.
        mask: structure masks ``(B, 1, H, W)``, bool or 0/1; every image needs foreground and
            background, and its foreground must be brighter than its background on average.
        snr: target SNR, a scalar or ``(B,)`` (> 0): one batch can mix levels.
        camera: read noise, offset, gain and ADC range.
        model: one of :data:`NOISE_MODELS`.

    Returns:
        ``(B,)`` float32 tensors on ``clean``'s device, keyed by :data:`PARAM_KEYS`:
        ``snr_target``, ``k_e_per_unit`` (exposure), ``signal_e`` (S), ``background_e`` (B),
        ``read_noise_e``, ``offset_adu``, ``e_per_adu``, ``adc_max_adu`` and ``noise_sigma_e``
        (the Gaussian sigma of the ``"gaussian"`` model; NaN for ``"poisson_gaussian"``).

    Raises:
        TypeError: ``clean`` not a float tensor, ``mask`` not a tensor.
        ValueError: wrong shapes, negative or non-finite values, SNR <= 0, a mask without
            foreground or background, a foreground not brighter than the background, an
            unknown model or a camera with non-positive gain.

    Example:
        >>> x = torch.zeros(2, 1, 8, 8); x[:, :, 2:6, 2:6] = 1.0
        >>> p = noise_parameters(x + 0.1, x > 0, torch.tensor([2.0, 8.0]))
        >>> s, b, v = p["signal_e"], p["background_e"], 1.5**2 + 0.1**2 / 12
        >>> torch.allclose(s / torch.sqrt(s + b + v), torch.tensor([2.0, 8.0]))
        True
    """
    _check_model(model)
    clean = check_images(clean, "clean")
    mask = check_mask(mask, clean, require_foreground=False)
    batch, device = clean.shape[0], clean.device
    # Checked where it is given (a number: on the host), then moved: no device round trip.
    snr_t = per_sample(snr, batch, "snr", positive=True).to(device)
    _check_camera(camera)
    x = clean.flatten(1)
    n_fg, sum_fg, sum_all = _mask_sums(x, mask.flatten(1))
    beta = (sum_all - sum_fg) / (x.shape[1] - n_fg)
    c = sum_fg / n_fg - beta
    # Both checks from one copy to the host (one synchronisation on a GPU).
    host_n_fg, host_c = torch.stack([n_fg, c]).cpu()
    check_foreground(host_n_fg, x.shape[1])
    dim = torch.nonzero(host_c <= 0).flatten().tolist()
    if dim:
        raise ValueError(
            "clean must be brighter on the mask foreground than on the background (SNR is "
            f"defined on that contrast). Got foreground - background <= 0 in sample(s) {dim}"
        )
    var_read = camera.read_noise_e**2
    var_q = camera.e_per_adu**2 / 12
    var_e = torch.full_like(c, var_read + var_q)
    k = exposure_for_snr(snr_t, c, beta, var_e)
    signal = k * c
    if model == "gaussian":
        # Total noise (Gaussian + rounding) = S / SNR; sigma_g^2 >= 0 since S / SNR >
        # sqrt(var_e) >= sqrt(var_q) by the camera equation.
        sigma_g = torch.sqrt((signal / snr_t.double()) ** 2 - var_q)
    else:
        sigma_g = torch.full_like(c, math.nan)
    if camera.offset_adu * camera.e_per_adu < _OFFSET_MIN_SIGMAS * camera.read_noise_e:
        logger.warning(
            "camera offset %.3g e- is below %g read-noise sigmas (%.3g e-): negative read "
            "noise will be clipped at 0 ADU in dark pixels, lowering the realised noise",
            camera.offset_adu * camera.e_per_adu,
            _OFFSET_MIN_SIGMAS,
            camera.read_noise_e,
        )
    full = torch.ones_like(c)
    params = {
        "snr_target": snr_t.double(),
        "k_e_per_unit": k,
        "signal_e": signal,
        "background_e": k * beta,
        "read_noise_e": full * camera.read_noise_e,
        "offset_adu": full * camera.offset_adu,
        "e_per_adu": full * camera.e_per_adu,
        "adc_max_adu": full * camera.adc_max_adu,
        "noise_sigma_e": sigma_g,
    }
    return {key: value.to(torch.float32) for key, value in params.items()}


def apply_noise(
    clean: Tensor,
    params: dict[str, Tensor],
    seeds: Tensor,
    *,
    mask: Tensor | None = None,
    model: str = "poisson_gaussian",
) -> tuple[Tensor, Tensor]:
    """Noisy camera images from stored parameters and row seeds (replays bit for bit).

    ``clean`` may differ from the image the parameters were solved on, e.g. a blurred copy:
    the exposure ``k`` is the one in ``params`` (blur changes the optics, not the exposure).

    Args:
        clean: noise-free images, float ``(B, 1, H, W)``, >= 0, on any device.
        params: per-image parameters as returned by :func:`noise_parameters` (at least
            ``k_e_per_unit``, ``read_noise_e``, ``offset_adu``, ``e_per_adu``; the
            ``"gaussian"`` model needs ``noise_sigma_e``; ``adc_max_adu`` defaults to 65535).
            Scalars, ``(1,)`` or ``(B,)``.
        seeds: one int64 seed per image ``(B,)``: the noise of a row depends only on its seed.
        mask: structure masks; with them, ``snr_measured`` is :func:`measure_snr` (the camera
            equation on the realised image). Without, it is the target SNR scaled by the
            ratio of expected to realised noise RMS over the whole image
            (:func:`_noise_fidelity_snr`), which checks the noise but not the contrast.
        model: one of :data:`NOISE_MODELS`.

    Returns:
        ``(adu, snr_measured)``: int32 ``(B, 1, H, W)`` images in ``[0, adc_max_adu]`` and the
        realised SNR per image, float32 ``(B,)``.

    Raises:
        TypeError, ValueError: bad images, seeds, parameters or model.
    """
    _check_model(model)
    clean = check_images(clean, "clean")
    batch, device = clean.shape[0], clean.device
    seeds = check_seeds(seeds, batch, device)
    p = _replay_params(params, batch, device, model)
    if mask is not None:
        mask = check_mask(mask, clean)
    return _apply(clean, p, seeds, mask, model)


def _apply(
    clean: Tensor, p: dict[str, Tensor], seeds: Tensor, mask: Tensor | None, model: str
) -> tuple[Tensor, Tensor]:
    """:func:`apply_noise` on checked inputs."""
    if clean.device.type == "cpu":
        return _apply_cpu(clean, p, seeds, mask, model)
    return _apply_torch(clean, p, seeds, mask, model)


def _apply_torch(
    clean: Tensor, p: dict[str, Tensor], seeds: Tensor, mask: Tensor | None, model: str
) -> tuple[Tensor, Tensor]:
    """:func:`_apply` step by step (torch ops, and each step's compiled kernel on CPU): the
    path of other devices, and the reference :func:`_apply_cpu` is tested against."""
    batch, device = clean.shape[0], clean.device
    adu = torch.empty(clean.shape, dtype=torch.int32, device=device)
    snr_measured = torch.empty(batch, dtype=torch.float32, device=device)
    # Shot noise for the whole batch in one call (per-call costs paid once; the torch sampler
    # of other devices also finishes the few undecided values of all its blocks together).
    shot = _shot_noise(clean, p["k_e_per_unit"], seeds) if model == "poisson_gaussian" else None
    mean_e = clean.float() * _per_image(p["k_e_per_unit"])
    # Rows are independent (counter-based noise), so blocks of rows that stay in cache give
    # the same bytes as one pass over the batch, with a fraction of the memory traffic.
    for r0, r1 in _row_blocks(batch, clean[0].numel(), device):
        rows = slice(r0, r1)
        pr = {key: value[rows] for key, value in p.items()}
        shape = tuple(clean.shape[1:])
        if shot is not None:
            # e = read noise + shot noise (multiply, then add: no fused multiply-add).
            normal = rng.normal(seeds[rows], shape, streams.READ)
            scale, add = pr["read_noise_e"], shot[rows]
        else:
            normal = rng.normal(seeds[rows], shape, streams.GAUSSIAN)
            scale, add = pr["noise_sigma_e"], mean_e[rows]
        _to_adu(normal, scale, add, pr, adu[rows])
        if mask is not None:
            snr_measured[rows] = _measure_rows(adu[rows], mean_e[rows], mask[rows], pr)
        else:
            snr_measured[rows] = _noise_fidelity_snr(adu[rows], mean_e[rows], pr, model)
    return adu, snr_measured


def _apply_cpu(
    clean: Tensor, p: dict[str, Tensor], seeds: Tensor, mask: Tensor | None, model: str
) -> tuple[Tensor, Tensor]:
    """:func:`_apply` on CPU: the same values from compiled passes (Numba).

    Per block of rows: one pass writes ``2u - 1`` of the normal's uniforms
    (:func:`synthesis.rng.kernels.erfinv_arg_rows`), ``torch.erfinv`` runs in place on it
    (the very op of ``rng.normal``), and one pass scales it, adds the shot noise (or the
    expected electrons ``k x``), converts to ADU and sums the realised SNR's terms
    (:func:`synthesis.corruptions.noise_sums.noisy_rows`). ``k x`` is formed inside the
    passes that read it (the same float32 products), never stored. Fewer passes over memory
    than the step-by-step path, and torch's OpenMP workers, which spin for a while after each
    parallel op and take a core from the next compiled pass on a small machine, run only for
    ``erfinv`` (once per block).
    """
    from synthesis.corruptions import noise_sums
    from synthesis.rng import kernels
    from synthesis.rng.counter import _stream_const

    batch = clean.shape[0]
    n = clean[0].numel()
    x = clean.float().reshape(batch, n).contiguous()
    k = p["k_e_per_unit"].float()
    adu = torch.empty((batch, n), dtype=torch.int32)
    snr_measured = torch.empty(batch, dtype=torch.float32)
    shot = None
    if model == "poisson_gaussian":
        shot = _shot_noise(x, p["k_e_per_unit"], seeds)
        stream, scale = streams.READ, p["read_noise_e"].float()
    else:
        stream, scale = streams.GAUSSIAN, p["noise_sigma_e"].float()
    const = _stream_const(stream)
    f32 = {key: p[key].float() for key in ("e_per_adu", "offset_adu", "adc_max_adu")}
    fg = mask.reshape(batch, n) if mask is not None else None
    for r0, r1 in _row_blocks(batch, n, clean.device, _FUSED_BLOCK_ELEMS):
        y = torch.from_numpy(kernels.erfinv_arg_rows(seeds[r0:r1].numpy(), n, const))
        torch.erfinv(y, out=y)
        sums = noise_sums.noisy_rows(
            y.numpy(),
            scale[r0:r1].numpy(),
            shot[r0:r1].numpy() if shot is not None else None,
            x[r0:r1].numpy(),
            k[r0:r1].numpy(),
            f32["e_per_adu"][r0:r1].numpy(),
            f32["offset_adu"][r0:r1].numpy(),
            f32["adc_max_adu"][r0:r1].numpy(),
            adu[r0:r1].numpy(),
            fg[r0:r1].numpy() if fg is not None else None,
        )
        if sums is not None:
            n_fg, sum_fg, sum_all, resid = torch.from_numpy(sums).unbind(1)
            signal = sum_fg / n_fg - (sum_all - sum_fg) / (n - n_fg)
            snr_measured[r0:r1] = (signal / torch.sqrt(resid / n_fg)).to(torch.float32)
    adu = adu.reshape(clean.shape)
    if mask is None:
        mean_e = clean.float() * _per_image(p["k_e_per_unit"])
        for r0, r1 in _row_blocks(batch, n, clean.device):
            pr = {key: value[r0:r1] for key, value in p.items()}
            snr_measured[r0:r1] = _noise_fidelity_snr(adu[r0:r1], mean_e[r0:r1], pr, model)
    return adu, snr_measured


# Elements per block of rows on CPU (4 MB of float32 per intermediate). Each block launches
# the compiled steps once (a parallel launch costs tens of microseconds on two threads):
# 2**20 ran 13-17% faster than 2**18 at SNR 1 and 6-10% at SNR 8 (64 images of 256x256,
# one and two threads, issue 21); no value depends on the blocks (rows are independent).
_BLOCK_ELEMS = 1 << 20
# Elements per block of :func:`_apply_cpu` (16 MB of float32 per intermediate): each block
# hands over from the compiled passes to ``torch.erfinv`` and back, and torch's OpenMP
# workers spin for a while after their op, taking a core from the next compiled pass. On the
# 2-core machine of issue 21 (64 images of 256x256), 2**22 ran 15-20% faster than 2**20.
_FUSED_BLOCK_ELEMS = 1 << 22


def _shot_noise(clean: Tensor, k: Tensor, seeds: Tensor) -> Tensor:
    """Exact Poisson samples of the expected electrons ``k x`` (stream ``streams.SHOT``).

    On CPU the compiled sampler of :func:`synthesis.rng.poisson` is called directly, the same
    kernel on the same values: it forms the rates ``float32(x) * float32(k)`` itself (the
    float32 products of ``clean.float() * k``) and checks them as it reads them (finite,
    >= 0), where ``rng.poisson`` would need them in memory and run ``isfinite`` and ``< 0``
    over the whole batch (~10% of a call at SNR 8, one thread).
    """
    if clean.device.type != "cpu":
        return rng.poisson(clean.float() * _per_image(k), seeds, streams.SHOT)
    from synthesis.rng import kernels

    b = clean.shape[0]
    x = clean.float().reshape(b, -1).contiguous().numpy()
    out = kernels.poisson_scaled_rows(x, k.float().numpy(), seeds.numpy(), streams.SHOT)
    if out is None:
        raise ValueError("rate must be finite and >= 0. Got negative or non-finite values")
    return torch.from_numpy(out).reshape(clean.shape)


def _row_blocks(
    batch: int, per_row: int, device: torch.device, elems: int = 0
) -> list[tuple[int, int]]:
    if device.type != "cpu":
        return [(0, batch)]
    step = max(1, (elems or _BLOCK_ELEMS) // max(per_row, 1))
    return [(r, min(batch, r + step)) for r in range(0, batch, step)]


def _per_image(value: Tensor) -> Tensor:
    return value.float().view(-1, 1, 1, 1)


def add_noise(
    clean: Tensor,
    mask: Tensor,
    snr: float | Tensor,
    seeds: Tensor,
    *,
    camera: Camera = DEFAULT_CAMERA,
    model: str = "poisson_gaussian",
) -> NoiseResult:
    """:func:`noise_parameters` then :func:`apply_noise` (with the mask): noisy images at ``snr``.

    Args, Raises: as those two functions.

    Returns:
        :class:`NoiseResult` with ``adu`` (int32 ``(B, 1, H, W)``) and ``params`` (the
        parameters plus ``snr_measured``, all ``(B,)``).

    Example:
        >>> x = torch.full((2, 1, 64, 64), 10.0); x[:, :, 16:48, 16:48] = 100.0
        >>> res = add_noise(x, x > 50, torch.tensor([1.0, 8.0]), torch.tensor([1, 2]))
        >>> res.adu.dtype, res.adu.shape, torch.allclose(res.params["snr_measured"],
        ...     torch.tensor([1.0, 8.0]), rtol=0.05)
        (torch.int32, torch.Size([2, 1, 64, 64]), True)
    """
    params = noise_parameters(clean, mask, snr, camera=camera, model=model)  # checks inputs
    batch, device = clean.shape[0], clean.device
    checked = _replay_params(params, batch, device, model, check=False)
    mask = mask if mask.dtype == torch.bool else mask != 0
    adu, measured = _apply(
        clean, checked, check_seeds(seeds, batch, device), mask.to(device), model
    )
    return NoiseResult(adu=adu, params={**params, "snr_measured": measured})


def camera_images(
    clean: Tensor,
    mask: Tensor,
    snr: float | Tensor,
    seeds: Tensor,
    *,
    camera: Camera = DEFAULT_CAMERA,
    model: str = "poisson_gaussian",
    optics: Tensor | None = None,
) -> NoiseResult:
    """Noisy images of ``optics`` (default: ``clean``) with the exposure that gives ``clean``
    the target ``snr``, each row on ``camera.for_snr(its SNR)`` (:meth:`Camera.for_snr`:
    rows above the reference SNR get a coarser gain instead of saturating the ADC).

    Blur changes the optics, not the exposure: the exposure is solved on ``clean``. Rows that
    share a gain are solved and noised together; a row's bytes depend only on its own image,
    SNR and seed. With one gain (every SNR at or below the reference, or one SNR) this is
    :func:`noise_parameters` then :func:`apply_noise` on the whole batch.

    Returns:
        :class:`NoiseResult`: ``adu`` int32 ``(B, 1, H, W)`` and ``params`` (the parameters
        of each row, its gain included, plus ``snr_measured``), all ``(B,)``.

    Example:
        >>> x = torch.full((2, 1, 64, 64), 10.0); x[:, :, 16:48, 16:48] = 100.0
        >>> res = camera_images(x, x > 50, torch.tensor([8.0, 40.0]), torch.tensor([1, 2]))
        >>> res.params["e_per_adu"].tolist(), int(res.adu.max()) < 65535
        ([0.10000000149011612, 2.5], True)
    """
    batch, device = clean.shape[0], clean.device
    target = clean
    if optics is not None:
        target = check_images(optics, "optics")
        if tuple(optics.shape) != tuple(clean.shape) or optics.device != device:
            raise ValueError(
                f"optics must have the shape and device of clean {tuple(clean.shape)}, "
                f"{device}. Got {tuple(optics.shape)}, {optics.device}"
            )
    levels = torch.as_tensor(snr, dtype=torch.float64).reshape(-1).expand(batch)
    cameras = [camera.for_snr(float(v)) for v in levels.tolist()]

    def solve(rows: Tensor | slice, level: float | Tensor, cam: Camera) -> NoiseResult:
        # noise_parameters checks the images, mask and SNR; the parameters it returns need
        # no second check (each would cost a synchronisation on a GPU).
        params = noise_parameters(clean[rows], mask[rows], level, camera=cam, model=model)
        n = params["k_e_per_unit"].shape[0]
        fg = mask[rows]
        fg = (fg if fg.dtype == torch.bool else fg != 0).to(device)
        p = _replay_params(params, n, device, model, check=False)
        adu, measured = _apply(target[rows], p, check_seeds(seeds[rows], n, device), fg, model)
        return NoiseResult(adu=adu, params={**params, "snr_measured": measured})

    gains = sorted({c.e_per_adu for c in cameras})
    if len(gains) == 1:
        return solve(slice(None), snr, cameras[0])
    parts = []
    for gain in gains:
        rows = torch.tensor([i for i, c in enumerate(cameras) if c.e_per_adu == gain])
        cam = cameras[int(rows[0])]
        parts.append((rows, solve(rows.to(clean.device), levels[rows].float(), cam)))
    first = parts[0][1]
    adu = first.adu.new_empty((batch, *first.adu.shape[1:]))
    params = {k: v.new_empty(batch) for k, v in first.params.items()}
    for rows, part in parts:
        idx = rows.to(adu.device)
        adu[idx] = part.adu
        for k, v in part.params.items():
            params[k][rows.to(v.device)] = v
    return NoiseResult(adu=adu, params=params)


def electrons_from_adu(adu: Tensor, params: dict[str, Tensor]) -> Tensor:
    """Electrons ``(adu - offset_adu) * e_per_adu`` (float64) of ``(B, 1, H, W)`` ADU images."""
    b = adu.shape[0]
    offset = per_sample(params["offset_adu"], b, "offset_adu", device=adu.device)
    gain = per_sample(params["e_per_adu"], b, "e_per_adu", device=adu.device, positive=True)
    view = (-1, *([1] * (adu.dim() - 1)))
    return (adu.double() - offset.double().view(view)) * gain.double().view(view)


def measure_snr(adu: Tensor, clean: Tensor, mask: Tensor, params: dict[str, Tensor]) -> Tensor:
    """Realised SNR of noisy images: the camera equation evaluated on the samples.

    With electrons ``e = (adu - offset_adu) e_per_adu`` and expected electrons ``k x``::

        S_hat = mean_fg(e) - mean_bg(e)
        noise = sqrt(mean_fg((e - k x)^2))
        SNR   = S_hat / noise

    ``noise^2`` estimates ``mean_fg(k x) + read^2 + e_per_adu^2/12 = S + B + sigma^2``, the
    denominator of the camera equation, so the expectation matches the target up to the
    ``O(1/n)`` bias of a ratio (n = foreground pixels).

    Args:
        adu: noisy images ``(B, 1, H, W)``, integer or float ADU.
        clean: the noise-free images they were made from, float ``(B, 1, H, W)``.
        mask: structure masks ``(B, 1, H, W)`` with foreground and background.
        params: per-image ``k_e_per_unit``, ``offset_adu`` and ``e_per_adu``.

    Returns:
        float32 ``(B,)``.

    Raises:
        TypeError, ValueError: mismatched shapes, empty masks.
    """
    clean = check_images(clean, "clean")
    mask = check_mask(mask, clean)
    if tuple(adu.shape) != tuple(clean.shape):
        raise ValueError(
            f"adu must have the shape of clean {tuple(clean.shape)}. Got {tuple(adu.shape)}"
        )
    b = clean.shape[0]
    p = {
        "k_e_per_unit": per_sample(params["k_e_per_unit"], b, "k_e_per_unit", device=clean.device),
        "offset_adu": per_sample(params["offset_adu"], b, "offset_adu", device=clean.device),
        "e_per_adu": per_sample(
            params["e_per_adu"], b, "e_per_adu", device=clean.device, positive=True
        ),
    }
    out = torch.empty(b, dtype=torch.float32, device=clean.device)
    for r0, r1 in _row_blocks(b, clean[0].numel(), clean.device):
        rows = slice(r0, r1)
        mean_e = clean[rows].float() * _per_image(p["k_e_per_unit"][rows])
        out[rows] = _measure_rows(adu[rows], mean_e, mask[rows], {k: v[rows] for k, v in p.items()})
    return out


def _mask_sums(x: Tensor, fg: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(n_fg, sum_fg, sum_all)`` per row of ``(B, N)`` values and a bool mask, float64.

    On CPU one compiled pass (:func:`synthesis.corruptions.noise_sums.mask_sums`, a fixed summation order);
    elsewhere torch reductions.
    """
    if x.device.type == "cpu":
        from synthesis.corruptions import noise_sums

        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        n, s_fg, s_all = noise_sums.mask_sums(x.detach().numpy(), fg.numpy())
        return torch.from_numpy(n).double(), torch.from_numpy(s_fg), torch.from_numpy(s_all)
    n_fg = fg.sum(1).double()
    sum_fg = torch.where(fg, x, 0.0).sum(1, dtype=torch.float64)
    return n_fg, sum_fg, x.sum(1, dtype=torch.float64)


def _measure_rows(adu: Tensor, mean_e: Tensor, mask: Tensor, p: dict[str, Tensor]) -> Tensor:
    """:func:`measure_snr` of a block of rows, given the expected electrons ``k x``.

    float32 per pixel (electrons below 2**16 e- keep ~1e-3 e- resolution, far under any read
    noise), float64 sums (on CPU in one compiled pass, :func:`synthesis.corruptions.noise_sums.snr_sums`).
    """
    n = adu[0].numel()
    if adu.device.type == "cpu":
        from synthesis.corruptions import noise_sums

        gain = p["e_per_adu"].float()
        sums = noise_sums.snr_sums(
            adu.flatten(1).numpy(),
            mean_e.detach().flatten(1).float().numpy(),
            mask.flatten(1).numpy(),
            gain.numpy(),
            (p["offset_adu"].float() * gain).numpy(),
        )
        n_fg, sum_fg, sum_all, resid = torch.from_numpy(sums).unbind(1)
    else:
        gain = p["e_per_adu"].float().view(-1, 1)
        e = adu.flatten(1).float().mul_(gain).sub_(p["offset_adu"].float().view(-1, 1) * gain)
        fg = mask.flatten(1)
        n_fg = fg.sum(1, dtype=torch.float64)
        sum_fg = torch.where(fg, e, 0.0).sum(1, dtype=torch.float64)
        sum_all = e.sum(1, dtype=torch.float64)
        e.sub_(mean_e.flatten(1)).square_().masked_fill_(~fg, 0.0)
        resid = e.sum(1, dtype=torch.float64)
    signal = sum_fg / n_fg - (sum_all - sum_fg) / (n - n_fg)
    return (signal / torch.sqrt(resid / n_fg)).to(torch.float32)


def _noise_fidelity_snr(adu: Tensor, mean_e: Tensor, p: dict[str, Tensor], model: str) -> Tensor:
    """Target SNR times expected / realised noise RMS over all pixels (no mask needed)."""
    gain = p["e_per_adu"].float().view(-1, 1)
    e = adu.flatten(1).float().mul_(gain).sub_(p["offset_adu"].float().view(-1, 1) * gain)
    mu = mean_e.flatten(1)
    var_q = p["e_per_adu"].double() ** 2 / 12
    if model == "poisson_gaussian":
        expected = mu.mean(1, dtype=torch.float64) + p["read_noise_e"].double() ** 2 + var_q
    else:
        expected = p["noise_sigma_e"].double() ** 2 + var_q
    realised = e.sub_(mu).square_().mean(1, dtype=torch.float64)
    return (p["snr_target"].double() * torch.sqrt(expected / realised)).to(torch.float32)


def _to_adu(normal: Tensor, scale: Tensor, add: Tensor, p: dict[str, Tensor], out: Tensor) -> None:
    """Electrons ``e = normal * scale + add`` (per image ``scale``; multiply, then add), then
    ``round(offset + e / e_per_adu)`` clipped to ``[0, adc_max]``, into the int32 ``out``.

    On CPU one compiled pass (:func:`synthesis.corruptions.noise_sums.adu_rows`, the same
    float32 operations in the same order); elsewhere torch ops, in place on ``normal``.
    """
    if normal.device.type == "cpu":
        from synthesis.corruptions import noise_sums

        b = normal.shape[0]
        noise_sums.adu_rows(
            normal.reshape(b, -1).numpy(),
            scale.float().numpy(),
            add.float().reshape(b, -1).numpy(),
            p["e_per_adu"].float().numpy(),
            p["offset_adu"].float().numpy(),
            p["adc_max_adu"].float().numpy(),
            out=out.reshape(b, -1).numpy(),
        )
        return
    view = (-1, 1, 1, 1)
    e = normal.mul_(_per_image(scale)).add_(add)
    e.div_(p["e_per_adu"].float().view(view)).add_(p["offset_adu"].float().view(view))
    e.round_().clamp_(min=0.0)
    out.copy_(torch.minimum(e, p["adc_max_adu"].float().view(view)).to(torch.int32))


def _replay_params(
    params: dict[str, Tensor], batch: int, device: torch.device, model: str, check: bool = True
) -> dict[str, Tensor]:
    """``params`` as ``(B,)`` tensors on ``device`` (``adc_max_adu`` and ``snr_target``
    defaulted), checked unless ``check`` is False: parameters that :func:`noise_parameters`
    just returned are valid by construction, and each check is a synchronisation on a GPU."""
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of per-image tensors. Got {type(params).__name__}")
    needed = ["k_e_per_unit", "read_noise_e", "offset_adu", "e_per_adu"]
    if model == "gaussian":
        needed.append("noise_sigma_e")
    missing = [key for key in needed if key not in params]
    if missing:
        raise ValueError(f"params lacks {missing} for model {model!r}. Got keys {sorted(params)}")
    keys = [
        k for k in params if k in PARAM_KEYS and not (k == "noise_sigma_e" and model != "gaussian")
    ]
    if not check:
        p = {key: params[key].expand(batch).to(device, torch.float32) for key in keys}
    else:
        p = {key: per_sample(params[key], batch, key, device=device) for key in keys}
    p.setdefault("adc_max_adu", torch.full((batch,), 65535.0, device=device))
    p.setdefault("snr_target", torch.full((batch,), math.nan, device=device))
    if not check:
        return p
    for key in ("k_e_per_unit", "e_per_adu", "adc_max_adu"):
        if bool((p[key] <= 0).any()):
            raise ValueError(f"{key} must be > 0. Got {p[key].tolist()}")
    for key in ("read_noise_e", "offset_adu") + (("noise_sigma_e",) if model == "gaussian" else ()):
        if bool((p[key] < 0).any()):
            raise ValueError(f"{key} must be >= 0. Got {p[key].tolist()}")
    return p


def _check_model(model: str) -> None:
    if model not in NOISE_MODELS:
        raise ValueError(f"model must be one of {NOISE_MODELS}. Got {model!r}")


def _check_camera(camera: Camera) -> None:
    if not isinstance(camera, Camera):
        raise TypeError(f"camera must be a synthesis.levels.Camera. Got {type(camera).__name__}")
    if not camera.e_per_adu > 0 or not camera.adc_max_adu > 0:
        raise ValueError(
            f"camera needs e_per_adu > 0 and adc_max_adu > 0. Got {camera.e_per_adu}, "
            f"{camera.adc_max_adu}"
        )
    if camera.read_noise_e < 0 or camera.offset_adu < 0:
        raise ValueError(
            "camera needs read_noise_e >= 0 and offset_adu >= 0. Got "
            f"{camera.read_noise_e}, {camera.offset_adu}"
        )

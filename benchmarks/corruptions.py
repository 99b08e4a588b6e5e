"""Throughput of the corruptions (noise, SIB, SVB) against per-image NumPy/SciPy/OpenCV code.

Measures, in the same run, on the same 256x256 scenes (bars and blobs, textured foreground,
dim background, i.e. the contrast the SNR definition uses):

- noise at the reference SNR 8 and at every SNR level: :func:`synthesis.corruptions.noise.add_noise`
  (parameters, exact Poisson, read noise, ADU rounding and clipping, realised SNR) against a
  per-image NumPy reference of the same maths (``Generator.poisson`` + ``normal``, the same
  closed form, rounding and SNR measurement);
- SIB level 3: :func:`synthesis.corruptions.psf.sib` against ``scipy.ndimage.gaussian_filter`` (same
  kernel, ``mode="reflect"``) and OpenCV's ``GaussianBlur`` (``BORDER_REFLECT``) if installed;
- SVB level 3 with K = 4 and the default K rings: :func:`synthesis.corruptions.psf.space_variant_blur`
  against SIB and against the same basis written per image with SciPy;
- optionally (``--svb-error``) the relative error of the SVB basis against the exact
  per-pixel space-variant convolution for K = 2..8.

Targets (issue 21, on every CPU type): noise and SIB at least 3x their NumPy and SciPy
references, SVB with K = 4 at most 1.5x SIB. The machine line names the CPU model and its
vector extensions, and ``cpu capability`` the kernels torch dispatches to (its
``get_cpu_capability()``), so figures from AVX2 and AVX-512 machines can be told apart.

Timings are the best of ``--repeats`` interleaved runs (the machine may be shared). On CUDA
(``--device cuda``, batch >= 1024 advised) the script also prints the fraction of the memory
bandwidth limit achieved, from the minimal traffic of each operation (noise: read float32
image + bool mask, write int32 ADU = 9 B/px; blur: read + write float32 = 8 B/px) and
``--peak-gbps`` (default 3350 GB/s, H100 SXM).

    python benchmarks/corruptions.py [--batch 64] [--device cpu|cuda] [--threads N] [--json]
"""

from __future__ import annotations

import argparse
import math

import _common
import numpy as np
import torch
from _common import emit, interleaved
from scipy import ndimage

from synthesis.corruptions import noise, psf
from synthesis.levels import REFERENCE_SNR, SIB_SIGMA_PX, SNR_LEVELS, SVB, Camera

try:  # optional baseline
    import cv2
except ImportError:  # pragma: no cover - depends on the machine
    cv2 = None


def scenes(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise-free images (float32) and masks: random bars and blobs, texture, background 0.1."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    cy, cx = (torch.rand(n, 10, 1, 1, generator=g) * size for _ in range(2))
    r = 4 + torch.rand(n, 10, 1, 1, generator=g) * size / 12
    blobs = (((yy - cy) ** 2 + (xx - cx) ** 2) < r**2).any(1, keepdim=True)
    bars = ((yy + 3 * xx) % 37 < 3)[None, None] & (torch.rand(n, 1, 1, 1, generator=g) < 2)
    mask = blobs | bars
    texture = 1.0 + 0.5 * torch.rand(n, 1, size, size, generator=g)
    clean = torch.where(mask, texture, torch.full_like(texture, 0.1))
    return clean, mask


# --- NumPy/SciPy references (one image at a time, the same maths) ------------------------


def numpy_noise(clean: np.ndarray, mask: np.ndarray, snr: float, cam: Camera, seed: int) -> float:
    rng = np.random.default_rng(seed)
    fg = mask.astype(bool)
    beta = clean[~fg].mean()
    c = clean[fg].mean() - beta
    var_e = cam.read_noise_e**2 + cam.e_per_adu**2 / 12
    s2 = snr * snr
    k = (s2 * (c + beta) + math.sqrt(s2 * s2 * (c + beta) ** 2 + 4 * c * c * s2 * var_e)) / (
        2 * c * c
    )
    mean_e = k * clean
    e = rng.poisson(mean_e) + rng.normal(0.0, cam.read_noise_e, clean.shape)
    adu = np.clip(np.round(cam.offset_adu + e / cam.e_per_adu), 0, cam.adc_max_adu).astype(np.int32)
    e_hat = (adu - cam.offset_adu) * cam.e_per_adu
    s_hat = e_hat[fg].mean() - e_hat[~fg].mean()
    return float(s_hat / np.sqrt(((e_hat - mean_e)[fg] ** 2).mean()))


def scipy_svb(img: np.ndarray, sigmas: list[float], weights: np.ndarray) -> np.ndarray:
    out = np.zeros_like(img)
    for k, s in enumerate(sigmas):
        out += ndimage.gaussian_filter(img * weights[k], s, mode="reflect", truncate=4.0)
    return out


def cv2_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    r = int(4.0 * sigma + 0.5)
    return cv2.GaussianBlur(
        img, (2 * r + 1, 2 * r + 1), sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT
    )


# --- benchmark ----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    _common.set_threads(args)
    clean, mask = scenes(args.batch, args.size)
    clean, mask = clean.to(device), mask.to(device)
    cpu_clean, cpu_mask = clean.cpu().numpy()[:, 0], mask.cpu().numpy()[:, 0]
    ref_n = min(args.batch, args.ref_images)  # the per-image references run on a subset
    seeds = torch.arange(args.batch, device=device)
    cam = Camera()
    px = args.size * args.size
    results: dict[str, dict] = {}

    def record(name: str, t_torch: float, t_refs: dict[str, float], bytes_per_px: float) -> None:
        row = {"torch_img_s": args.batch / t_torch}
        for ref, t in t_refs.items():
            row[f"{ref}_img_s"] = ref_n / t
            row[f"ratio_vs_{ref}"] = row["torch_img_s"] / row[f"{ref}_img_s"]
        if device.type == "cuda":
            gbps = args.batch * px * bytes_per_px / t_torch / 1e9
            row["achieved_gbps"] = gbps
            row["fraction_of_peak_bandwidth"] = gbps / args.peak_gbps
        results[name] = row

    # Noise: the reference SNR and every level (8 is the reference).
    levels = [REFERENCE_SNR] + [float(s) for s in SNR_LEVELS if s != REFERENCE_SNR]
    for snr in levels:
        t = interleaved(
            {
                "torch": lambda s=snr: noise.add_noise(clean, mask, s, seeds),
                "numpy": lambda s=snr: [
                    numpy_noise(cpu_clean[i], cpu_mask[i], s, cam, i) for i in range(ref_n)
                ],
            },
            args.repeats,
            device,
        )
        name = "noise_reference_snr8" if snr == REFERENCE_SNR else f"noise_snr{int(snr)}"
        record(name, t.pop("torch"), t, 9)

    # SIB level 3.
    sigma = SIB_SIGMA_PX[3]
    runs = {
        "torch": lambda: psf.sib(clean, 3),
        "scipy": lambda: [
            ndimage.gaussian_filter(cpu_clean[i], sigma, mode="reflect", truncate=4.0)
            for i in range(ref_n)
        ],
    }
    if cv2 is not None:
        runs["opencv"] = lambda: [cv2_blur(cpu_clean[i], sigma) for i in range(ref_n)]
    t = interleaved(runs, args.repeats, device)
    t_sib = t.pop("torch")
    record("sib_level3", t_sib, t, 8)

    # SVB level 3: K = 4 and the default.
    for rings in sorted({4, SVB.rings}):
        nodes = psf.svb_ring_sigmas(sigma, rings, SVB.sigma_center_px)
        w = psf.svb_weights(psf.svb_sigma_map(args.size, args.size, sigma), nodes).float().numpy()
        t = interleaved(
            {
                "torch": lambda r=rings: psf.space_variant_blur(clean, sigma, rings=r),
                "scipy": lambda n=nodes, ww=w: [
                    scipy_svb(cpu_clean[i], n, ww) for i in range(ref_n)
                ],
            },
            args.repeats,
            device,
        )
        t_t = t.pop("torch")
        record(f"svb_level3_K{rings}", t_t, t, 8)
        results[f"svb_level3_K{rings}"]["cost_vs_sib"] = t_t / t_sib

    out = {
        "machine": _common.machine(device, threads=True, load=True),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "batch": args.batch,
        "size": args.size,
        "reference_images": ref_n,
        "repeats": args.repeats,
        "opencv": None if cv2 is None else cv2.__version__,
        "results": results,
    }
    if args.svb_error:
        out["svb_error_vs_exact"] = svb_errors(args.size)
    return out


def svb_errors(size: int) -> dict[str, dict[str, float]]:
    """Relative RMS error (vs what the blur changed) of the basis against the exact operator."""
    g = torch.Generator().manual_seed(1)
    clean, _ = scenes(1, size)
    dots = torch.zeros(1, 1, size, size)
    dots[..., 4::16, 4::16] = 1.0
    x = torch.cat([torch.rand(1, 1, size, size, generator=g), clean, dots])
    out = {}
    for level in (1, 3, 5):
        s = SIB_SIGMA_PX[level]
        exact = psf.space_variant_blur_exact(x, s)
        change = (exact - x.double()).pow(2).mean((1, 2, 3)).sqrt()
        for rings in (2, 3, 4, 5, 6, 8):
            y = psf.space_variant_blur(x, s, rings=rings).double()
            rel = (y - exact).pow(2).mean((1, 2, 3)).sqrt() / change
            peak = (y - exact).abs().amax((1, 2, 3)) / exact.abs().amax((1, 2, 3))
            out[f"level{level}_K{rings}"] = {
                "rel_rms_noise": float(rel[0]),
                "rel_rms_scene": float(rel[1]),
                "rel_rms_points": float(rel[2]),
                "max_err_over_peak_points": float(peak[2]),
            }
    return out


def print_table(out: dict) -> None:
    print(f"machine: {out['machine']}; torch CPU capability {out['cpu_capability']}")
    print(
        f"batch {out['batch']} x {out['size']}x{out['size']}; per-image references on "
        f"{out['reference_images']} images; best of {out['repeats']}; OpenCV {out['opencv']}"
    )
    for name, row in out["results"].items():
        parts = [f"{name:22s} torch {row['torch_img_s']:8.1f} img/s"]
        for key, value in row.items():
            if key.endswith("_img_s") and key != "torch_img_s":
                ref = key[: -len("_img_s")]
                parts.append(f"{ref} {value:7.1f} img/s (x{row[f'ratio_vs_{ref}']:.2f})")
        if "cost_vs_sib" in row:
            parts.append(f"cost {row['cost_vs_sib']:.2f}x SIB")
        if "fraction_of_peak_bandwidth" in row:
            parts.append(
                f"{row['achieved_gbps']:.0f} GB/s = {100 * row['fraction_of_peak_bandwidth']:.1f}% of peak"
            )
        print("  ".join(parts))
    for key, row in out.get("svb_error_vs_exact", {}).items():
        print(f"svb error {key:12s} " + "  ".join(f"{k} {v:.4f}" for k, v in row.items()))


def main(argv: list[str] | None = None) -> None:
    parser = _common.parser(__doc__)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    _common.add_device(parser, "cpu")
    _common.add_threads(parser)
    _common.add_repeats(parser, 3)
    parser.add_argument(
        "--ref-images", type=int, default=64, help="images for the per-image references"
    )
    parser.add_argument("--peak-gbps", type=float, default=3350.0, help="H100 SXM: 3350")
    parser.add_argument("--svb-error", action="store_true", help="also measure SVB vs exact")
    _common.add_json(parser)
    args = parser.parse_args(argv)
    emit(run(args), args.json, print_table)


if __name__ == "__main__":
    main()

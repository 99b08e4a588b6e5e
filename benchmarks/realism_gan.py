"""Realism of the GAN renderer (pix2pix + denoiser) beside the physics renderer, on BBBC038.

For the real ``test`` tiles (never seen by the generator: ``train-synthesizer`` learns from
``train`` + ``validation``), on the same masks:

- ``physics``: :func:`synthesis.render.physics.render` with the tile's mask and instances;
- ``gan_denoised``: the GAN renderer's output (generator, then denoiser), the image a build
  uses;
- ``gan_raw``: the generator's output before denoising (it carries the noise it learned).

Every image is normalised as in ``benchmarks/realism.py`` (offset removed, divided by the
foreground mean). ``physics`` and ``gan_denoised`` are noise-free, so both get the real
tile's camera noise (``var = b + a x`` measured on the tile; the same noise draws for both),
exactly as ``realism.py`` does for the physics renderer; ``gan_raw`` is compared as it is.
Distances to the real tile, per tile then averaged (functions of ``benchmarks/realism.py``):
intensity histogram (Wasserstein-1, all pixels and foreground), radially averaged power
spectrum (mean |log10 ratio|), background/foreground level and foreground CV. The baseline
is the physics renderer: ratios are ``gan / physics`` (< 1: the GAN is closer to real).

Also reported: the residual background noise relative to the contrast
(:func:`synthesis.render.denoise.residual_noise`) of real, raw and denoised GAN images, and the
rendering speed of both renderers (images/s, 256x256, this machine).

Writes the grid real | physics | GAN raw | GAN denoised to
``docs/images/realism_gan_nucleus.png``.

    python benchmarks/realism_gan.py --weights DIR [--images 80] [--json]
"""

from __future__ import annotations

import time
from pathlib import Path

import _common
import numpy as np
import torch
from _common import ROOT, best_of, emit, shown
from realism import (
    STREAM_BENCH_NOISE,
    add_distances,
    machine,
    normalise,
    real_tiles,
    render_seeds,
    save_grid,
    tile_tensors,
    with_camera_noise,
)

from synthesis import rng
from synthesis.render.denoise import residual_noise
from synthesis.render.gan import GanRenderer
from synthesis.render.physics import render

NAMES = ("physics", "gan_denoised", "gan_raw")


def compare(items: list, renderer: GanRenderer, seed: int) -> tuple[dict, list]:
    """Distances to the real tiles, residual noise, and the grid panels."""
    mask, inst = tile_tensors(items)
    seeds = render_seeds(items, seed)
    physics = render(mask, seeds, "nucleus", instances=inst).image[:, 0].double().numpy()
    raw_t, den_t = renderer.render_unit(mask, seeds)
    raw, den = raw_t[:, 0].double().numpy(), den_t[:, 0].double().numpy()
    # The draws realism.py adds to the physics renderer: the same noise for both clean images.
    noise = rng.normal(seeds, (2, *mask.shape[2:]), STREAM_BENCH_NOISE).double().numpy()
    per: dict[str, dict[str, list[float]]] = {n: {} for n in NAMES}
    panels = []
    for k, fg, real, camera in real_tiles(items):
        syn = {
            name: with_camera_noise(clean, fg, camera, noise[k, 0])
            for name, clean in (("physics", physics[k]), ("gan_denoised", den[k]))
        }
        syn["gan_raw"] = normalise(raw[k], fg)
        add_distances(per, real, syn, fg)
        panels.append((real, syn["physics"], syn["gan_raw"], syn["gan_denoised"], fg))
    table = {}
    for metric in per["physics"]:
        row = {n: float(np.mean(per[n][metric])) for n in NAMES}
        for n in ("gan_denoised", "gan_raw"):
            row[f"{n}_over_physics"] = row[n] / max(row["physics"], 1e-12)
        table[metric] = row
    real_t = torch.from_numpy(np.stack([it.image for it in items]).astype(np.float32))[:, None]
    resid = {}
    for name, x in (
        ("real", real_t),
        ("gan_raw", raw_t),
        ("gan_denoised", den_t),
        ("physics", torch.from_numpy(physics)[:, None]),
    ):
        r = residual_noise(x.float(), mask)
        resid[name] = {k: float(r[k].median()) for k in ("rel_white", "rel_total", "snr8_excess")}
    return {"distances": table, "residual_noise_median": resid, "tiles": len(items)}, panels


def write_grid(panels: list, path: Path, rows: int = 4) -> int:
    """Rows of real | physics | GAN raw | GAN denoised, each stretched to its 0.5-99.5 %."""
    order = np.argsort([p[-1].mean() for p in panels])
    pick = [panels[i] for i in order[np.linspace(0, len(order) - 1, rows).round().astype(int)]]
    labels = ("real (BBBC038)", "physics + camera noise", "GAN (raw)", "GAN denoised + cam. noise")
    tiles = [list(imgs) for *imgs, _ in pick]
    return save_grid(tiles, labels, path, head=18, label_at=(6, 3), gap=4, bottom=4)


def speed(renderer: GanRenderer, items: list, batch: int, repeats: int) -> dict[str, float]:
    """Images/s of both renderers on the same masks (the physics renderer is the baseline)."""
    sub = (items * ((batch + len(items) - 1) // len(items)))[:batch]
    mask, inst = tile_tensors(sub)
    seeds = torch.arange(batch) + 50_000
    render(mask[:2], seeds[:2], "nucleus", instances=inst[:2])
    renderer(mask[:2], seeds[:2], "nucleus")
    t_phys = best_of(lambda: render(mask, seeds, "nucleus", instances=inst), repeats)
    t_gan = best_of(lambda: renderer(mask, seeds, "nucleus"), repeats)
    return {
        "physics_img_per_s": batch / t_phys,
        "gan_img_per_s": batch / t_gan,
        "gan_over_physics_speed": t_phys / t_gan,
    }


def main(argv: list[str] | None = None) -> dict:
    p = _common.parser(__doc__)
    p.add_argument(
        "--weights", type=Path, required=True, help="folder made by train-synthesizer (none ship)"
    )
    _common.add_tiles(p, grid=ROOT / "docs" / "images" / "realism_gan_nucleus.png")
    _common.add_speed(p)
    _common.add_json(p)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    _, items = _common.load_tiles(args)
    renderer = GanRenderer.from_weights(args.weights, "nucleus", "cpu")
    result: dict = {
        "machine": machine(),
        "weights": renderer.info,
        "data": str(args.data),
        "split": args.split,
    }
    result["images"], panels = compare(items, renderer, args.seed)
    if not args.no_grid:
        result["grid_bytes"] = write_grid(panels, args.grid)
        result["grid"] = shown(args.grid)
    result["speed"] = speed(renderer, items, args.speed_batch, args.repeats)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    emit(result, args.json, report)
    return result


def report(r: dict) -> None:
    print(f"machine: {r['machine']}")
    print(
        f"generator {r['weights']['generator_sha256'][:12]}, denoiser {str(r['weights']['denoiser_sha256'])[:12]}"
    )
    print(f"BBBC038 {r['split']} tiles: {r['images']['tiles']}")
    print("\nmean distance to the real tile (lower is closer); baseline = physics renderer")
    print(
        f"  {'metric':12s} {'physics':>9s} {'gan_den':>9s} {'gan_raw':>9s} {'den/phys':>9s} {'raw/phys':>9s}"
    )
    for k, v in r["images"]["distances"].items():
        print(
            f"  {k:12s} {v['physics']:9.4f} {v['gan_denoised']:9.4f} {v['gan_raw']:9.4f} "
            f"{v['gan_denoised_over_physics']:9.2f} {v['gan_raw_over_physics']:9.2f}"
        )
    print("\nresidual background noise / contrast (medians; snr8_excess = noise added at SNR 8)")
    for k, v in r["images"]["residual_noise_median"].items():
        print(
            f"  {k:13s} white {v['rel_white']:.4f}  total {v['rel_total']:.4f}  snr8_excess {v['snr8_excess']:.4f}"
        )
    s = r["speed"]
    print(
        f"\nspeed (256x256, images/s): physics {s['physics_img_per_s']:.1f}, GAN {s['gan_img_per_s']:.1f} "
        f"(GAN/physics {s['gan_over_physics_speed']:.2f}x)"
    )
    if "grid" in r:
        print(f"grid: {r['grid']} ({r['grid_bytes'] / 1024:.0f} KB)")
    print(f"{r['seconds']} s")


if __name__ == "__main__":
    main()

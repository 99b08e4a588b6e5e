"""Realism of the GAN renderer (pix2pix + denoiser) beside the physics renderer, on BBBC038.

For the real ``test`` tiles (never seen by the generator: ``train-synthesizer`` learns from
``train`` + ``validation``), on the same masks:

- ``physics``: :func:`synthesis.render.render` with the tile's mask and instances;
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
(:func:`synthesis.denoise.residual_noise`) of real, raw and denoised GAN images, and the
rendering speed of both renderers (images/s, 256x256, this machine).

Writes the grid real | physics | GAN raw | GAN denoised to
``docs/images/realism_gan_nucleus.png``.

    python benchmarks/realism_gan.py [--weights DIR] [--images 80] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.realism import (  # noqa: E402
    STREAM_BENCH_NOISE,
    best_of,
    camera_noise,
    distances,
    machine,
    normalise,
)
from synthesis import rng  # noqa: E402
from synthesis.denoise import residual_noise  # noqa: E402
from synthesis.gan_renderer import WEIGHTS_DIR, GanRenderer  # noqa: E402
from synthesis.render import render  # noqa: E402
from synthesis.rng import derive_seed  # noqa: E402
from synthesis.sources import SPLITS, open_source  # noqa: E402

NAMES = ("physics", "gan_denoised", "gan_raw")


def compare(items: list, renderer: GanRenderer, seed: int) -> tuple[dict, list]:
    """Distances to the real tiles, residual noise, and the grid panels."""
    mask = torch.from_numpy(np.stack([it.mask for it in items]))[:, None] > 0
    inst = torch.from_numpy(np.stack([it.instances.astype(np.int32) for it in items]))[:, None]
    seeds = torch.tensor([derive_seed(seed, "nucleus", it.id, "render") for it in items])
    physics = render(mask, seeds, "nucleus", instances=inst).image[:, 0].double().numpy()
    raw_t, den_t = renderer.render_unit(mask, seeds)
    raw, den = raw_t[:, 0].double().numpy(), den_t[:, 0].double().numpy()
    # The draws realism.py adds to the physics renderer: the same noise for both clean images.
    noise = rng.normal(seeds, (2, *mask.shape[2:]), STREAM_BENCH_NOISE).double().numpy()
    per: dict[str, dict[str, list[float]]] = {n: {} for n in NAMES}
    panels = []
    for k, it in enumerate(items):
        fg = it.mask > 0
        real = normalise(it.image.astype(np.float64), fg)
        var0, gain = camera_noise(real, fg)
        syn = {}
        for name, clean in (("physics", physics[k]), ("gan_denoised", den[k])):
            x = normalise(clean, fg)
            sd = np.sqrt(var0 + gain * np.clip(x, 0, None))
            syn[name] = x + sd * np.clip(noise[k, 0], -5.5, 5.5)
        syn["gan_raw"] = normalise(raw[k], fg)
        for name, x in syn.items():
            for metric, v in distances(real, x, fg).items():
                per[name].setdefault(metric, []).append(v)
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
    tile, gap, head = 256, 4, 18
    cols = 4
    canvas = np.full((head + rows * (tile + gap), cols * (tile + gap) - gap), 255, np.uint8)
    for r, (*imgs, _) in enumerate(pick):
        for c, x in enumerate(imgs):
            lo, hi = np.percentile(x, [0.5, 99.5])
            v = np.clip((x - lo) / max(hi - lo, 1e-9), 0, 1)
            y0, x0 = head + r * (tile + gap), c * (tile + gap)
            canvas[y0 : y0 + tile, x0 : x0 + tile] = (v * 255).round().astype(np.uint8)
    im = Image.fromarray(canvas)
    draw = ImageDraw.Draw(im)
    labels = ("real (BBBC038)", "physics + camera noise", "GAN (raw)", "GAN denoised + cam. noise")
    for c, label in enumerate(labels):
        draw.text((c * (tile + gap) + 6, 3), label, fill=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, optimize=True)
    return path.stat().st_size


def speed(renderer: GanRenderer, items: list, batch: int, repeats: int) -> dict[str, float]:
    """Images/s of both renderers on the same masks (the physics renderer is the baseline)."""
    sub = (items * ((batch + len(items) - 1) // len(items)))[:batch]
    mask = torch.from_numpy(np.stack([it.mask for it in sub]))[:, None] > 0
    inst = torch.from_numpy(np.stack([it.instances.astype(np.int32) for it in sub]))[:, None]
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
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data",
        type=Path,
        default=ROOT.parent / "shared" / "data" / "bbbc038-fluorescence" / "stage1_train",
    )
    p.add_argument("--weights", type=Path, default=None, help=f"default: {WEIGHTS_DIR}")
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument("--images", type=int, default=80, help="real tiles compared (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--grid", type=Path, default=ROOT / "docs" / "images" / "realism_gan_nucleus.png"
    )
    p.add_argument("--no-grid", action="store_true")
    p.add_argument("--speed-batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not args.data.exists():
        raise SystemExit(f"BBBC038 stage1_train not found at {args.data} (see --data)")
    t0 = time.perf_counter()
    renderer = GanRenderer.from_weights(args.weights, "nucleus", "cpu")
    counts = {s: 1 for s in SPLITS} | {args.split: args.images}
    src = open_source(args.data, "nucleus", seed=args.seed, counts=counts)
    items = src.load(src.ids(args.split))
    result: dict = {
        "machine": machine(),
        "weights": renderer.info,
        "data": str(args.data),
        "split": args.split,
    }
    result["images"], panels = compare(items, renderer, args.seed)
    if not args.no_grid:
        result["grid_bytes"] = write_grid(panels, args.grid)
        result["grid"] = str(
            args.grid.relative_to(ROOT) if args.grid.is_relative_to(ROOT) else args.grid
        )
    result["speed"] = speed(renderer, items, args.speed_batch, args.repeats)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        report(result)
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

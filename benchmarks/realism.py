"""Realism of procedural nuclei and of the physics renderer, measured on BBBC038.

Three comparisons, all in one run:

1. **Masks**: procedural nucleus masks against the real BBBC038 masks, tiled as the benchmark
   tiles them: foreground fraction and nuclei per tile, equivalent diameter, aspect ratio and
   solidity of whole nuclei, share of nuclei touching a neighbour (quantiles side by side).
2. **Images**: for real test tiles, the physics renderer (``synthesis.render.physics``) applied to
   the tile's real mask and instances, against a naive baseline (mask x constant, Gaussian
   blur sigma 1.5 px) and the real image. Every image is normalised the same way (minus its
   0.5th background percentile, the camera offset, divided by its foreground mean); the two
   synthetic images get the real tile's camera noise, ``var = b + a x`` with ``b`` and ``a``
   from its measured background and foreground noise (Immerkaer's estimator), as its camera
   would have added it. Distances to the real image, per tile then averaged (defined once in
   :mod:`synthesis.realism`, ``docs/definitions.md#realism``): intensity histogram
   (Wasserstein-1 over all pixels and over the foreground), radially averaged power spectrum
   (mean |log10 ratio| over 2..127 cycles per 256 px), background / foreground ratio and
   foreground coefficient of variation (absolute differences).
   The nucleus renderer ranges were set on the ``train`` tiles; report ``test`` (held out).
3. **Speed**: procedural masks and rendering (images/s), against reading and merging the
   real BBBC038 masks from disk and the naive renderer.

Writes the picture grid real | rendered | naive to ``docs/images/realism_nucleus.png``.

    python benchmarks/realism.py [--data PATH/stage1_train] [--split test] [--images 80]
                                 [--grid docs/images/realism_nucleus.png] [--json]

Filamentous structures (``--config mito`` or ``--config er``; ``nucleus``, the default, is
all of the above): real tiles of an images-only source, resampled to the config's pixel
size where theirs is known, against the physics and naive renderers on the procedural masks
(for mito, today's ``worms`` and the ``cells`` generator), with mask-free measures on
pseudo-masks (skeleton widths and topology, clustering, intensities, spectra, native noise;
``benchmarks/_realism_structure.py`` says how):

    python benchmarks/realism.py --config mito [--source PATH] [--source-pixel-size STEM=UM]
                                 [--tiles 40] [--sweep PARAM=V1,V2] [--no-sweep] [--grid PNG]
                                 [--json]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterator
from pathlib import Path

# Before torch loads libgomp: its default spin-waiting made 2-thread torch 5-10x slower than
# 1 thread on this shared (oversubscribed) 2-core machine; passive waiting made it faster.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import _common
import numpy as np
import torch
from _common import ROOT, best_of, emit, shown
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.spatial import ConvexHull

from synthesis import realism, rng
from synthesis.filters.gaussian import gaussian_blur
from synthesis.groundtruth.masks import STRUCTURES, generate_masks
from synthesis.groundtruth.sources import open_source
from synthesis.render.physics import render
from synthesis.rng import derive_seed

STREAM_BENCH_NOISE = 299  # matched camera noise of this script only
from synthesis.render.naive import NAIVE_PSF_PX  # noqa: E402  (one definition)

QUANTILES = (5, 25, 50, 75, 95)
EIGHT = np.ones((3, 3), dtype=bool)


def machine() -> str:
    return _common.machine("cpu", threads=True, load=True, omp=True)


# ----------------------------------------------------------------------------- masks


def mask_stats(masks: np.ndarray, instances: np.ndarray) -> dict[str, np.ndarray]:
    """Per-tile and per-nucleus statistics of ``(N, H, W)`` masks and instance labels."""
    out: dict[str, list[float]] = {
        "foreground_fraction": [],
        "nuclei_per_tile": [],
        "equivalent_diameter_px": [],
        "aspect_ratio": [],
        "solidity": [],
        "touching_share": [],
    }
    h, w = masks.shape[1:]
    for m, inst in zip(masks, instances, strict=True):
        out["foreground_fraction"].append(float(m.mean()))
        out["nuclei_per_tile"].append(int(len(np.unique(inst)) - 1))
        touching = 0
        n = 0
        for j, sl in enumerate(ndimage.find_objects(inst), 1):
            if sl is None:
                continue
            n += 1
            grown = ndimage.binary_dilation(inst == j, structure=EIGHT)
            touching += bool((grown & (inst > 0) & (inst != j)).any())
            if sl[0].start == 0 or sl[1].start == 0 or sl[0].stop == h or sl[1].stop == w:
                continue  # cut by the tile: its size is not a nucleus' size
            obj = inst[sl] == j
            area = int(obj.sum())
            out["equivalent_diameter_px"].append(2 * np.sqrt(area / np.pi))
            if area >= 30:
                ys, xs = np.nonzero(obj)
                ev = np.linalg.eigvalsh(np.cov(np.stack([ys, xs])) + np.eye(2) / 12)
                out["aspect_ratio"].append(float(np.sqrt(ev[1] / ev[0])))
                corners = np.concatenate(
                    [np.stack([ys + dy, xs + dx], 1) for dy in (0, 1) for dx in (0, 1)]
                )
                out["solidity"].append(area / ConvexHull(corners).volume)
        out["touching_share"].append(touching / max(n, 1))
    return {k: np.asarray(v, dtype=float) for k, v in out.items()}


def compare_masks(real_items: list, n_procedural: int) -> dict[str, dict[str, list[float]]]:
    real = mask_stats(
        np.stack([it.mask for it in real_items]), np.stack([it.instances for it in real_items])
    )
    proc = generate_masks("nucleus", torch.arange(n_procedural) + 10_000)
    synth = mask_stats(proc.mask[:, 0].numpy(), proc.instances[:, 0].numpy())
    return {
        k: {
            "real": np.percentile(real[k], QUANTILES).round(3).tolist(),
            "procedural": np.percentile(synth[k], QUANTILES).round(3).tolist(),
        }
        for k in real
    }


# ----------------------------------------------------------------------------- images


def normalise(x: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """:func:`synthesis.realism.normalise_levels` of a numpy image: minus the 0.5th
    background percentile (the offset), over the foreground mean."""
    return realism.normalise_levels(torch.from_numpy(x), torch.from_numpy(fg)).numpy()


_LAPLACE = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])


def noise_sd(xn: np.ndarray, region: np.ndarray) -> float:
    """Noise sd in ``region`` (Immerkaer 1996: mean |Laplacian-difference| * sqrt(pi/2) / 6;
    the 3x3 kernel cancels smooth signal up to second order)."""
    inner = ndimage.binary_erosion(region, iterations=2)
    if inner.sum() < 200:
        return float("nan")
    lap = ndimage.convolve(xn, _LAPLACE, mode="reflect")
    return float(np.sqrt(np.pi / 2) * np.abs(lap[inner]).mean() / 6)


def camera_noise(xn: np.ndarray, fg: np.ndarray) -> tuple[float, float]:
    """(variance at zero, variance per unit intensity) of a normalised real image: Poisson-
    Gaussian ``var(x) = b + a x``, from the noise in the background and in the foreground."""
    b = noise_sd(xn, ~ndimage.binary_dilation(fg, iterations=4))
    f = noise_sd(xn, fg)
    b = 0.0 if not np.isfinite(b) else b
    f = b if not np.isfinite(f) else f
    return b * b, max(0.0, f * f - b * b)


def distances(real: np.ndarray, syn: np.ndarray, fg: np.ndarray) -> dict[str, float]:
    """:func:`synthesis.realism.distances` of two normalised numpy images of mask ``fg``."""
    return realism.distances(torch.from_numpy(real), torch.from_numpy(syn), torch.from_numpy(fg))


def tile_tensors(items: list) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, 1, H, W)`` boolean masks and int32 instance labels of the tiles."""
    mask = torch.from_numpy(np.stack([it.mask for it in items]))[:, None] > 0
    inst = torch.from_numpy(np.stack([it.instances.astype(np.int32) for it in items]))[:, None]
    return mask, inst


def render_seeds(items: list, seed: int) -> torch.Tensor:
    """The per-tile render seeds (and, in stream ``STREAM_BENCH_NOISE``, camera noise draws)."""
    return torch.tensor([derive_seed(seed, "nucleus", it.id, "render") for it in items])


def real_tiles(items: list) -> Iterator[tuple[int, np.ndarray, np.ndarray, tuple[float, float]]]:
    """Per tile: (index, foreground, the real image :func:`normalise`-d, its camera noise)."""
    for k, it in enumerate(items):
        fg = it.mask > 0
        real = normalise(it.image.astype(np.float64), fg)
        yield k, fg, real, camera_noise(real, fg)


def with_camera_noise(
    clean: np.ndarray, fg: np.ndarray, camera: tuple[float, float], draw: np.ndarray
) -> np.ndarray:
    """``clean`` normalised, plus the real tile's ``camera`` noise (:func:`camera_noise`) made
    from the standard normal ``draw`` (clipped at 5.5 sd)."""
    var0, gain = camera
    x = normalise(clean, fg)
    sd = np.sqrt(var0 + gain * np.clip(x, 0, None))
    return x + sd * np.clip(draw, -5.5, 5.5)


def add_distances(
    per: dict[str, dict[str, list[float]]], real: np.ndarray, syn: dict, fg: np.ndarray
) -> None:
    """Append to ``per[name]`` the :func:`distances` of each ``syn[name]`` to ``real``."""
    for name, x in syn.items():
        for metric, v in distances(real, x, fg).items():
            per[name].setdefault(metric, []).append(v)


def compare_images(items: list, seed: int) -> tuple[dict, list[tuple[np.ndarray, ...]]]:
    mask, inst = tile_tensors(items)
    seeds = render_seeds(items, seed)
    rendered = render(mask, seeds, "nucleus", instances=inst).image[:, 0].double().numpy()
    naive = gaussian_blur(mask.float(), NAIVE_PSF_PX)[:, 0].double().numpy()
    noise = rng.normal(seeds, (2, *mask.shape[2:]), STREAM_BENCH_NOISE).double().numpy()
    per: dict[str, dict[str, list[float]]] = {"rendered": {}, "naive": {}}
    levels: dict[str, dict[str, list[float]]] = {
        k: {"bg_fg_ratio": [], "fg_cv": []} for k in ("real", "rendered", "naive")
    }
    panels = []
    for k, fg, real, camera in real_tiles(items):
        syn = {
            name: with_camera_noise(clean, fg, camera, noise[k, j])
            for j, (name, clean) in enumerate((("rendered", rendered[k]), ("naive", naive[k])))
        }
        add_distances(per, real, syn, fg)
        for name, x in (("real", real), *syn.items()):
            levels[name]["bg_fg_ratio"].append(float(x[~fg].mean()))
            levels[name]["fg_cv"].append(float(x[fg].std()))
        panels.append((real, syn["rendered"], syn["naive"], fg))
    table = {
        metric: {
            "rendered": float(np.mean(per["rendered"][metric])),
            "naive": float(np.mean(per["naive"][metric])),
            "naive_over_rendered": float(
                np.mean(per["naive"][metric]) / max(np.mean(per["rendered"][metric]), 1e-12)
            ),
        }
        for metric in per["rendered"]
    }
    summary = {
        name: {m: np.percentile(v, QUANTILES).round(3).tolist() for m, v in d.items()}
        for name, d in levels.items()
    }
    return {"distances": table, "levels": summary, "tiles": len(items)}, panels


def write_grid(panels: list[tuple[np.ndarray, ...]], path: Path, rows: int = 4) -> int:
    """Rows of real | rendered | naive (central 192 px crops, each stretched to its own
    0.5-99.5 % range): the tiles at 25, 50, 75 and 97 % of the crops' foreground fraction."""
    tile, gap, head = 192, 4, 16
    crop = slice((256 - tile) // 2, (256 - tile) // 2 + tile)
    order = np.argsort([fg[crop, crop].mean() for *_, fg in panels])
    at = np.linspace(0.25, 0.97, rows) if rows > 1 else np.array([0.5])
    pick = [panels[i] for i in order[(at * (len(order) - 1)).round().astype(int)]]
    labels = ("real (BBBC038)", "physics renderer", "naive: mask + blur")
    tiles = [[x[crop, crop] for x in imgs] for *imgs, _ in pick]
    return save_grid(tiles, labels, path, head=head, label_at=(4, 2), gap=gap)


def save_grid(
    rows: list[list[np.ndarray]],
    labels: tuple[str, ...],
    path: Path,
    *,
    head: int,
    label_at: tuple[int, int],
    gap: int = 4,
    bottom: int = 0,
) -> int:
    """Write a PNG grid of equal square images, each stretched to its own 0.5-99.5 % range,
    under a ``head`` px band with one label per column (at ``label_at`` in the column) and
    ``gap`` px between images (``bottom`` px of margin below); returns the file's size."""
    tile = rows[0][0].shape[0]
    canvas = np.full(
        (head + len(rows) * (tile + gap) - gap + bottom, len(labels) * (tile + gap) - gap),
        255,
        np.uint8,
    )
    for r, imgs in enumerate(rows):
        for c, x in enumerate(imgs):
            lo, hi = np.percentile(x, [0.5, 99.5])
            v = np.clip((x - lo) / max(hi - lo, 1e-9), 0, 1)
            y0, x0 = head + r * (tile + gap), c * (tile + gap)
            canvas[y0 : y0 + tile, x0 : x0 + tile] = (v * 255).round().astype(np.uint8)
    im = Image.fromarray(canvas)
    draw = ImageDraw.Draw(im)
    for c, label in enumerate(labels):
        draw.text((c * (tile + gap) + label_at[0], label_at[1]), label, fill=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, optimize=True)
    return path.stat().st_size


# ----------------------------------------------------------------------------- speed


def speed(data: Path, batch: int, repeats: int) -> dict[str, float]:
    out: dict[str, float] = {}
    seeds = torch.arange(batch) + 20_000
    for s in STRUCTURES:
        generate_masks(s, seeds[:2])
        out[f"masks_{s}_img_per_s"] = batch / best_of(lambda s=s: generate_masks(s, seeds), repeats)
    m = generate_masks("nucleus", seeds)
    for s in STRUCTURES:
        mk = generate_masks(s, seeds) if s != "nucleus" else m
        t = best_of(lambda s=s, mk=mk: render(mk.mask, seeds, s, instances=mk.instances), repeats)
        out[f"render_{s}_img_per_s"] = batch / t
    t = best_of(lambda: gaussian_blur(m.mask.float(), NAIVE_PSF_PX), repeats)
    out["render_naive_img_per_s"] = batch / t

    # Baseline for mask generation: read and merge real BBBC038 masks (PNG per nucleus).
    def read_real() -> None:
        src = open_source(
            data, "nucleus", seed=0, counts={"train": batch, "validation": 1, "test": 1}
        )
        src.load(src.ids("train"))

    out["read_bbbc038_masks_img_per_s"] = batch / best_of(read_real, 1)
    return out


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", choices=STRUCTURES, default="nucleus")
    config = pre.parse_known_args(argv)[0].config
    if config != "nucleus":
        import _realism_structure

        return _realism_structure.main(argv, __doc__, machine())
    p = _common.parser(__doc__)
    p.add_argument(
        "--config", choices=STRUCTURES, default="nucleus", help="er and mito: see the docstring"
    )
    _common.add_tiles(p, grid=ROOT / "docs" / "images" / "realism_nucleus.png")
    p.add_argument("--procedural", type=int, default=96, help="procedural masks compared")
    p.add_argument("--no-speed", action="store_true")
    _common.add_speed(p)
    _common.add_json(p)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    src, items = _common.load_tiles(args)
    result: dict = {
        "machine": machine(),
        "data": str(args.data),
        "split": args.split,
        "skipped": src.skipped,
    }
    result["masks"] = compare_masks(items, args.procedural)
    images, panels = compare_images(items, args.seed)
    result["images"] = images
    if not args.no_grid:
        result["grid_bytes"] = write_grid(panels, args.grid)
        result["grid"] = shown(args.grid)
    if not args.no_speed:
        result["speed"] = speed(args.data, args.speed_batch, args.repeats)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    emit(result, args.json, report)
    return result


def report(r: dict) -> None:
    print(f"machine: {r['machine']}")
    print(f"BBBC038 {r['split']} tiles: {r['images']['tiles']} ({r['data']})")
    print("\n1. nucleus masks, quantiles " + "/".join(map(str, QUANTILES)) + " %")
    for k, v in r["masks"].items():
        print(f"  {k:24s} real {v['real']}\n  {'':24s} proc {v['procedural']}")
    print("\n2. images: mean distance to the real tile (lower is closer)")
    print(f"  {'metric':14s} {'rendered':>9s} {'naive':>9s} {'naive/rendered':>15s}")
    for k, v in r["images"]["distances"].items():
        print(f"  {k:14s} {v['rendered']:9.4f} {v['naive']:9.4f} {v['naive_over_rendered']:15.2f}")
    print("  levels (normalised images), quantiles:")
    for name, d in r["images"]["levels"].items():
        print(f"    {name:9s} bg/fg {d['bg_fg_ratio']}  fg CV {d['fg_cv']}")
    if "grid" in r:
        print(f"  grid: {r['grid']} ({r['grid_bytes'] / 1024:.0f} KB)")
    s = r.get("speed")
    if s is None:
        print(f"\n{r['seconds']} s")
        return
    print("\n3. speed (images/s, 256x256, best of repeats)")
    for k in STRUCTURES:
        print(
            f"  {k:8s} masks {s[f'masks_{k}_img_per_s']:7.1f}   render {s[f'render_{k}_img_per_s']:7.1f}"
        )
    print(
        f"  baselines: reading real BBBC038 masks {s['read_bbbc038_masks_img_per_s']:.1f}, "
        f"naive render {s['render_naive_img_per_s']:.1f}"
    )
    print(
        "  ratios: nucleus masks / reading real masks "
        f"{s['masks_nucleus_img_per_s'] / s['read_bbbc038_masks_img_per_s']:.1f}x, "
        f"naive / physics render {s['render_naive_img_per_s'] / s['render_nucleus_img_per_s']:.1f}x"
    )
    print(f"\n{r['seconds']} s")


if __name__ == "__main__":
    main()

"""Mito-C's two mask generators (``worms``, ``cells``) against real mitochondria, at one scale.

Everything is compared at Mito-C's stated pixel size, 0.085 um/px
(:data:`synthesis.levels.PIXEL_SIZE_UM`):

- **real**: the two images of ``shared/data/mito-fluorescence`` resampled to 0.085 um/px
  with ``skimage.transform.rescale(order=1)``: the HCS field (pixel size not stated; ~0.135
  um/px implied by its tubule widths) upsampled x1.6, the NAO field (0.0425 um/px, stated)
  downsampled x0.5 (with anti-aliasing); each resampled field pseudo-masked whole, then cut
  into the centred grid of 256 px tiles, tiles with under 0.5 % foreground left out (the
  images-only source's rule);
- **synthetic**: ``--tiles`` tiles of each generator, measured on their **true** masks, and
  rendered as the build renders the ``test`` split (physics renderer, SNR 8, build seed
  ``--seed``; ``ConfigImages(...).reference_images("test")`` with ``--mito-masks``) and
  measured on the renders' **pseudo-masks**, so real and synthetic are measured the same way.

One pseudo-mask method for every image at that scale: ``DEFAULT_MITO.scaled(1.6)`` (the
default method, tuned on the HCS field at its native sampling, scaled with it; the NAO
field's own x3 at 0.0425 um/px is x1.5 here). Measures: :func:`synthesis.structure_realism.
structure_report` per tile, pooled per set (:func:`_realism_structure.pool_reports`); branch
and end points also per 100 tubule widths (per 100 px of skeleton times the set's median
width), which does not depend on the pixel size.

Targets of the ``cells`` generator (true masks): empty 64x64 share 0.15-0.40; branch points
per 100 widths at least twice ``worms``'s (true masks and pseudo-masks each); end points per
100 widths closer to the real images' than ``worms``'s; median width 3.5-5.5 px; foreground
fraction 0.06-0.20. The figure (``--grid``, default ``docs/images/mito_cells.png``): four
``cells`` renders and their masks, two HCS crops at 0.085 um/px with their pseudo-masks, two
``worms`` renders with their masks.

    python benchmarks/mito_cells.py [--tiles 40] [--seed 0] [--grid PNG] [--no-grid] [--json]
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import _common
import numpy as np
from _common import ROOT, emit, shown
from _realism_structure import MITO_DATA, _grey, pool_reports, row

from synthesis.groundtruth.pseudo_masks import DEFAULT_MITO, pseudo_mask
from synthesis.levels import PIXEL_SIZE_UM
from synthesis.structure_realism import structure_report

#: Per real image: (file stem, resampling factor to 0.085 um/px, how the factor was set).
REAL = (
    ("hcs_wt_mito", 1.6, "pixel size not stated: ~0.135 um/px implied by tubule widths"),
    ("nao_mito", 0.5, "0.0425 um/px stated (ImageJ metadata)"),
)
#: The pseudo-mask method of every image at 0.085 um/px.
METHOD = DEFAULT_MITO.scaled(1.6)
GENERATORS = ("worms", "cells")
#: The table's columns: (key, header, format).
COLUMNS = (
    ("tiles", "tiles", "{:d}"),
    ("foreground_fraction", "fg fraction", "{:.3f}"),
    ("empty_window_share", "empty 64x64 share", "{:.3f}"),
    ("width_median", "median width (px)", "{:.2f}"),
    ("width_iqr", "width IQR (px)", "{:.2f}"),
    ("branch_per_100w", "branch pts / 100 widths", "{:.1f}"),
    ("end_per_100w", "end pts / 100 widths", "{:.1f}"),
    ("branch_points_per_100px", "branch pts / 100 px", "{:.2f}"),
    ("end_points_per_100px", "end pts / 100 px", "{:.2f}"),
    ("segment_length_median", "median segment (px)", "{:.1f}"),
)


def _row(reports: list[dict[str, Any]]) -> dict[str, Any]:
    pooled = pool_reports(reports)
    r: dict[str, Any] = row(pooled)
    w = r["width_median"]
    r["tiles"] = len(reports)
    r["branch_per_100w"] = r["branch_points_per_100px"] * w
    r["end_per_100w"] = r["end_points_per_100px"] * w
    return r


def real_tiles(stem: str, factor: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The 256 px tiles of a real image resampled by ``factor`` and their pseudo-masks."""
    from skimage.transform import rescale

    from synthesis.groundtruth.sources.base import MIN_FOREGROUND_FRACTION, TILE, tile_origins
    from synthesis.groundtruth.sources.readers import _decode
    from synthesis.groundtruth.sources.readers import _grey as grey_of

    path = next(p for p in sorted((MITO_DATA / "images").iterdir()) if p.stem == stem)
    image = grey_of(_decode(path, str(path)), str(path), what="image").astype(np.float64)
    x = rescale(image, factor, order=1, preserve_range=True, anti_aliasing=factor < 1)
    pm = pseudo_mask(x, METHOD)
    images, masks = [], []
    for y0, x0 in tile_origins(*x.shape):
        m = pm[y0 : y0 + TILE, x0 : x0 + TILE]
        if m.mean() >= MIN_FOREGROUND_FRACTION:
            images.append(x[y0 : y0 + TILE, x0 : x0 + TILE])
            masks.append(m)
    return images, masks


def rendered(generator: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(ADU images, true masks) ``(n, 256, 256)`` of the build's ``test`` split at SNR 8."""
    import torch

    from builder.assembly.images import ConfigImages
    from builder.assembly.options import BuildOptions

    opts = BuildOptions(
        out=Path(tempfile.gettempdir()) / "fluorobench-c-mito-cells-unused",  # nothing written
        configs=["mito"],
        counts={"train": 1, "validation": 1, "test": n},
        seed=seed,
        splits=["reference"],
        device="cpu",
        mito_masks=generator,
    )
    adu, mask = ConfigImages(opts, "mito", torch.device("cpu")).reference_images("test")
    return adu[:, 0].numpy(), mask[:, 0].numpy()


def targets(t: dict[str, dict[str, Any]]) -> list[tuple[str, bool, str]]:
    """(target, met, the numbers) of the ``cells`` generator."""
    new, old = t["cells (true mask)"], t["worms (true mask)"]
    new_p, old_p = t["cells (pseudo-mask)"], t["worms (pseudo-mask)"]
    reals = [v for k, v in t.items() if k.startswith("real")]
    d_new = np.mean([abs(new["end_per_100w"] - r["end_per_100w"]) for r in reals])
    d_old = np.mean([abs(old["end_per_100w"] - r["end_per_100w"]) for r in reals])
    d_new_p = np.mean([abs(new_p["end_per_100w"] - r["end_per_100w"]) for r in reals])
    d_old_p = np.mean([abs(old_p["end_per_100w"] - r["end_per_100w"]) for r in reals])
    e, w, f = new["empty_window_share"], new["width_median"], new["foreground_fraction"]
    b, bo = new["branch_per_100w"], old["branch_per_100w"]
    bp, bop = new_p["branch_per_100w"], old_p["branch_per_100w"]
    return [
        ("empty 64x64 share in 0.15-0.40 (true)", 0.15 <= e <= 0.40, f"{e:.3f}"),
        ("branch pts / 100 widths >= 2x worms (true)", b >= 2 * bo, f"{b:.1f} vs {bo:.1f}"),
        ("branch pts / 100 widths >= 2x worms (pseudo)", bp >= 2 * bop, f"{bp:.1f} vs {bop:.1f}"),
        (
            "end pts / 100 widths closer to real than worms (true)",
            d_new < d_old,
            f"mean |diff| {d_new:.1f} vs {d_old:.1f}",
        ),
        (
            "end pts / 100 widths closer to real than worms (pseudo)",
            d_new_p < d_old_p,
            f"mean |diff| {d_new_p:.1f} vs {d_old_p:.1f}",
        ),
        ("median width 3.5-5.5 px (true)", 3.5 <= w <= 5.5, f"{w:.2f}"),
        ("foreground fraction 0.06-0.20 (true)", 0.06 <= f <= 0.20, f"{f:.3f}"),
    ]


# ----------------------------------------------------------------------------- figure


def _mask_rgb(mask: np.ndarray) -> np.ndarray:
    return np.repeat((mask.astype(np.uint8) * 255)[..., None], 3, axis=2)


def write_figure(
    cells: tuple[np.ndarray, np.ndarray],
    real: tuple[list[np.ndarray], list[np.ndarray]],
    worms: tuple[np.ndarray, np.ndarray],
    path: Path,
) -> int:
    """Rows: four ``cells`` renders; their true masks; two HCS crops and two ``worms``
    renders; their (pseudo- or true) masks. Returns the file's size."""
    fracs = [float(m.mean()) for m in real[1]]
    order = np.argsort(fracs)
    picks = [int(order[int(q * (len(order) - 1))]) for q in (0.5, 0.85)]
    rows = [
        ("cells generator\nphysics render\nSNR 8", [_grey(x) for x in cells[0][:4]],
         [f"cells, test tile {i}" for i in range(4)]),
        ("cells generator\ntrue mask", [_mask_rgb(m) for m in cells[1][:4]],
         ["mask"] * 4),
        ("real HCS x1.6\n| worms generator\nphysics render",
         [_grey(real[0][k]) for k in picks] + [_grey(x) for x in worms[0][:2]],
         ["HCS crop (0.085 um/px)"] * 2 + ["worms (today), test tile"] * 2),
        ("pseudo-mask (HCS)\n| true mask (worms)",
         [_mask_rgb(real[1][k]) for k in picks] + [_mask_rgb(m) for m in worms[1][:2]],
         ["HCS pseudo-mask"] * 2 + ["worms mask"] * 2),
    ]  # fmt: skip
    return _common.panel_grid(rows, path, palette=False)


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    p = _common.parser(__doc__)
    p.add_argument("--tiles", type=int, default=40, help="synthetic tiles per generator")
    p.add_argument("--seed", type=int, default=0, help="build seed of the rendered tiles")
    p.add_argument("--grid", type=Path, default=ROOT / "docs" / "images" / "mito_cells.png")
    p.add_argument("--no-grid", action="store_true")
    _common.add_json(p)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "machine": _common.machine("cpu", threads=True),
        "pixel_size_um": PIXEL_SIZE_UM["mito"],
        "pseudo_mask": METHOD.to_dict(),
        "real": {stem: {"factor": f, "scale": note} for stem, f, note in REAL},
    }
    tables: dict[str, dict[str, Any]] = {}
    real: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    if (MITO_DATA / "images").is_dir():
        for stem, factor, _ in REAL:
            real[stem] = real_tiles(stem, factor)
            x, m = real[stem]
            tables[f"real {stem} x{factor:g} (pseudo-mask)"] = _row(
                [structure_report(a, b, noise=False) for a, b in zip(x, m, strict=True)]
            )
    else:
        result["note"] = f"no real images at {MITO_DATA}: synthetic sets only"
    synth: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for g in GENERATORS:
        x, m = rendered(g, args.tiles, args.seed)
        synth[g] = (x, m)
        tables[f"{g} (true mask)"] = _row(
            [structure_report(b.astype(np.float64), b, noise=False) for b in m]
        )
        tables[f"{g} (pseudo-mask)"] = _row(
            [structure_report(a, pseudo_mask(a, METHOD), noise=False) for a in x]
        )
    result["tables"] = tables
    if real:
        result["targets"] = [
            {"target": t, "met": bool(ok), "numbers": n} for t, ok, n in targets(tables)
        ]
    if not args.no_grid and "hcs_wt_mito" in real:
        result["grid_bytes"] = write_figure(synth["cells"], real["hcs_wt_mito"], synth["worms"],
                                            args.grid)  # fmt: skip
        result["grid"] = shown(args.grid)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    emit(result, args.json, report)
    return result


def report(r: dict) -> None:
    print(f"machine: {r['machine']}")
    print(
        f"scale: everything at {r['pixel_size_um']} um/px; pseudo-masks: {r['pseudo_mask']['name']}"
    )
    for stem, v in r["real"].items():
        print(f"  {stem}: resampled x{v['factor']:g} ({v['scale']})")
    if "note" in r:
        print(f"note: {r['note']}")
    print()
    print("| set | " + " | ".join(h for _, h, _ in COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for name, v in r["tables"].items():
        cells = ["n/a" if v.get(k) is None else f.format(v[k]) for k, _, f in COLUMNS]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if "targets" in r:
        print("\ntargets of the cells generator:")
        for t in r["targets"]:
            print(f"  [{'met' if t['met'] else 'MISSED'}] {t['target']}: {t['numbers']}")
    if "grid" in r:
        print(f"\nfigure: {r['grid']} ({r['grid_bytes'] / 1024:.0f} KB)")
    print(f"\n{r['seconds']} s")


if __name__ == "__main__":
    main()

"""The ``cells`` mitochondria generator (``--mito-masks cells``): determinism, the layout it
promises (cells with empty nuclei, density falling away from the nucleus, empty space,
branched networks), instance labels, and the build option end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from builder.cli import main
from synthesis.groundtruth.masks import (
    MITO_CELLS_SETTINGS,
    MITO_MASKS,
    generate_masks,
    settings_dict,
)
from synthesis.levels import PIXEL_SIZE_UM
from synthesis.structure_realism import empty_window_share, skeleton_topology, skeleton_widths

SEEDS = torch.arange(500, 532)  # 32 tiles


@pytest.fixture(scope="module")
def tiles():
    return generate_masks("mito", SEEDS, mito_masks="cells")


def _grid(size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    c = np.arange(size) + 0.5
    return np.meshgrid(c, c, indexing="ij")


def _nucleus(cell: dict, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Normalised radius of a cell's nucleus ellipse from the row's params."""
    (ny, nx), (a, b), phi = (
        cell["nucleus_centre_yx"],
        cell["nucleus_semi_axes_px"],
        cell["nucleus_angle_rad"],
    )
    dy, dx = yy - ny, xx - nx
    u = dx * math.cos(phi) + dy * math.sin(phi)
    v = -dx * math.sin(phi) + dy * math.cos(phi)
    return np.sqrt((u / a) ** 2 + (v / b) ** 2)


def _outline(cell: dict, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Distance / outline radius (<= 1 inside the cell) from the row's params."""
    cy, cx = cell["centre_yx"]
    t = np.arctan2(yy - cy, xx - cx)
    wave = sum(
        a * np.cos(k * (t - p))
        for k, a, p in zip(
            (2, 3, 4), cell["outline_harmonics"], cell["outline_phases_rad"], strict=True
        )
    )
    return np.hypot(yy - cy, xx - cx) / (cell["radius_px"] * np.exp(wave))


# ----------------------------------------------------------------------------- contract


def test_deterministic_row_by_row_and_different_across_seeds():
    a = generate_masks("mito", torch.tensor([3, 4, 5]), mito_masks="cells")
    b = generate_masks("mito", torch.tensor([3, 4, 5]), mito_masks="cells")
    alone = generate_masks("mito", torch.tensor([5]), mito_masks="cells")
    assert torch.equal(a.mask, b.mask) and torch.equal(a.instances, b.instances)
    assert a.params == b.params
    assert torch.equal(a.mask[2:], alone.mask) and a.params[2] == alone.params[0]
    assert not torch.equal(a.mask[0], a.mask[1]) and not torch.equal(a.mask[1], a.mask[2])


def test_independent_of_the_thread_count():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = generate_masks("mito", torch.tensor([8, 9]), mito_masks="cells")
        torch.set_num_threads(2)
        two = generate_masks("mito", torch.tensor([8, 9]), mito_masks="cells")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one.mask, two.mask) and one.params == two.params


def test_default_generator_is_worms_and_unchanged():
    assert MITO_MASKS == ("worms", "cells")
    default = generate_masks("mito", torch.tensor([1, 2]))
    worms = generate_masks("mito", torch.tensor([1, 2]), mito_masks="worms")
    assert torch.equal(default.mask, worms.mask) and default.params == worms.params
    assert default.instances is None and default.params[0]["generator"] == "procedural:mito"
    with pytest.raises(ValueError, match="mito_masks must be one of"):
        generate_masks("mito", 1, mito_masks="blobs")


def test_params_state_the_generator_and_pixel_size(tiles):
    assert PIXEL_SIZE_UM["mito"] == MITO_CELLS_SETTINGS.pixel_size_um == 0.085
    assert settings_dict("mito", "cells")["pixel_size_um"] == 0.085
    for p, seed in zip(tiles.params, SEEDS.tolist(), strict=True):
        assert p["generator"] == "procedural:mito:cells" and p["mask_seed"] == seed
        assert p["pixel_size_um"] == 0.085 and 1 <= len(p["cells"]) <= 3
        json.dumps(p)


def test_instance_labels_are_the_connected_objects(tiles):
    from scipy import ndimage

    assert tiles.instances.shape == tiles.mask.shape and tiles.instances.dtype == torch.int32
    assert torch.equal(tiles.instances > 0, tiles.mask)
    for inst, p in zip(tiles.instances[:, 0].numpy(), tiles.params, strict=True):
        n = int(inst.max())
        assert n == p["n_instances"] and set(np.unique(inst)) == set(range(n + 1))
        for j, sl in enumerate(ndimage.find_objects(inst), 1):  # each label one 8-connected piece
            assert ndimage.label(inst[sl] == j, structure=np.ones((3, 3)))[1] == 1


# ----------------------------------------------------------------------------- layout


def test_layout_cells_nuclei_density_and_empty_space(tiles):
    yy, xx = _grid()
    near, far, outside_fg, empty = [], [], 0, []
    for m, p in zip(tiles.mask[:, 0].numpy(), tiles.params, strict=True):
        in_cell = np.zeros(m.shape, bool)
        nuc_d = np.full(m.shape, np.inf)
        for c in p["cells"]:
            rho = _nucleus(c, yy, xx)
            # The nucleus is a hole: nothing inside it (params are rounded: 1 px of slack).
            assert not m[rho < 1 - 1.0 / c["nucleus_semi_axes_px"][1]].any()
            in_cell |= _outline(c, yy, xx) <= 1.0
            nuc_d = np.minimum(nuc_d, (rho - 1) * c["nucleus_semi_axes_px"][1])
        outside_fg += int(m[~in_cell].sum())
        cyto = in_cell & (nuc_d > 0)
        band_near, band_far = cyto & (nuc_d < 40), cyto & (nuc_d >= 80) & (nuc_d < 160)
        if band_near.sum() > 500 and band_far.sum() > 500:
            near.append(m[band_near].mean())
            far.append(m[band_far].mean())
        empty.append(empty_window_share(m, 64))
    # Nothing outside the cells (rounded outline parameters: a few pixels of slack).
    assert outside_fg <= 0.001 * tiles.mask.sum().item(), outside_fg
    # Density falls away from the nucleus (measured on these tiles: 0.31 near, 0.13 far).
    assert len(near) >= 8 and np.mean(near) > 2.0 * np.mean(far), (np.mean(near), np.mean(far))
    # Empty space between cells (measured 0.28; the HCS field at 0.085 um/px: 0.445).
    assert 0.15 <= np.mean(empty) <= 0.45, np.mean(empty)
    fg = tiles.mask.float().mean((1, 2, 3))
    assert bool((fg > 0.005).all()) and 0.06 <= float(fg.mean()) <= 0.20, fg


def test_branched_networks_with_fewer_free_ends_than_worms(tiles):
    worms = generate_masks("mito", SEEDS)

    def per_100_widths(masks: torch.Tensor) -> tuple[float, float, float]:
        branch = end = px = 0
        widths = []
        for m in masks[:, 0].numpy():
            t = skeleton_topology(m)
            branch, end, px = (
                branch + t["branch_points"],
                end + t["end_points"],
                px + t["skeleton_px"],
            )
            widths.append(skeleton_widths(m))
        w = float(np.median(np.concatenate(widths)))
        return 100 * branch / px * w, 100 * end / px * w, w

    b_new, e_new, w_new = per_100_widths(tiles.mask)
    b_old, e_old, _ = per_100_widths(worms.mask)
    # Measured on these tiles: 10.3 vs 2.0 branch points and 28.1 vs 53.7 end points per 100
    # widths (the real HCS field at 0.085 um/px: 18.1 and 39.8 on its pseudo-masks).
    assert b_new >= 3 * b_old, (b_new, b_old)
    assert e_new < 0.8 * e_old, (e_new, e_old)
    assert 3.5 <= w_new <= 5.5, w_new
    # Widths vary between and along objects: the interquartile range is at least 1 px.
    widths = np.concatenate([skeleton_widths(m) for m in tiles.mask[:8, 0].numpy()])
    q25, q75 = np.percentile(widths, [25, 75])
    assert q75 - q25 >= 1.0
    # Fragments and puncta are there too.
    assert sum(p["n_punctum"] for p in tiles.params) >= 16
    assert sum(p["n_rod"] for p in tiles.params) >= 16


def test_small_tiles_still_have_foreground_and_background():
    out = generate_masks("mito", torch.arange(4), size=48, mito_masks="cells")
    fg = out.mask.float().mean((1, 2, 3))
    assert bool((fg > 0).all()) and bool((fg < 1).all())


# ----------------------------------------------------------------------------- the build


def test_build_option_records_the_generator_and_loads(tmp_path: Path, capsys):
    import datasets

    out = tmp_path / "pkg"
    args = ["build", str(out), "--config", "mito", "--splits", "reference", "--train", "2"]
    args += ["--validation", "1", "--test", "2", "--train-epochs", "1", "--device", "cpu"]
    assert main([*args, "--mito-masks", "cells"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["mito_masks"] == "cells"
    assert manifest["configs"]["mito"]["source"]["mito_masks"] == "cells"
    assert "`cells` generator" in (out / "README.md").read_text()
    ds = datasets.load_dataset(str(out), "mito", split="test", cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 2
    for row in ds:
        meta = json.loads(row["params"]["mask_params"])
        assert meta["generator"] == "procedural:mito:cells" and meta["pixel_size_um"] == 0.085
        assert row["source"] == "procedural:mito"
    # The same rows as the generator gives for their mask seeds.
    seeds = [json.loads(r["params"]["mask_params"])["mask_seed"] for r in ds]
    want = generate_masks("mito", torch.tensor(seeds), mito_masks="cells").mask[:, 0].numpy()
    got = np.stack([np.asarray(r["mask"]) for r in ds]) > 0
    assert np.array_equal(got, want)
    # Resuming with another generator is refused like any other change of recipe.
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "different build" in err and "mito_masks" in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--config", "er", "--mito-masks", "cells"], "applies to the mito config"),
        (["--config", "mito", "--mito-masks", "cells", "--source", "."], "procedural"),
    ],
)
def test_build_option_refusals(tmp_path: Path, capsys, extra, message):
    out = tmp_path / "pkg"
    assert main(["build", str(out), *extra, "--device", "cpu"]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()

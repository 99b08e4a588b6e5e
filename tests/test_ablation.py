"""The renderer ablation (builder/experiments/ablation.py): its variants change what their
names say, the build's train images are reproduced, and a rerun redoes nothing."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path

import pytest
import torch

from builder.experiments import ablation as ab
from synthesis.levels import REFERENCE_SNR, TRAIN_SNR
from synthesis.realism import MEASURES, DomainSettings
from synthesis.render.physics import RENDER_SETTINGS, RenderSettings
from tests.toy import disc_source

PHYSICS = RENDER_SETTINGS["nucleus"]


def _differ(a: RenderSettings, b: RenderSettings) -> set[str]:
    return {f.name for f in fields(RenderSettings) if getattr(a, f.name) != getattr(b, f.name)}


def test_variants_change_exactly_their_named_fields():
    v = ab.VARIANTS
    assert v["physics"].settings == PHYSICS and v["physics"].snr == "reference"
    every = set().union(*(set(c) for c in ab.COMPONENTS.values()))
    for comp, removed in ab.COMPONENTS.items():
        minus = v["psf=naive" if comp == "psf" else f"-{comp}"]
        assert _differ(minus.settings, PHYSICS) == set(removed), comp
        assert minus.snr == "reference" and minus.base == "physics"
        plus = v[f"naive+{comp}"]
        assert _differ(plus.settings, v["naive"].settings) == set(removed), comp
        assert all(getattr(plus.settings, k) == getattr(PHYSICS, k) for k in removed)
        assert plus.base == "naive"
    assert _differ(v["naive"].settings, PHYSICS) == every
    assert v["snr=real"].settings == PHYSICS and v["snr=real"].snr == "real"
    assert v["naive+snr=real"].settings == v["naive"].settings
    assert v["naive+snr=real"].snr == "real"
    assert v["naive (shipped)"].settings is None
    # -texture keeps the range of per-row mean densities (shape x scale).
    s = v["-texture"].settings
    assert s.gamma_shape[0] * s.gamma_scale[0] == pytest.approx(15 * 15)
    assert s.gamma_shape[1] * s.gamma_scale[1] == pytest.approx(40 * 45)
    # Names and file names both find a variant; file names are distinct and plain.
    slugs = [x.slug for x in v.values()]
    assert len(set(slugs)) == len(slugs) and not any(x.startswith("-") or " " in x for x in slugs)
    assert all(ab.variant_by_name(x.slug) is x and ab.variant_by_name(n) is x for n, x in v.items())


def _square(b: int = 2, lo: int = 12, hi: int = 52) -> torch.Tensor:
    m = torch.zeros(b, 1, 64, 64, dtype=torch.bool)
    m[:, :, lo:hi, lo:hi] = True
    return m


def _cv(x: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    v = x[where].reshape(x.shape[0], -1)
    return v.std(1) / v.mean(1)


SEEDS = torch.tensor([3, 4, 5])


def test_texture_removal_leaves_a_constant_density():
    """Inside one large nucleus, 12 px from its edge (rim and PSF are flat there), a
    renderer without texture is constant: CV < 1e-4 (the flat gamma's is ~1e-5); with it,
    CV > 0.03. Haze and background (additive, outside the density) are zeroed to see it."""
    m, inner = _square(3), _square(3, 24, 40)
    inst = m.to(torch.int32)

    def cv(settings: RenderSettings) -> torch.Tensor:
        flat = replace(settings, haze_fraction=(0.0, 0.0), background_fraction=(0.0, 0.0))
        return _cv(ab.Variant("x", flat).render(m, SEEDS, inst), inner)

    assert bool((cv(ab.VARIANTS["-texture"].settings) < 1e-4).all())
    assert bool((cv(PHYSICS) > 0.03).all())
    assert bool((_cv(ab.VARIANTS["naive"].render(m, SEEDS, inst), inner) < 1e-4).all())
    assert bool((_cv(ab.VARIANTS["naive+texture"].render(m, SEEDS, inst), inner) > 0.03).all())


def test_background_removal_leaves_the_floor():
    """Without background (and haze) the pixels 10 px from the mask (> 6 PSF sigmas) are at
    the floor, 0 (< 1e-6 of the foreground); ``physics - (-background)`` is the background
    field alone: positive and the same whatever the mask."""
    m, inst = _square(3), _square(3).to(torch.int32)
    far = ~_square(3, 2, 62)
    naive = ab.VARIANTS["naive"].render(m, SEEDS, inst)
    fg = naive[m].reshape(3, -1).mean(1)
    assert bool((naive[far].reshape(3, -1).amax(1) < 1e-6 * fg).all())
    with_bg = ab.VARIANTS["naive+background"].render(m, SEEDS, inst)
    assert bool((with_bg[far] > 0).all())
    fields_of = {}
    for mask in (m, _square(3, 20, 44)):
        phys = ab.VARIANTS["physics"].render(mask, SEEDS, mask.to(torch.int32))
        nobg = ab.VARIANTS["-background"].render(mask, SEEDS, mask.to(torch.int32))
        fields_of[mask.sum().item()] = phys - nobg
    a, b = fields_of.values()
    assert bool((a > 0).all())
    assert torch.allclose(a, b, rtol=1e-3, atol=1e-3 * float(a.mean()))


def test_naive_variant_is_the_shipped_naive_renderer_up_to_scale():
    m = _square(3)
    ours = ab.VARIANTS["naive"].render(m, SEEDS, m.to(torch.int32))
    shipped = ab.VARIANTS["naive (shipped)"].render(m, SEEDS, None)
    keep = shipped > 1.0
    for i in range(3):
        ratio = ours[i][keep[i]] / shipped[i][keep[i]]
        assert float(ratio.std() / ratio.mean()) < 1e-4
    # The camera's exposure solve cancels the scale: almost every ADU is the same.
    snr = torch.full((3,), REFERENCE_SNR, dtype=torch.float64)
    a = ab.camera(ours, m, SEEDS, snr)
    b = ab.camera(shipped, m, SEEDS, snr)
    assert float((a != b).float().mean()) < 1e-3


def test_snr_real_draws_within_the_fitted_range(tmp_path):
    data = ab.AblationData(ab.AblationOptions(source=str(tmp_path), out=tmp_path), "cpu")
    data.snr_fit = torch.tensor([10.0, 20.0, 33.0, 40.0, 160.0], dtype=torch.float64)
    ids = [f"tile{i}" for i in range(400)]
    snr = data.train_snr("real", ids)
    assert bool(((snr >= 10.0) & (snr <= 160.0)).all())
    assert float(snr.median()) == pytest.approx(33.0, rel=0.15)  # the fit's median
    assert torch.equal(data.train_snr("real", ids[7:9]), snr[7:9])  # per id, any batch
    assert bool((data.train_snr("reference", ids[:3]) == REFERENCE_SNR).all())
    # Rows above the reference SNR get a larger gain and stay below the ADC's top.
    assert ab.DEFAULT_CAMERA.for_snr(REFERENCE_SNR) == ab.DEFAULT_CAMERA
    assert ab.DEFAULT_CAMERA.for_snr(16.0).e_per_adu == pytest.approx(
        4 * ab.DEFAULT_CAMERA.e_per_adu
    )
    m = _square(2)
    clean = ab.VARIANTS["physics"].render(m, SEEDS[:2], m.to(torch.int32))
    high = torch.tensor([150.0, 150.0], dtype=torch.float64)
    adu = ab.camera(clean, m, SEEDS[:2], high)
    assert int(adu.max()) < ab.DEFAULT_CAMERA.adc_max_adu


@pytest.fixture(scope="module")
def discs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return disc_source(tmp_path_factory.mktemp("src") / "discs", 24, seed=5, discs=6)


def test_build_snr_variant_is_the_build_train_split(discs, tmp_path):
    """The in-memory train split of ``snr=build`` (the shipped settings, the build's SNR
    draw) has the bytes of a package's ``train``; ``physics`` is the same renderer with
    every row at the reference SNR."""
    from builder.assembly import BuildOptions, build
    from builder.assembly.reference import read_split

    counts = {"train": 4, "validation": 2, "test": 2}
    pkg = tmp_path / "pkg"
    build(
        BuildOptions(
            out=pkg,
            configs=["nucleus"],
            source=str(discs),
            splits=["train"],
            counts=counts,
            seed=3,
            device="cpu",
        )
    )
    opts = ab.AblationOptions(
        source=str(discs), out=tmp_path, train=4, validation=2, test=2, seed=3
    )
    data = ab.AblationData(opts, torch.device("cpu"))
    adu, mask, facts = data.synthetic(ab.VARIANTS["snr=build"], "train")
    want_adu, want_mask = read_split(str(pkg), "nucleus", "train")
    assert torch.equal(adu, want_adu) and torch.equal(mask, want_mask)
    lo, hi = TRAIN_SNR["nucleus"]
    assert lo <= facts["snr_min"] < facts["snr_max"] <= hi
    _, _, facts = data.synthetic(ab.VARIANTS["physics"], "train")
    assert facts["snr_min"] == facts["snr_max"] == REFERENCE_SNR
    # Scoring from tensors counts what scoring the package's split counts.
    from builder.evaluation.scoring import per_image_counts, tensor_counts
    from synthesis.models.unet import UNet
    from synthesis.normalize import zscore

    torch.manual_seed(0)
    model = UNet(in_channels=1, out_channels=1, base_channels=4, depth=2).eval()
    cpu = torch.device("cpu")
    got = tensor_counts(data.ids("train"), adu, mask, model, zscore, device=cpu, batch_size=3)
    assert got == per_image_counts(str(pkg), "nucleus", "train", model, zscore, device=cpu)
    assert sum(c[2] for c in got.values()) > 0  # the model predicts some foreground


def test_resumed_run_trains_nothing(discs, tmp_path, monkeypatch):
    opts = ab.AblationOptions(
        source=str(discs),
        out=tmp_path / "run",
        variants=("snr=real", "naive (shipped)"),
        seeds=2,
        epochs=1,
        train=4,
        validation=2,
        test=3,
        device="cpu",
        domain=DomainSettings(crop=32, steps=10, batch=8),
        quick_epochs=1,
    )
    first = ab.ablation(opts)
    ab.write_ablation_reports(opts.out, first)
    models = sorted((opts.out / "models").glob("*-seed*.safetensors"))
    assert [p.name.split("-seed")[0] for p in models[::2]] == ["naive-shipped", "snr-real"]
    # The feature network of the realism measures: trained once, on the real train tiles.
    features = opts.features_path()
    assert sorted((opts.out / "models").glob("real-features-*.safetensors")) == [features]
    models.append(features)
    assert len(models) == 5 and all(p.with_suffix(".json").exists() for p in models[:4])
    stamps = [p.stat().st_mtime_ns for p in models]
    for name, v in first["variants"].items():
        assert [r["seed"] for r in v["runs"]] == [0, 1] and not any(r["reused"] for r in v["runs"])
        assert 0 <= v["iou"]["mean"] <= 1 and v["iou"]["sd"] is not None, name
        assert v["runs"][0]["images"] == 3 and v["seconds"]["total"] > 0
    real = first["variants"]["snr=real"]["train_data"]
    q = first["native_snr_train"]["quantiles"]
    assert q["0.0"] <= real["snr_min"] <= real["snr_max"] <= q["1.0"]
    # Realism measures: once per variant, stored beside its models under their own hash.
    stored = sorted((opts.out / "models").glob("*-realism-*.json"))
    assert [p.name.split("-realism")[0] for p in stored] == ["naive-shipped", "snr-real"]
    for name, v in first["variants"].items():
        r = v["realism"]
        assert list(r["measures"]) == list(ab.ABLATION_MEASURES) and r["tiles"] == 4, name
        assert list(ab.ABLATION_MEASURES[: len(MEASURES)]) == list(MEASURES)
        assert not r["reused"] and r["domain"]["settings"]["steps"] == 10
        assert r["measures"]["feature_fd"] == r["features"]["fd"] > 0
        assert opts.realism_path(ab.variant_by_name(name)).exists()
        # The quick transfer: a 1-epoch U-Net on the variant, scored on the real train tiles.
        q = r["quick_transfer"]
        assert q["epochs"] == 1 and not q["reused"] and 0 <= q["iou"] <= 1
        assert r["measures"]["quick_transfer"] == q["distance"] == pytest.approx(1 - q["iou"])
        quick = opts.quick_path(ab.variant_by_name(name))
        assert quick.exists() and quick.with_suffix(".json").exists()
        models.append(quick)
    stamps = [p.stat().st_mtime_ns for p in models]
    assert first["realism_transfer"].keys() == set(ab.ABLATION_MEASURES)
    assert all(
        c["variants"] == 2 and c["agrees"] is None for c in first["realism_transfer"].values()
    )

    def no_training(*args, **kwargs):
        raise AssertionError("a resumed run trained a model")

    monkeypatch.setattr(ab, "fit_reference", no_training)
    monkeypatch.setattr(ab.AblationData, "synthetic", no_training)
    again = ab.ablation(opts)
    assert [p.stat().st_mtime_ns for p in models] == stamps
    for name, v in again["variants"].items():
        assert all(r["reused"] for r in v["runs"])
        assert v["iou"] == first["variants"][name]["iou"]
        assert v["seconds"]["total"] == first["variants"][name]["seconds"]["total"]
    assert again["native_snr_train"] == first["native_snr_train"]
    assert all(v["realism"]["reused"] for v in again["variants"].values())
    assert all(v["realism"]["quick_transfer"]["reused"] for v in again["variants"].values())
    assert again["realism_transfer"] == first["realism_transfer"]
    md = (opts.out / "ablation.md").read_text()
    assert md == ab.ablation_markdown(first)
    assert "| snr=real |" in md and "| naive (shipped) |" in md
    assert "## Realism against transfer" in md and "| domain AUC | " in md
    assert "| feature FD | " in md and "| quick transfer | " in md
    assert json.loads((opts.out / "ablation.json").read_text())["variants"].keys() == set(
        opts.variants
    )
    # Models done, measures missing: the train split is rendered again and measured (the
    # same values: seeded), and nothing is trained.
    for p in stored:
        p.unlink()
    monkeypatch.undo()
    monkeypatch.setattr(ab, "fit_reference", no_training)
    third = ab.ablation(opts)
    assert sorted((opts.out / "models").glob("*-realism-*.json")) == stored
    assert [p.stat().st_mtime_ns for p in models] == stamps
    for name, v in third["variants"].items():
        assert all(r["reused"] for r in v["runs"]) and not v["realism"]["reused"]
        assert v["realism"]["measures"] == first["variants"][name]["realism"]["measures"]
        assert v["realism"]["seconds"]["render"] > 0


def _variant(iou: float, **measures: float) -> dict:
    stat = {"mean": iou, "sd": 0.01}
    return {
        "changes": "",
        "base": "physics",
        "iou": stat,
        "precision": stat,
        "recall": stat,
        "val_iou": stat,
        "seconds": {"total": 1.0},
        "realism": {"measures": measures, "tiles": 160},
    }


def test_realism_transfer_table():
    """Spearman rho of each measure against the mean real IoU, across the variants: a
    distance falling as the IoU rises agrees (rho -1), one rising with it does not (rho
    +1); a constant one is undefined; fewer than AGREES_MIN_VARIANTS variants: no verdict."""
    ious = [0.5, 0.7, 0.6, 0.8, 0.65, 0.55]
    variants = {
        f"v{i}": _variant(
            iou,
            hist_w1_all=0.1,
            hist_w1_fg=1 - iou,
            raps_log10=iou,
            bg_fg_ratio=[0.3, 0.1, 0.2, 0.05, 0.25, 0.15][i],  # ranks: 6,2,4,1,5,3 vs 1,5,3,6,4,2
            fg_cv=1 - iou,
            domain_auc=0.9 + iou / 10,
        )
        for i, iou in enumerate(ious)
    }
    t = ab.realism_transfer(variants)
    assert t["hist_w1_fg"] == {"spearman": -1.0, "variants": 6, "agrees": True}
    assert t["raps_log10"] == {"spearman": 1.0, "variants": 6, "agrees": False}
    assert t["hist_w1_all"] == {"spearman": None, "variants": 6, "agrees": None}
    # 1 - 6 sum(d^2) / (n (n^2 - 1)), rank differences d = -5, 3, 1, 5, -1, -1: 1 - 62/35.
    assert t["bg_fg_ratio"]["spearman"] == pytest.approx(1 - 62 / 35)
    assert t["bg_fg_ratio"]["agrees"] is True
    few = ab.realism_transfer(dict(list(variants.items())[: ab.AGREES_MIN_VARIANTS - 1]))
    assert few["hist_w1_fg"]["spearman"] == -1.0 and few["hist_w1_fg"]["agrees"] is None
    results = {
        "config": "nucleus",
        "source": "src",
        "recipe": {
            "counts": {"train": 160, "validation": 20},
            "epochs": 15,
            "training_seeds": [0, 1, 2],
        },
        "variants": variants,
        "realism_transfer": t,
    }
    md = ab.ablation_markdown(results)
    assert "| hist W1 fg | -1.00 | 6 | yes |" in md
    assert "| RAPS log10 | +1.00 | 6 | no |" in md
    assert "| hist W1 all | — | 6 | — |" in md
    assert "| v0 | 0.500 ± 0.010 | 0.1000 | 0.5000 |" in md
    # Results from before the measures (no "realism"): no realism section.
    for v in variants.values():
        del v["realism"]
    del results["realism_transfer"]
    assert "Realism" not in ab.ablation_markdown(results)


def test_8bit_export_maps_zero_and_maximum_to_the_drawn_levels():
    """Camera zero -> the dark level, the row's maximum -> the peak, rounded, in 0-255;
    most of a dark background lands on one or two grey levels, as in BBBC038's files."""
    offset = ab.DEFAULT_CAMERA.offset_adu
    adu = torch.full((2, 1, 32, 32), offset)
    adu[:, :, 8:24, 8:24] = offset + 1000
    adu[0, 0, 0, 0] = offset + 7  # a faint pixel in the background
    out = ab.export_8bit(adu.int(), torch.tensor([2.0, 0.0]), torch.tensor([40.0, 255.0]))
    assert out.dtype == torch.int32 and int(out.min()) >= 0 and int(out.max()) <= 255
    assert int(out[0, 0, 10, 10]) == 40 and int(out[1, 0, 10, 10]) == 255
    assert int(out[0, 0, 1, 1]) == 2 and int(out[1, 0, 1, 1]) == 0
    assert int(out[0, 0, 0, 0]) == round(2 + 7 / 1000 * 38)
    assert ab.VARIANTS["snr=build+8bit"].recipe()["export"] == "8bit"
    assert "export" not in ab.VARIANTS["physics"].recipe()  # earlier runs keep their keys

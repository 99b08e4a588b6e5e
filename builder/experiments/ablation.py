"""Renderer ablation (issue 27): which part of the physics renderer hurts (or helps) the
transfer of a U-Net trained on its images to real nuclei?

U-Nets trained on the Nucleus-C physics renderer (:mod:`synthesis.render.physics`) score
lower on real BBBC038 tiles than ones trained on the naive rendering
(:mod:`synthesis.render.naive`, the mask blurred by 1.5 px). Each :class:`Variant` changes
the renderer's settings (or the train split's SNR) in one component:

- the physics renderer with one component removed or swapped (``-texture``, ``-rim``,
  ``-brightness``, ``-haze``, ``-background``, ``psf=naive``, ``snr=real``);
- ``naive`` (the physics renderer with every component removed and the naive PSF: the
  shipped naive renderer up to a per-row scale, which the camera's exposure solve cancels)
  with one component of the physics renderer added back (``naive+texture``...);
- ``physics`` and ``naive (shipped)``: the two renderers of the fidelity run.

The tiles are the fidelity run's (:mod:`builder.experiments.fidelity`): the source opened
with the same counts and seed. A variant's ``train`` and ``validation`` splits are made in
memory the way the build makes them (:class:`builder.assembly.images.ConfigImages`): the
renderer on the real masks and instance labels with each id's render seed, then the
Poisson-Gaussian camera with each id's noise seed. ``snr=build`` (the shipped settings and
the build's own SNR draw) therefore gives the bytes of the package's ``train`` split;
``physics`` is the same renderer with every train row at SNR 8, as the build made it before
the SNR range (issue 27). For every training seed the reference U-Net
(:func:`builder.assembly.reference.fit_reference`) is trained on the variant and scored on
the real test tiles at their native noise: aggregate IoU, precision and recall.

Train SNR rules: ``reference`` (every row at :data:`synthesis.levels.REFERENCE_SNR`),
``build`` (the build's draw, log-uniform in :data:`synthesis.levels.TRAIN_SNR`) or ``real``:
each row's SNR drawn from the native SNRs of the real *train* tiles
(measured as the build measures the real splits', :func:`synthesis.corruptions.real.native_snr`
on each tile's own noise fit), by the empirical quantile function at a uniform seeded by the
id, so the draws stay within the fitted range. Rows above the reference SNR get a camera
gain (e-/ADU) scaled by ``(SNR / REFERENCE_SNR)^2`` (:meth:`synthesis.levels.Camera.for_snr`,
as in the build): their image spans the ADU range of the
reference condition instead of saturating the ADC (the real train tiles reach SNR 165; at
the shipped gain a physics render of BBBC038 masks saturates some pixels from SNR ~40, every
row by SNR 80). The exposure solve counts the gain's rounding noise, so the SNR stays exact.

Realism against transfer: per variant, once (not per training seed), the seven realism
measures of :mod:`synthesis.realism` (five paired distances, the domain score, and the
feature distance in a U-Net trained on the real train tiles: the reference recipe, training
seed 0, saved as ``models/real-features-<hash>.safetensors``) between the variant's train
ADU images, the ones its U-Nets train on, and the real train tiles at native noise (the
same masks); and, per measure, the Spearman rank correlation across the
variants between the measure (lower: more real) and the variant's mean real-image IoU
(:func:`realism_transfer`). A measure that predicts transfer correlates strongly
negatively; it *agrees with transfer* when rho <= :data:`AGREES_RHO` over at least
:data:`AGREES_MIN_VARIANTS` variants (``docs/definitions.md#realism``). Beside them, the
**quick transfer** (``quick_transfer``, :data:`ABLATION_MEASURES`): 1 - the IoU, on the real
*train* tiles, of the reference U-Net trained for only ``quick_epochs`` epochs (training seed
0) on the variant's train images; a short training run, so it needs the training code and
lives here rather than in :mod:`synthesis.realism` (``models/<variant>-quick-<hash>``).

Resumable: each model is saved as ``models/<variant>-seed<k>-<hash>.safetensors`` and its
scores as the ``.json`` beside it, the hash covering every setting they depend on; a rerun
reuses both and renders nothing for a variant whose runs are all done and whose measures
are stored (``models/<variant>-realism-<hash>.json``, their own hash: a run whose models
are all done renders the train split once more to measure it, and trains nothing).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import statistics
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.assembly import BuildOptions
from builder.assembly.images import ConfigImages, batched
from builder.assembly.reference import REFERENCE, fit_reference
from builder.evaluation.scoring import tensor_counts
from builder.experiments.fidelity import split_scores
from builder.package.card import number_cell
from synthesis.corruptions.noise import DEFAULT_CAMERA
from synthesis.levels import REFERENCE_SNR
from synthesis.realism import (
    DOMAIN,
    FEATURE_PIXELS,
    MEASURES,
    DomainSettings,
    realism_measures,
    spearman,
)
from synthesis.render.naive import NAIVE_PSF_PX
from synthesis.render.physics import RENDER_SETTINGS, RenderSettings
from synthesis.rng import derive_seed
from synthesis.runtime.device import resolve_device
from synthesis.runtime.errors import InputError
from synthesis.runtime.files import atomic_write_bytes, sha256_file
from synthesis.runtime.progress import ProgressFactory

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

__all__ = [
    "ABLATION_MEASURES",
    "AGREES_MIN_VARIANTS",
    "AGREES_RHO",
    "COMPONENTS",
    "CONFIG",
    "FLAT_SHAPE",
    "VARIANTS",
    "AblationData",
    "AblationOptions",
    "Variant",
    "ablation",
    "ablation_markdown",
    "camera",
    "realism_transfer",
    "variant_by_name",
    "write_ablation_reports",
]

#: The structure ablated (the issue's: nuclei on BBBC038).
CONFIG = "nucleus"
PHYSICS: RenderSettings = RENDER_SETTINGS[CONFIG]

#: Gamma shape of a constant density: the Wilson-Hilferty texture has a CV of about
#: ``1 / sqrt(shape)`` = 1e-5, below float32's resolution of the cube's terms.
FLAT_SHAPE = 1e10

#: Per component, the settings that remove it (the naive renderer's values): no texture
#: (constant density, the range of per-row mean densities ``shape x scale`` kept), no rim,
#: no per-nucleus brightness, no haze, no background, the naive PSF.
COMPONENTS: dict[str, dict[str, tuple[float, float]]] = {
    "texture": {
        "gamma_shape": (FLAT_SHAPE, FLAT_SHAPE),
        "gamma_scale": (
            PHYSICS.gamma_shape[0] * PHYSICS.gamma_scale[0] / FLAT_SHAPE,
            PHYSICS.gamma_shape[1] * PHYSICS.gamma_scale[1] / FLAT_SHAPE,
        ),
    },
    "rim": {"rim_dimming": (0.0, 0.0)},
    "brightness": {"instance_log_sd": (0.0, 0.0)},
    "haze": {"haze_fraction": (0.0, 0.0)},
    "background": {"background_fraction": (0.0, 0.0)},
    "psf": {"psf_sigma_px": (NAIVE_PSF_PX, NAIVE_PSF_PX)},
}

#: Train SNR rules: every row at the reference SNR, drawn from the real train tiles, or
#: the build's own draw (log-uniform in :data:`synthesis.levels.TRAIN_SNR`).
SNR_RULES = ("reference", "real", "build")
#: Exports of the camera's ADU: none (the benchmark's 16-bit camera), or ``8bit``: each row
#: mapped linearly from its camera zero and its maximum to the dark level and the maximum of
#: a real train tile (drawn per row), rounded and clipped to 0-255, as BBBC038's 8-bit files.
EXPORTS = ("none", "8bit")

#: Tiles per render and camera batch (as the build's default; rows do not depend on it).
_BATCH = 16

#: A realism measure agrees with transfer when its Spearman rho against the variants' mean
#: real-image IoU is at or below this (lower distance, higher IoU; about p = 0.025
#: two-sided for the 20 variants) ...
AGREES_RHO = -0.5
#: ... over at least this many variants (fewer: no verdict).
AGREES_MIN_VARIANTS = 5

#: Version of the realism measures' definitions, in their cache key: bump it when
#: :mod:`synthesis.realism` changes a value.
REALISM_VERSION = 2

#: The measures compared with transfer: :data:`synthesis.realism.MEASURES` and the quick
#: transfer (a short training run on the variant, scored on the real train tiles).
ABLATION_MEASURES: tuple[str, ...] = (*MEASURES, "quick_transfer")


@dataclass(frozen=True)
class Variant:
    """One training condition: renderer settings (None: the shipped naive renderer) and a
    train SNR rule; ``base`` is the row it is compared with (``physics`` or ``naive``)."""

    name: str
    settings: RenderSettings | None
    snr: str = "reference"
    base: str = "physics"
    changes: str = ""
    export: str = "none"

    @property
    def slug(self) -> str:
        """The name as a file name: ``-texture`` -> ``no-texture``, ``psf=naive`` ->
        ``psf-naive``, ``naive (shipped)`` -> ``naive-shipped``."""
        name = "no" + self.name if self.name.startswith("-") else self.name
        return re.sub(r"[^A-Za-z0-9+.-]+", "-", name).strip("-")

    def recipe(self) -> dict[str, Any]:
        """What the variant's images depend on."""
        out: dict[str, Any] = {
            "renderer": "naive" if self.settings is None else "physics",
            "settings": None if self.settings is None else asdict(self.settings),
            "snr": self.snr,
        }
        if self.export != "none":  # absent for the 16-bit camera: earlier runs keep their keys
            out["export"] = self.export
        return out

    def render(
        self, mask: torch.Tensor, seeds: torch.Tensor, instances: torch.Tensor | None
    ) -> torch.Tensor:
        """Noise-free images ``(B, 1, H, W)`` of ``mask`` (the build's renderer call)."""
        if self.settings is None:
            from synthesis.render.naive import render as naive

            return naive(mask, seeds, CONFIG, instances=instances).image
        from synthesis.render.physics import render

        image = render(mask, seeds, CONFIG, instances=instances, settings=self.settings).image
        # Without a background the blurs' float rounding leaves values of about -1e-5 far
        # from the nuclei, which the camera refuses as photon rates; with one, no-op.
        return image.clamp(min=0)


def _ranges(settings: RenderSettings, against: RenderSettings) -> str:
    """The fields where ``settings`` differs from ``against``, as ``name lo-hi``."""
    out = []
    for f in fields(RenderSettings):
        lo, hi = getattr(settings, f.name)
        if (lo, hi) != getattr(against, f.name):
            out.append(f"{f.name} {lo:.3g}" if lo == hi else f"{f.name} {lo:.3g}-{hi:.3g}")
    return ", ".join(out)


def _variants() -> dict[str, Variant]:
    removed = {c: replace(PHYSICS, **v) for c, v in COMPONENTS.items()}
    naive = replace(PHYSICS, **{k: v for c in COMPONENTS.values() for k, v in c.items()})
    real_snr = "train SNR drawn from the real train tiles' native SNR"
    out = [Variant("physics", PHYSICS, changes="shipped settings, train at SNR 8")]
    for c, s in removed.items():
        name = "psf=naive" if c == "psf" else f"-{c}"
        out.append(Variant(name, s, changes=_ranges(s, PHYSICS)))
    out.append(Variant("snr=real", PHYSICS, snr="real", changes=real_snr))
    build_snr = "train SNR as the build draws it (log-uniform in TRAIN_SNR['nucleus'])"
    out.append(Variant("snr=build", PHYSICS, snr="build", changes=build_snr))
    out.append(
        Variant(
            "snr=build+8bit",
            PHYSICS,
            snr="build",
            export="8bit",
            changes=build_snr + "; 8-bit export like the real files",
        )
    )
    no_brightness = removed["brightness"]
    out.append(
        Variant(
            "snr=build-brightness",
            no_brightness,
            snr="build",
            changes=build_snr + "; " + _ranges(no_brightness, PHYSICS),
        )
    )
    out.append(Variant("naive", naive, base="naive", changes=_ranges(naive, PHYSICS)))
    for c in COMPONENTS:
        s = replace(naive, **{k: getattr(PHYSICS, k) for k in COMPONENTS[c]})
        out.append(Variant(f"naive+{c}", s, base="naive", changes=_ranges(s, naive)))
    out.append(Variant("naive+snr=real", naive, snr="real", base="naive", changes=real_snr))
    out.append(Variant("naive (shipped)", None, base="naive", changes="synthesis/render/naive.py"))
    return {v.name: v for v in out}


#: Every variant, in the table's order.
VARIANTS: dict[str, Variant] = _variants()


def variant_by_name(name: str) -> Variant:
    """A variant by its name or its :attr:`Variant.slug`.

    Raises:
        InputError: no such variant.
    """
    for v in VARIANTS.values():
        if name in (v.name, v.slug):
            return v
    raise InputError(
        f"unknown variant {name!r}; expected one of {', '.join(VARIANTS)} (or their file "
        f"names {', '.join(v.slug for v in VARIANTS.values())})"
    )


@dataclass(frozen=True)
class AblationOptions:
    """One ablation run. ``source``, ``train``, ``validation``, ``test`` and ``seed`` are
    the fidelity run's (the same tiles and render/noise seeds); ``seeds`` training seeds
    ``0..seeds-1`` per variant; ``domain``: the domain score's settings (``seed`` seeds it)."""

    source: str
    out: Path
    variants: tuple[str, ...] = tuple(VARIANTS)
    seeds: int = 3
    epochs: int = 15
    train: int = 160
    validation: int = 20
    test: int = 1000
    seed: int = 0
    device: str | None = None
    #: The domain score's classifier and training (in the measures' cache key).
    domain: DomainSettings = DOMAIN
    #: Epochs of the quick transfer's U-Net (training seed 0).
    quick_epochs: int = 3

    def validate(self) -> None:
        """Raises :class:`InputError` for a bad source, variant or count."""
        if self.source == "procedural" or not Path(self.source).exists():
            raise InputError(f"{self.source}: the ablation needs a source with real images")
        for name in self.variants:
            variant_by_name(name)
        if not self.variants:
            raise InputError("no variant selected")
        for key in ("seeds", "epochs", "train", "validation", "test", "quick_epochs"):
            if getattr(self, key) < 1:
                raise InputError(f"{key} must be >= 1. Got {getattr(self, key)}")

    def counts(self) -> dict[str, int]:
        return {"train": self.train, "validation": self.validation, "test": self.test}

    def run_recipe(self, variant: Variant, seed: int) -> dict[str, Any]:
        """Everything one (variant, training seed) model and its scores depend on."""
        return self._training_recipe(seed, variant.recipe())

    def _training_recipe(self, seed: int, trained_on: dict[str, Any] | str) -> dict[str, Any]:
        return {
            "config": CONFIG,
            "source": str(Path(self.source).resolve()),
            "counts": self.counts(),
            "seed": self.seed,
            "epochs": self.epochs,
            "training_seed": seed,
            "reference_training": asdict(REFERENCE),
            "variant": trained_on,
        }

    def model_path(self, variant: Variant, seed: int) -> Path:
        key = json.dumps(self.run_recipe(variant, seed), sort_keys=True).encode()
        digest = hashlib.sha256(key).hexdigest()[:12]
        return self.out / "models" / f"{variant.slug}-seed{seed}-{digest}.safetensors"

    def features_recipe(self) -> dict[str, Any]:
        """Everything the feature network (the reference U-Net trained on the real train
        tiles, training seed 0) depends on."""
        return self._training_recipe(0, "real")

    def features_path(self) -> Path:
        """``models/real-features-<hash>.safetensors``: the feature network."""
        key = json.dumps(self.features_recipe(), sort_keys=True).encode()
        digest = hashlib.sha256(key).hexdigest()[:12]
        return self.out / "models" / f"real-features-{digest}.safetensors"

    def realism_recipe(self, variant: Variant) -> dict[str, Any]:
        """Everything a variant's realism measures depend on (no training setting of the
        variant's own U-Nets)."""
        return {
            "config": CONFIG,
            "source": str(Path(self.source).resolve()),
            "counts": self.counts(),
            "seed": self.seed,
            "variant": variant.recipe(),
            "measures": {
                "version": REALISM_VERSION,
                "domain": asdict(self.domain),
                "features": {"network": self.features_recipe(), "pixels": FEATURE_PIXELS},
            },
        }

    def quick_recipe(self, variant: Variant) -> dict[str, Any]:
        """Everything a variant's quick transfer depends on: its training recipe at
        ``quick_epochs`` epochs and training seed 0, scored on the real train tiles."""
        recipe = self._training_recipe(0, variant.recipe())
        return {**recipe, "epochs": self.quick_epochs, "scored_on": "real train tiles"}

    def quick_path(self, variant: Variant) -> Path:
        """``models/<variant>-quick-<hash>.safetensors``: the quick transfer's U-Net (its
        record is the ``.json`` beside it)."""
        key = json.dumps(self.quick_recipe(variant), sort_keys=True).encode()
        digest = hashlib.sha256(key).hexdigest()[:12]
        return self.out / "models" / f"{variant.slug}-quick-{digest}.safetensors"

    def realism_path(self, variant: Variant) -> Path:
        """``models/<variant>-realism-<hash>.json``: the variant's stored measures."""
        key = json.dumps(self.realism_recipe(variant), sort_keys=True).encode()
        digest = hashlib.sha256(key).hexdigest()[:12]
        return self.out / "models" / f"{variant.slug}-realism-{digest}.json"


class AblationData:
    """The fidelity run's tiles, and each variant's train and validation images made from
    their masks. Opens the source on first use (a resumed run may need nothing)."""

    def __init__(self, opts: AblationOptions, device: torch.device) -> None:
        self.opts = opts
        self.device = device
        self._images: ConfigImages | None = None
        #: The native SNRs of the real train tiles, once :meth:`native_snr_fit` ran.
        self.snr_fit: torch.Tensor | None = None
        #: Dark level and maximum of each real train tile, once :meth:`real_levels` ran.
        self._levels: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def images(self) -> ConfigImages:
        """The build's images of the config: its source, seeds and real-tile estimators."""
        if self._images is None:
            build = BuildOptions(
                out=self.opts.out,
                configs=[CONFIG],
                source=str(Path(self.opts.source).resolve()),
                counts=self.opts.counts(),
                seed=self.opts.seed,
                device=str(self.device),
            )
            self._images = ConfigImages(build, CONFIG, self.device)
        return self._images

    def ids(self, split: str) -> list[str]:
        return self.images.source.ids(split)

    def real(self, split: str) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """``(ids, images float32 (N, 1, H, W) grey levels at native noise, masks bool)``
        of the real tiles of ``split``."""
        from synthesis.groundtruth.sources import stack_items

        ids = self.ids(split)
        x, m, _ = stack_items(self.images.source.load(ids))
        return ids, x, m

    def native_snr_fit(self) -> torch.Tensor:
        """The native SNRs of the real train tiles (float64, sorted, finite and > 0): what
        the ``real`` SNR rule draws from."""
        import torch

        if self.snr_fit is None:
            values = self.images.native_snr_of(self.ids("train"))
            v = torch.tensor(sorted(values.values()), dtype=torch.float64)
            v = v[torch.isfinite(v) & (v > 0)]
            if v.numel() == 0:
                raise InputError("no real train tile has a measurable native SNR")
            self.snr_fit = v
            logger.info(
                "ablation: native SNR of %d real train tiles: min %.1f, median %.1f, max %.1f",
                v.numel(),
                float(v[0]),
                float(v.median()),
                float(v[-1]),
            )
        return self.snr_fit

    def train_snr(self, rule: str, ids: list[str]) -> torch.Tensor:
        """Per-row train SNR ``(B,)`` float64 of ``ids`` under ``rule``: the reference SNR,
        or the empirical quantile of the real train tiles' native SNR at a uniform seeded
        by the id (the same draw for an id in every variant)."""
        import torch

        from synthesis import rng
        from synthesis.rng import streams

        if rule == "reference":
            return torch.full((len(ids),), REFERENCE_SNR, dtype=torch.float64)
        if rule == "build":
            from builder.package.plan import SplitSpec

            spec = SplitSpec("train", "reference", "snr", REFERENCE_SNR, "train")
            snr = self.images.target_snr(spec, ids)
            return torch.as_tensor(snr, dtype=torch.float64).reshape(-1).expand(len(ids))
        if rule != "real":
            raise ValueError(f"snr rule must be one of {SNR_RULES}. Got {rule!r}")
        seeds = torch.tensor([derive_seed(self.opts.seed, CONFIG, i, "ablation-snr") for i in ids])
        u = rng.uniform(seeds, (1,), streams.ABLATION_SNR)[:, 0].double()
        return torch.quantile(self.native_snr_fit(), u)

    def real_levels(self, ids: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per id, ``(dark, peak)`` ``(B,)`` of a real train tile drawn by the id: the 2nd
        percentile of its background and its maximum, in its file's grey levels (the
        ``8bit`` export maps a render to them)."""
        import torch

        from synthesis import rng
        from synthesis.groundtruth.sources import stack_items
        from synthesis.rng import streams

        if self._levels is None:
            x, m, _ = stack_items(self.images.source.load(self.ids("train")))
            dark = torch.stack([torch.quantile(x[i][~m[i]].double(), 0.02) for i in range(len(x))])
            self._levels = (dark, x.flatten(1).amax(1).double())
        dark, peak = self._levels
        seeds = torch.tensor([derive_seed(self.opts.seed, CONFIG, i, "ablation-8bit") for i in ids])
        u = rng.uniform(seeds, (1,), streams.ABLATION_SNR)[:, 0].double()
        pick = (u * len(dark)).long().clamp(max=len(dark) - 1)
        return dark[pick], peak[pick]

    def native_snr_summary(self) -> dict[str, Any]:
        """How many real train tiles the ``real`` rule was fitted on, and quantiles."""
        v = self.native_snr_fit()
        qs = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
        return {"tiles": int(v.numel()), "quantiles": {str(q): float(v.quantile(q)) for q in qs}}

    def synthetic(self, variant: Variant, split: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """``(ADU float32 (N, 1, H, W), masks bool, facts)`` of ``split`` rendered by
        ``variant``: the build's path (renderer with the render seeds, camera with the noise
        seeds), with the variant's settings and train SNR rule. ``facts``: the rows' SNR
        range and the share of saturated pixels."""
        import torch

        from synthesis.groundtruth.sources import stack_items

        adus, masks, snrs = [], [], []
        for chunk in batched(self.ids(split), _BATCH):
            _, mask, inst = stack_items(self.images.source.load(chunk))
            mask = mask.to(self.device)
            inst = None if inst is None else inst.to(self.device)
            clean = variant.render(mask, self._seeds(chunk, "render"), inst)
            snr = self.train_snr(variant.snr, chunk)
            adu = camera(clean, mask, self._seeds(chunk, "noise"), snr)
            if variant.export == "8bit":
                adu = export_8bit(adu, *self.real_levels(chunk))
            adus.append(adu.float().cpu())
            masks.append(mask.cpu())
            snrs.append(snr)
        adu, snr = torch.cat(adus), torch.cat(snrs)
        facts: dict[str, Any] = {
            "snr_min": float(snr.min()),
            "snr_median": float(snr.median()),
            "snr_max": float(snr.max()),
            "saturated_fraction": float((adu >= DEFAULT_CAMERA.adc_max_adu).float().mean()),
        }
        if variant.snr == "real":
            facts["native_snr_train"] = self.native_snr_summary()
        return adu, torch.cat(masks), facts

    def _seeds(self, ids: list[str], purpose: str) -> torch.Tensor:
        """The build's per-id seeds (:class:`ConfigImages`: ``(seed, config, id, purpose)``)."""
        import torch

        vals = [derive_seed(self.opts.seed, CONFIG, i, purpose) for i in ids]
        return torch.tensor(vals, dtype=torch.int64, device=self.device)


def camera(
    clean: torch.Tensor, mask: torch.Tensor, seeds: torch.Tensor, snr: torch.Tensor
) -> torch.Tensor:
    """Noisy ADU (int32) of ``clean`` at per-row ``snr``: the build's camera step
    (:func:`synthesis.corruptions.noise.camera_images`, each row on
    :meth:`~synthesis.levels.Camera.for_snr` of its SNR)."""
    from synthesis.corruptions.noise import camera_images

    return camera_images(clean, mask, snr, seeds, camera=DEFAULT_CAMERA).adu


def export_8bit(adu: torch.Tensor, dark: torch.Tensor, peak: torch.Tensor) -> torch.Tensor:
    """Each row of ``adu`` mapped linearly from the camera zero (its offset) and the row's
    maximum to ``dark`` and ``peak`` (per row), rounded and clipped to ``[0, 255]``:
    ``(B, 1, H, W)`` int32. What an 8-bit file of the acquisition holds (BBBC038's tiles:
    most of their background is one or two grey levels)."""
    import torch

    x = adu.double() - DEFAULT_CAMERA.offset_adu
    top = x.flatten(1).amax(1).clamp(min=1.0).view(-1, 1, 1, 1)
    d, p = dark.double().view(-1, 1, 1, 1), peak.double().view(-1, 1, 1, 1)
    return torch.round(d + x / top * (p - d)).clamp(0, 255).to(torch.int32)


def ablation(opts: AblationOptions, *, progress: ProgressFactory | None = None) -> dict[str, Any]:
    """Train and score every (variant, training seed) not done yet; return the results
    (see :func:`write_ablation_reports`).

    Raises:
        InputError: bad options (nothing is written).
    """
    opts.validate()
    device = resolve_device(opts.device)
    data = AblationData(opts, device)
    test: list[Any] = []  # the real test tiles, loaded once when a run needs scoring
    real_train: list[Any] = []  # the real train tiles, loaded once when a measure needs them
    network: list[Any] = []  # the feature network, trained or loaded once when needed
    results: dict[str, Any] = {
        "config": CONFIG,
        "source": str(opts.source),
        "recipe": {
            "counts": opts.counts(),
            "seed": opts.seed,
            "epochs": opts.epochs,
            "training_seeds": list(range(opts.seeds)),
            "reference_training": asdict(REFERENCE),
        },
        "device": str(device),
        "variants": {},
    }
    for name in opts.variants:
        variant = variant_by_name(name)
        made: list[Any] = []  # this variant's (train, validation), rendered once if needed
        runs = []
        for seed in range(opts.seeds):
            runs.append(_run(opts, variant, seed, data, made, test, device, progress))
        results["variants"][variant.name] = _summary(variant, runs)
        realism = _realism(opts, variant, data, made, real_train, network, device, progress)
        quick = _quick_transfer(opts, variant, data, made, real_train, device, progress)
        realism["measures"]["quick_transfer"] = quick["distance"]
        realism["quick_transfer"] = quick
        results["variants"][variant.name]["realism"] = realism
        logger.info(
            "ablation: %s IoU real %s", variant.name, results["variants"][variant.name]["iou"]
        )
    results["realism_transfer"] = realism_transfer(results["variants"])
    fitted = [
        v["train_data"]["native_snr_train"]
        for v in results["variants"].values()
        if v["train_data"] and "native_snr_train" in v["train_data"]
    ]
    if fitted:
        results["native_snr_train"] = fitted[0]
    return results


def _run(
    opts: AblationOptions,
    variant: Variant,
    seed: int,
    data: AblationData,
    made: list[Any],
    test: list[Any],
    device: torch.device,
    progress: ProgressFactory | None,
) -> dict[str, Any]:
    """One (variant, training seed): its stored scores, or train (or load) and score."""
    from synthesis.models.unet import load_model
    from synthesis.normalize import zscore

    path = opts.model_path(variant, seed)
    scores = path.with_suffix(".json")
    if scores.exists():
        logger.info("ablation: reusing %s", scores)
        return {**json.loads(scores.read_text()), "reused": True}
    render: dict[str, Any] | None = None
    train_s: float | None = None
    if path.exists():
        model, meta = load_model(path, device=device)
        saved = {"val_iou": meta["val_iou"], "best_epoch": meta["best_epoch"]}
        logger.info("ablation: scoring the saved %s", path)
    else:
        if not made:
            t0 = time.perf_counter()
            train = data.synthetic(variant, "train")
            val = data.synthetic(variant, "validation")
            made.append((train, val))
            render = {"seconds": round(time.perf_counter() - t0, 2), **train[2]}
            logger.info("ablation: %s rendered (%s)", variant.name, render)
        (tx, tm, _), (vx, vm, _) = made[0]
        t0 = time.perf_counter()
        model, saved = _fit(
            opts, path, (tx, tm, vx, vm), seed, device, progress, opts.run_recipe(variant, seed)
        )
        train_s = round(time.perf_counter() - t0, 2)
    if not test:
        test.append(data.real("test"))
    ids, x, m = test[0]
    t0 = time.perf_counter()
    counts = tensor_counts(ids, x, m, model.eval(), zscore, device=device)
    run = {
        "variant": variant.name,
        "seed": seed,
        "model": path.name,
        "sha256": sha256_file(path),
        "val_iou": float(saved["val_iou"]),
        "best_epoch": int(saved["best_epoch"]),
        **split_scores(counts),
        "render": render,
        "train_seconds": train_s,
        "score_seconds": round(time.perf_counter() - t0, 2),
    }
    atomic_write_bytes(scores, (json.dumps(run, indent=2) + "\n").encode())
    logger.info("ablation: %s seed %d: IoU real %.4f", variant.name, seed, run["iou"])
    return {**run, "reused": False}


def _fit(
    opts: AblationOptions,
    path: Path,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    seed: int,
    device: torch.device,
    progress: ProgressFactory | None,
    recipe: dict[str, Any],
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The reference U-Net trained on ``data`` (train images, masks, validation images,
    masks) with training seed ``seed``, saved to ``path`` with ``recipe`` in its card."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return fit_reference(
        *data,
        path=path,
        config=CONFIG,
        seed=seed,
        device=device,
        epochs=opts.epochs,
        progress=progress,
        extra={"seed": seed, "ablation": recipe},
    )


def _feature_network(
    opts: AblationOptions,
    data: AblationData,
    real_train: list[Any],
    device: torch.device,
    progress: ProgressFactory | None,
) -> torch.nn.Module:
    """The reference U-Net trained on the real train tiles (validation: the real validation
    tiles), training seed 0: loaded from :meth:`AblationOptions.features_path`, or trained
    and saved there. On the CPU (the feature distance runs there)."""
    from synthesis.models.unet import load_model

    path = opts.features_path()
    if not path.exists():
        if not real_train:
            real_train.append(data.real("train"))
        _, tx, tm = real_train[0]
        _, vx, vm = data.real("validation")
        t0 = time.perf_counter()
        _fit(opts, path, (tx, tm, vx, vm), 0, device, progress, opts.features_recipe())
        logger.info("ablation: trained the feature network in %.0f s", time.perf_counter() - t0)
    model, _ = load_model(path, device="cpu")
    return model.eval()


def _realism(
    opts: AblationOptions,
    variant: Variant,
    data: AblationData,
    made: list[Any],
    real_train: list[Any],
    network: list[Any],
    device: torch.device,
    progress: ProgressFactory | None,
) -> dict[str, Any]:
    """The variant's realism measures against the real train tiles: stored, or computed from
    its train images (this run's, else rendered now) and stored."""
    import torch

    path = opts.realism_path(variant)
    if path.exists():
        logger.info("ablation: reusing %s", path)
        return {**json.loads(path.read_text()), "reused": True}
    render_s: float | None = None
    if made:
        adu, mask, _ = made[0][0]
    else:
        t0 = time.perf_counter()
        adu, mask, _ = data.synthetic(variant, "train")
        render_s = round(time.perf_counter() - t0, 2)
    if not real_train:
        real_train.append(data.real("train"))
    _, x, m = real_train[0]
    if not torch.equal(m, mask.cpu()):
        raise RuntimeError(f"{variant.name}: the train masks differ from the real train tiles'")
    if not network:
        network.append(_feature_network(opts, data, real_train, device, progress))
    t0 = time.perf_counter()
    record = {
        "variant": variant.name,
        **realism_measures(x, adu, m, seed=opts.seed, settings=opts.domain, network=network[0]),
        "seconds": {"render": render_s, "measure": round(time.perf_counter() - t0, 2)},
        "recipe": opts.realism_recipe(variant),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(record, indent=2) + "\n").encode())
    logger.info("ablation: %s realism %s", variant.name, record["measures"])
    return {**record, "reused": False}


def _quick_transfer(
    opts: AblationOptions,
    variant: Variant,
    data: AblationData,
    made: list[Any],
    real_train: list[Any],
    device: torch.device,
    progress: ProgressFactory | None,
) -> dict[str, Any]:
    """The variant's quick transfer: stored, or the reference U-Net trained for
    ``opts.quick_epochs`` epochs (training seed 0) on its train images (this run's, else
    rendered now), scored on the real train tiles, and stored."""
    from synthesis.normalize import zscore

    path = opts.quick_path(variant)
    record_path = path.with_suffix(".json")
    if record_path.exists():
        logger.info("ablation: reusing %s", record_path)
        return {**json.loads(record_path.read_text()), "reused": True}
    if not made:
        made.append((data.synthetic(variant, "train"), data.synthetic(variant, "validation")))
    (tx, tm, _), (vx, vm, _) = made[0]
    if not real_train:
        real_train.append(data.real("train"))
    ids, x, m = real_train[0]
    t0 = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    model, _ = fit_reference(
        tx,
        tm,
        vx,
        vm,
        path=path,
        config=CONFIG,
        seed=0,
        device=device,
        epochs=opts.quick_epochs,
        progress=progress,
        extra={"seed": 0, "ablation": opts.quick_recipe(variant)},
    )
    iou = float(split_scores(tensor_counts(ids, x, m, model.eval(), zscore, device=device))["iou"])
    record = {
        "variant": variant.name,
        "iou": iou,
        "distance": 1.0 - iou,
        "epochs": opts.quick_epochs,
        "training_seed": 0,
        "model": path.name,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    atomic_write_bytes(record_path, (json.dumps(record, indent=2) + "\n").encode())
    logger.info("ablation: %s quick transfer IoU %.4f", variant.name, iou)
    return {**record, "reused": False}


def realism_transfer(variants: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per realism measure (:data:`ABLATION_MEASURES`): the Spearman rank
    correlation across ``variants`` (``ablation()``'s, those with measures) between the
    measure and the mean real-image IoU (``spearman``, None where undefined), the number of
    ``variants``, and ``agrees``: rho <= :data:`AGREES_RHO` (None with fewer than
    :data:`AGREES_MIN_VARIANTS` variants or rho undefined).

    Example:
        >>> v = {n: {"iou": {"mean": i}, "realism": {"measures": {"fg_cv": 1 - i}}}
        ...      for n, i in (("a", 0.5), ("b", 0.7), ("c", 0.6))}
        >>> realism_transfer(v)["fg_cv"]
        {'spearman': -1.0, 'variants': 3, 'agrees': None}
    """
    out: dict[str, dict[str, Any]] = {}
    for measure in ABLATION_MEASURES:
        pairs = [
            (v["realism"]["measures"][measure], v["iou"]["mean"])
            for v in variants.values()
            if measure in (v.get("realism") or {}).get("measures", {})
        ]
        rho = spearman([p[0] for p in pairs], [p[1] for p in pairs])
        verdict = None if rho is None or len(pairs) < AGREES_MIN_VARIANTS else rho <= AGREES_RHO
        out[measure] = {"spearman": rho, "variants": len(pairs), "agrees": verdict}
    return out


def _summary(variant: Variant, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A variant's runs, the mean and sample sd (ddof=1) of their scores, and their time."""
    out: dict[str, Any] = {
        "changes": variant.changes,
        "base": variant.base,
        "snr": variant.snr,
        "renderer": variant.recipe()["renderer"],
        "settings": variant.recipe()["settings"],
        "runs": runs,
    }
    for key in ("iou", "precision", "recall", "val_iou"):
        values = [float(r[key]) for r in runs]
        out[key] = {
            "mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else None,
        }
    render = next((r["render"] for r in runs if r.get("render")), None)
    parts = [render["seconds"] if render else None]
    parts += [r.get("train_seconds") for r in runs] + [r.get("score_seconds") for r in runs]
    out["train_data"] = render
    out["seconds"] = {
        "render": render["seconds"] if render else None,
        "train": [r.get("train_seconds") for r in runs],
        "score": [r.get("score_seconds") for r in runs],
        "total": round(sum(p for p in parts if p is not None), 1),
    }
    return out


def write_ablation_reports(out: Path, results: dict[str, Any]) -> list[Path]:
    """``ablation.json`` and ``ablation.md`` in ``out``, each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "ablation.json", out / "ablation.md"]
    atomic_write_bytes(paths[0], (json.dumps(results, indent=2) + "\n").encode())
    atomic_write_bytes(paths[1], ablation_markdown(results).encode())
    return paths


def _mean_sd(stat: dict[str, float | None]) -> str:
    sd = stat["sd"]
    return number_cell(stat["mean"]) + ("" if sd is None else f" ± {sd:.3f}")


def ablation_markdown(results: dict[str, Any]) -> str:
    """The table: per variant, the real-image IoU at native noise (mean ± sd over the
    training seeds), its difference from the variant's base (physics or naive), precision,
    recall, the validation IoU on its own images, and the wall time of its runs; then, where
    the results have them, the realism measures per variant and each measure's Spearman rho
    against the real-image IoU (:func:`realism_transfer`)."""
    r = results["recipe"]
    variants = results["variants"]
    lines = [
        f"# Renderer ablation: {results['config']} from `{results['source']}`",
        "",
        f"U-Net trained on each variant's train split ({r['counts']['train']} tiles, "
        f"validation {r['counts']['validation']}, {r['epochs']} epochs), scored on the real "
        "test tiles at native noise; mean ± sd (ddof=1) over training seeds "
        f"{', '.join(map(str, r['training_seeds']))}. Δ: mean IoU minus that of the "
        "variant's base (physics or naive) when the base is in the table.",
        "",
        "| variant | changes | IoU real | Δ vs base | precision | recall | val IoU (own) "
        "| time (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, v in variants.items():
        base = variants.get(v["base"])
        delta = (
            f"{v['iou']['mean'] - base['iou']['mean']:+.3f}"
            if base is not None and name != v["base"]
            else "—"
        )
        lines.append(
            f"| {name} | {v['changes']} | {_mean_sd(v['iou'])} | {delta} "
            f"| {_mean_sd(v['precision'])} | {_mean_sd(v['recall'])} "
            f"| {_mean_sd(v['val_iou'])} | {v['seconds']['total']:.0f} |"
        )
    native = results.get("native_snr_train")
    if native:
        q = native["quantiles"]
        lines += [
            "",
            f"Native SNR of the {native['tiles']} real train tiles (the `snr=real` rule): "
            f"min {q['0.0']:.1f}, median {q['0.5']:.1f}, max {q['1.0']:.1f}.",
        ]
    return "\n".join(lines + _realism_markdown(results)) + "\n"


#: Column heads of the realism measures.
_MEASURE_HEADS = {
    "hist_w1_all": "hist W1 all",
    "hist_w1_fg": "hist W1 fg",
    "raps_log10": "RAPS log10",
    "bg_fg_ratio": "bg/fg",
    "fg_cv": "fg CV",
    "domain_auc": "domain AUC",
    "feature_fd": "feature FD",
    "quick_transfer": "quick transfer",
}


def _realism_markdown(results: dict[str, Any]) -> list[str]:
    """The realism section: each variant's measures, and each measure's Spearman rho against
    the real-image IoU across the variants (nothing for results without measures)."""
    measured = {n: v for n, v in results["variants"].items() if v.get("realism")}
    if not measured:
        return []
    tiles = {v["realism"]["tiles"] for v in measured.values()}
    lines = [
        "",
        "## Realism against transfer",
        "",
        "Realism measures between each variant's train images (what its U-Nets train on) and "
        f"the real train tiles at native noise ({', '.join(map(str, sorted(tiles)))} tiles, "
        "the same masks; docs/definitions.md#realism): five paired distances (per tile, then "
        "averaged), the domain score (ROC AUC of a small CNN telling the two apart on "
        "held-out images; 0.5: indistinguishable) and the feature distance (Fréchet distance "
        "of foreground and of background pixels in the features of a U-Net trained on the "
        "real train tiles, averaged); and the quick transfer (1 - the IoU on the real train "
        "tiles of the reference U-Net trained a few epochs, training seed 0, on the variant's "
        "train images). Lower is more real for all.",
        "",
        "| variant | IoU real | " + " | ".join(_MEASURE_HEADS[m] for m in ABLATION_MEASURES) + " |",
        "|---|---:|" + "---:|" * len(ABLATION_MEASURES),
    ]
    for name, v in measured.items():
        values = v["realism"]["measures"]
        cells = [number_cell(values.get(m), 4) for m in ABLATION_MEASURES]
        lines.append(f"| {name} | {_mean_sd(v['iou'])} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Spearman rank correlation across the variants between each measure and the mean "
        "real-image IoU: a measure that predicts transfer correlates strongly negatively. It "
        f"agrees with transfer when rho <= {AGREES_RHO} over at least {AGREES_MIN_VARIANTS} "
        "variants (— : undefined, or too few variants).",
        "",
        "| measure | Spearman rho vs IoU real | variants | agrees with transfer |",
        "|---|---:|---:|---|",
    ]
    for measure, c in results.get("realism_transfer", realism_transfer(measured)).items():
        verdict = {True: "yes", False: "no", None: "—"}[c["agrees"]]
        rho = "—" if c["spearman"] is None else f"{c['spearman']:+.2f}"
        lines.append(f"| {_MEASURE_HEADS[measure]} | {rho} | {c['variants']} | {verdict} |")
    return lines

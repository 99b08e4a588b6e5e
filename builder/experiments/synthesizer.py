"""Fit the mask-to-image GAN and its denoiser on real (mask, image) pairs.

The library side of ``fluorobench-c train-synthesizer``:

    fluorobench-c train-synthesizer --config nucleus --source PATH --out DIR [--preset cpu]

Writes into ``DIR`` (resumable: re-run the same command after an interruption)::

    DIR/<config>-pix2pix.safetensors     the generator   (--renderer gan --weights DIR)
    DIR/<config>-denoiser.safetensors    the denoiser
    DIR/<config>-pix2pix.md              model card: data, settings, losses, residual noise
    DIR/<config>-pix2pix-loss.jsonl      loss logs (and -denoiser-loss.jsonl)
    DIR/samples/*.png                    mask | real | generated grids during training
    DIR/checkpoints/*.safetensors        resumable training state (two newest per stage)
    DIR/metrics.json                     residual noise of generated images, before/after

Real (mask, image) tiles come from the source adapters (:func:`synthesis.groundtruth.sources.open_source`:
BBBC038, Luo et al.'s lists, images/ + masks/ folders). The generator learns from the ``train``
and ``validation`` tiles; the ``test`` tiles (the benchmark's ``real`` split) are held out for
the sample grids and the residual-noise measurement.

The tensor work is in :mod:`synthesis`: training in :mod:`synthesis.models.gan_training`, the
denoiser's noise and clean-target models fitted by :func:`synthesis.render.denoise.fit_models`;
this module reads the source and writes the files.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthesis.levels import CONFIGS
from synthesis.runtime.errors import InputError
from synthesis.runtime.files import atomic_write_bytes
from synthesis.runtime.progress import ProgressFactory, no_progress

logger = logging.getLogger(__name__)

#: Held-out tiles measured for metrics.json (256x256 crops).
EVAL_TILES: int = 16


@dataclass
class RealPair:
    """One real image tile with its mask (and instance labels when the source has them)."""

    id: str
    mask: np.ndarray  # (H, W) bool
    image: np.ndarray  # (H, W) float32, raw grey values
    labels: np.ndarray | None  # (H, W) int32 instance labels, 0 = background


def load_real_pairs(
    source: str, structure: str, *, seed: int = 0, limit: int | None = None
) -> tuple[list[RealPair], list[RealPair]]:
    """``(training pairs, held-out pairs)`` of ``structure`` from a real ``source``.

    Training uses the source's ``train`` and ``validation`` tiles, the held-out set its
    ``test`` tiles (the images of the benchmark's ``real`` split), so the generator never
    sees the test images it may be compared with (a source without test tiles lends one
    training tile, with a warning).

    Args:
        source: a path :func:`synthesis.groundtruth.sources.open_source` understands.
        structure: ``er``, ``mito`` or ``nucleus``.
        seed: passed to the source (real sources do not depend on it).
        limit: at most this many training tiles (held out: a quarter of it, at least 1).

    Raises:
        InputError: an unusable source, or one without real images.
    """
    from synthesis.groundtruth.sources import open_source

    counts = None
    if limit is not None:
        counts = {"train": limit, "validation": max(1, limit // 8), "test": max(1, limit // 4)}
    src = open_source(str(source), structure, seed=seed, counts=counts)
    if not src.has_real_images:
        raise InputError(f"--source {source} has no real images to learn from. Got masks only")
    out: dict[str, list[RealPair]] = {}
    for split in ("train", "validation", "test"):
        ids = list(src.ids(split))
        out[split] = [
            RealPair(
                it.id,
                np.asarray(it.mask) != 0,
                np.asarray(it.image, np.float32),
                None if it.instances is None else np.asarray(it.instances, np.int32),
            )
            for it in src.load(ids)
        ]
    train = out["train"] + out["validation"]
    if not train:
        raise InputError(f"--source {source} has no train or validation tiles. Got none")
    held = out["test"]
    if not held:
        held = train[-1:]
        logger.warning(
            "--source %s has no test tiles: samples and metrics use a training tile", source
        )
    return train, held


def _pairset(pairs: list[RealPair]) -> tuple[Any, list[float]]:
    """Normalised :class:`PairSet` and each image's grey level in normalised units."""
    from synthesis.models.gan_training import PairSet
    from synthesis.models.pix2pix import FG_LEVEL, normalise_pair

    masks, images, labels, quant = [], [], [], []
    for p in pairs:
        m = torch.from_numpy(p.mask)
        x = torch.from_numpy(p.image)
        images.append(normalise_pair(x[None, None], m[None, None])[0, 0])
        masks.append(m)
        labels.append(torch.from_numpy(p.labels) if p.labels is not None else None)
        quant.append(FG_LEVEL / float(x[m].mean()))
    have_labels = all(lab is not None for lab in labels)
    return PairSet(masks, images, labels if have_labels else None), quant


def generator_settings(
    preset: str, device: torch.device, *, overrides: dict[str, Any], denoiser_steps: int | None
) -> tuple[Any, Any]:
    """``(generator settings, denoiser settings)`` of a preset (``auto``: ``reference`` on
    CUDA, ``cpu`` otherwise) with the given overrides (None values keep the preset's).

    Raises:
        InputError: an unknown preset or an out-of-range override.
    """
    from synthesis.models.gan_training import DENOISER_PRESETS, PRESETS, with_overrides

    if preset == "auto":
        preset = "reference" if device.type == "cuda" else "cpu"
    if preset not in PRESETS:
        raise InputError(f"--preset must be auto or one of {', '.join(PRESETS)}. Got {preset!r}")
    try:
        gen = with_overrides(PRESETS[preset], **overrides)
        den = with_overrides(with_overrides(gen, **DENOISER_PRESETS[preset]), steps=denoiser_steps)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    return gen, den


def train_synthesizer(
    structure: str,
    source: str | Path,
    out: Path,
    gen_settings: Any,
    den_settings: Any,
    device: torch.device,
    *,
    seed: int = 0,
    max_tiles: int | None = None,
    denoiser: bool = True,
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    """Train (or resume) the generator and its denoiser on ``source``'s real pairs; write the
    weights, ``metrics.json`` and the model card into ``out``. Returns the metrics.

    Raises:
        InputError: an unknown structure, a missing or unusable source, a bad crop.
    """
    if structure not in CONFIGS:
        raise InputError(f"--config must be one of {', '.join(CONFIGS)}. Got {structure!r}")
    if not Path(source).exists():
        raise InputError(f"--source {source}: no such file or folder")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    if max_tiles is not None and max_tiles < 1:
        raise InputError(f"--max-tiles must be >= 1. Got {max_tiles}")
    train, held = load_real_pairs(source, structure, seed=seed, limit=max_tiles)
    train_set, quant = _pairset(train)
    held_set, _ = _pairset(held)
    smallest = min(train_set.min_size, held_set.min_size)
    if gen_settings.crop > smallest:
        raise InputError(
            f"--crop must be <= the smallest image side ({smallest}). Got {gen_settings.crop}"
        )
    out.mkdir(parents=True, exist_ok=True)
    logger.info(
        "%s: %d training and %d held-out pairs from %s on %s",
        structure,
        len(train),
        len(held),
        source,
        device,
    )
    t0 = time.perf_counter()
    gen_info = train_generator(structure, train_set, held_set, gen_settings, out, device, progress)
    result: dict[str, Any] = {"generator": gen_info, "source": str(source)}
    if denoiser:
        result["denoiser"] = train_denoiser(
            structure, train, train_set, quant, held_set, den_settings, out, device, progress
        )
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["pairs"] = {"train": len(train), "held_out": len(held)}
    atomic_write_bytes(
        out / "metrics.json", (json.dumps(result, indent=2, sort_keys=True) + "\n").encode()
    )
    write_card(structure, out, result, gen_settings, den_settings)
    return result


def _fixed_samples(
    pairset: Any, settings: Any, name: str, count: int = 4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from synthesis.rng import derive_seed

    gen = torch.Generator().manual_seed(derive_seed(settings.seed, name, "samples"))
    mask, image, _ = pairset.sample(gen, count, settings.crop)
    seeds = torch.tensor([derive_seed(settings.seed, name, "sample", i) for i in range(count)])
    return mask, image, seeds


def _fit(
    trainer: Any,
    batch_fn: Callable[[int, torch.Generator, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    out: Path,
    samples: tuple[torch.Tensor, torch.Tensor],
    progress: ProgressFactory | None,
) -> None:
    """Run (or resume) one pix2pix training with its progress bar: the generator and the
    denoiser differ only in their batches and sample grids."""
    from synthesis.models.gan_training import fit

    bar = (progress or no_progress)(trainer.settings.steps, trainer.name, "step")
    try:
        fit(trainer, batch_fn, out, samples=samples, progress=bar.update)
    finally:
        bar.close()


def train_generator(
    structure: str,
    train_set: Any,
    held_set: Any,
    settings: Any,
    out: Path,
    device: torch.device,
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    """Train (or resume) the mask-to-image generator; save ``<structure>-pix2pix.safetensors``."""
    from synthesis.models.gan_training import Pix2PixTrainer, noise_input
    from synthesis.models.pix2pix import generator_input, save_weights

    name = f"{structure}-pix2pix"
    trainer = Pix2PixTrainer(settings, name, 1 + settings.noise_channels, device)

    def batch_fn(
        step: int, gen: torch.Generator, seeds: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mask, image, _ = train_set.sample(gen, settings.batch_size, settings.crop)
        mask, image = mask.to(device), image.to(device)
        cond = mask.float() * 2 - 1
        if settings.noise_channels:
            cond = torch.cat(
                [cond, noise_input(seeds, mask.shape[-2:], settings.noise_channels)], 1
            )
        return cond, image * 2 - 1

    smask, simage, sseeds = _fixed_samples(held_set, settings, name)
    samples = (
        generator_input(smask.to(device), sseeds.to(device), settings.noise_channels),
        simage.to(device) * 2 - 1,
    )
    _fit(trainer, batch_fn, out, samples, progress)
    meta = {
        "structure": structure,
        "kind": "mask-to-image generator (pix2pix)",
        "step": trainer.step,
        "settings": settings.to_dict(),
        "pairs": len(train_set),
    }
    sha = save_weights(trainer.G, out / f"{name}.safetensors", metadata=meta)
    last = _last_losses(out / f"{name}-loss.jsonl")
    return {
        "sha256": sha,
        "step": trainer.step,
        "final_losses": last,
        "train_seconds": round(trainer.seconds, 1),
        "device": str(device),
    }


def _last_losses(path: Path, n: int = 20) -> dict[str, float]:
    if not path.exists():
        return {}
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()][-n:]
    keys = [k for k in lines[-1] if k.startswith("loss")] if lines else []
    return {k: round(float(np.mean([e[k] for e in lines if k in e])), 5) for k in keys}


def train_denoiser(
    structure: str,
    train_pairs: list[RealPair],
    train_set: Any,
    quant: list[float],
    held_set: Any,
    settings: Any,
    out: Path,
    device: torch.device,
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    """Fit the noise and clean-target models, train the denoiser, measure residual noise."""
    from synthesis.models.gan_training import Pix2PixTrainer
    from synthesis.models.pix2pix import load_weights, save_weights
    from synthesis.render.clean_model import sample_clean
    from synthesis.render.denoise import denoise, fit_models, residual_noise
    from synthesis.render.gan import GanRenderer
    from synthesis.render.noise_model import sample_noise
    from synthesis.rng import derive_seed

    name = f"{structure}-denoiser"
    noise, clean_model = fit_models(train_set, quant)
    logger.info("%s: noise model medians %s", name, noise.summary())
    trainer = Pix2PixTrainer(settings, name, 1, device)

    def batch_fn(
        step: int, gen: torch.Generator, seeds: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mask, _, labels = train_set.sample(gen, settings.batch_size, settings.crop)
        clean, _ = sample_clean(
            mask.to(device),
            seeds,
            clean_model,
            labels=None if labels is None else labels.to(device),
        )
        noisy, _ = sample_noise(clean, seeds, noise)
        return noisy * 2 - 1, clean * 2 - 1

    gen = torch.Generator().manual_seed(derive_seed(settings.seed, name, "samples"))
    smask, _, slab = held_set.sample(gen, 4, settings.crop)
    sseeds = torch.tensor(
        [derive_seed(settings.seed, name, "sample", i) for i in range(4)], device=device
    )
    sclean, _ = sample_clean(
        smask.to(device), sseeds, clean_model, None if slab is None else slab.to(device)
    )
    snoisy, _ = sample_noise(sclean, sseeds, noise)
    _fit(trainer, batch_fn, out, (snoisy * 2 - 1, sclean * 2 - 1), progress)
    meta = {
        "structure": structure,
        "kind": "denoiser (pix2pix, noisy -> clean)",
        "step": trainer.step,
        "settings": settings.to_dict(),
        "noise_model": noise.to_dict(),
        "clean_model": clean_model.to_dict(),
    }
    sha = save_weights(trainer.G, out / f"{name}.safetensors", metadata=meta)
    # Residual noise of generated images before and after denoising, on held-out masks.
    generator, _ = load_weights(out / f"{structure}-pix2pix.safetensors", device=device)
    renderer = GanRenderer(generator, structure, denoiser=trainer.G.eval())
    gen = torch.Generator().manual_seed(derive_seed(settings.seed, name, "eval"))
    size = min(256, held_set.min_size)
    emask, ereal, elab = held_set.sample(gen, EVAL_TILES, size)
    keep = emask.flatten(1).any(1) & (~emask).flatten(1).any(1)
    emask, ereal = emask[keep], ereal[keep]
    eseeds = torch.tensor(
        [derive_seed(settings.seed, name, "eval", i) for i in range(emask.shape[0])]
    )
    raw, den = renderer.render_unit(emask.to(device), eseeds.to(device))
    emask = emask.to(device)
    sclean2, _ = sample_clean(emask, eseeds.to(device), clean_model)
    snoisy2, _ = sample_noise(sclean2, eseeds.to(device), noise)
    sden2 = denoise(snoisy2, trainer.G)
    report = {
        "real": residual_noise(ereal.to(device), emask),
        "generated": residual_noise(raw, emask),
        "generated_denoised": residual_noise(den, emask),
        "synthetic_noisy": residual_noise(snoisy2, emask),
        "synthetic_denoised": residual_noise(sden2, emask),
    }
    metrics = {
        k: {m: round(float(v[m].median()), 5) for m in ("rel_white", "rel_total", "snr8_excess")}
        for k, v in report.items()
    }
    metrics["synthetic_denoised"]["l1_to_clean"] = round(float((sden2 - sclean2).abs().mean()), 6)
    metrics["synthetic_noisy"]["l1_to_clean"] = round(float((snoisy2 - sclean2).abs().mean()), 6)
    return {
        "sha256": sha,
        "step": trainer.step,
        "noise_model_median": {k: round(v, 6) for k, v in noise.summary().items()},
        "clean_model": {k: v for k, v in clean_model.to_dict().items() if k != "background_levels"},
        "residual_noise_median": metrics,
        "final_losses": _last_losses(out / f"{name}-loss.jsonl"),
        "train_seconds": round(trainer.seconds, 1),
    }


def write_card(structure: str, out: Path, result: dict[str, Any], gen: Any, den: Any) -> Path:
    """A short model card beside the weights."""
    g = result["generator"]
    lines = [
        f"# {structure}-pix2pix: mask-to-image generator for FluoroBench-C",
        "",
        f"pix2pix U-Net generator (ngf {gen.ngf}, {gen.num_downs} levels, "
        f"{gen.noise_channels} noise channel(s)) and PatchGAN discriminator (ndf {gen.ndf}), "
        f"vanilla GAN + {gen.l1_weight:g} x L1, Adam lr {gen.lr:g} beta1 {gen.beta1}, "
        f"{gen.crop}x{gen.crop} crops, batch {gen.batch_size}, {g['step']} steps.",
        "",
        f"- data: {result['source']} ({result['pairs']['train']} training pairs, "
        f"{result['pairs']['held_out']} held out)",
        f"- generator sha256: `{g['sha256']}`",
        f"- final losses (mean of the last logged steps): {g['final_losses']}",
    ]
    if "denoiser" in result:
        d = result["denoiser"]
        lines += [
            f"- denoiser sha256: `{d['sha256']}` ({d['step']} steps, L1 {den.l1_weight:g} + GAN "
            f"{den.gan_weight:g}; noisy -> clean pairs from a noise model fitted to the real images)",
            f"- noise model (medians, normalised units): {d['noise_model_median']}",
            "",
            "Residual background fluctuation relative to the foreground/background contrast "
            "(medians over held-out tiles; `snr8_excess` = relative noise added at SNR 8):",
            "",
            "| images | rel_white | rel_total | snr8_excess |",
            "|---|---|---|---|",
        ]
        for k, v in d["residual_noise_median"].items():
            lines.append(f"| {k} | {v['rel_white']} | {v['rel_total']} | {v['snr8_excess']} |")
    lines += [
        "",
        f"Training time: generator {g['train_seconds']} s"
        + (f", denoiser {result['denoiser']['train_seconds']} s" if "denoiser" in result else "")
        + f" on {g['device']}.",
        "",
        f"Use: `fluorobench-c build OUT --config {structure} --renderer gan --weights DIR`.",
        "",
    ]
    path = out / f"{structure}-pix2pix.md"
    path.write_text("\n".join(lines))
    return path

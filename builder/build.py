"""``fluorobench-c build``: masks -> clean images -> corruptions -> Parquet shards.

One build writes one Hub package folder::

    OUT/README.md                       dataset card + YAML configs and dataset_info
    OUT/manifest.json                   every shard's sha256 and row count, the recipe
    OUT/data/<config>/<split>-NNNNN-of-NNNNN.parquet
    OUT/models/<config>-unet.safetensors (+ .md)   reference model, when attacks are built

Reproducibility: every random draw of a row is seeded from ``(seed, config, id, purpose)``
(:func:`synthesis.rng.derive_seed`) and uses counter-based random numbers, so a row's bytes
depend neither on the batch size nor on which other rows are built. The noise seed of an id
is the same in every split (common random numbers): two splits of one id differ only by the
factor the split varies.

Reliability: shards are written under a temporary name and renamed when complete; the
manifest is rewritten atomically after each shard; a re-run of the same command resumes,
skipping shards whose file matches the manifest.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from builder import __version__
from builder.features import empty_params, row_features
from builder.manifest import (
    FORMAT_VERSION,
    LOCK,
    BuildError,
    build_lock,
    read_manifest,
    write_manifest,
)
from builder.plan import BASE_SPLITS, CONFIGS, CORRUPTIONS, SplitSpec, resolve_splits
from builder.shards import (
    encode_mask,
    encode_tiff,
    image_cell,
    sha256_file,
    shard_name,
    write_shard,
)
from synthesis.levels import REFERENCE_SNR, Camera
from synthesis.noise import NOISE_MODELS
from synthesis.rng import derive_seed

logger = logging.getLogger(__name__)

RENDERERS = ("physics", "gan")
#: Clean test images are kept in memory across splits below this many bytes.
_CACHE_BYTES = 1 << 30


class Progress(Protocol):
    def update(self, n: int = 1) -> object: ...
    def close(self) -> object: ...


ProgressFactory = Callable[[int, str], Progress]


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class BuildOptions:
    """Arguments of a build. Those in :meth:`recipe` determine the bytes written."""

    out: Path
    configs: list[str] = field(default_factory=lambda: list(CONFIGS))
    source: str = "procedural"
    splits: list[str] | None = None
    counts: dict[str, int] = field(
        default_factory=lambda: {"train": 160, "validation": 20, "test": 40}
    )
    seed: int = 0
    device: str | None = None
    batch_size: int = 16
    overwrite: bool = False
    renderer: str = "physics"
    weights: str | None = None
    noise_model: str = "poisson_gaussian"
    shard_size: int = 256
    train_epochs: int | None = None
    progress: ProgressFactory | None = None

    def validate(self) -> None:
        """Raise ValueError with one clear line for any bad argument; touches no file."""
        for c in self.configs:
            if c not in CONFIGS:
                raise ValueError(f"unknown config {c!r}; expected one of {', '.join(CONFIGS)}")
        if not self.configs:
            raise ValueError("no config selected; expected one or more of er, mito, nucleus")
        for split, n in self.counts.items():
            if split not in BASE_SPLITS:
                raise ValueError(f"unknown base split {split!r}; expected {', '.join(BASE_SPLITS)}")
            if not isinstance(n, int) or n < 1:
                raise ValueError(f"--{split} must be a whole number >= 1. Got {n!r}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1. Got {self.batch_size}")
        if self.shard_size < 1:
            raise ValueError(f"--shard-size must be >= 1. Got {self.shard_size}")
        if self.seed < 0:
            raise ValueError(f"--seed must be >= 0. Got {self.seed}")
        if self.renderer not in RENDERERS:
            raise ValueError(f"unknown renderer {self.renderer!r}; expected {', '.join(RENDERERS)}")
        if self.noise_model not in NOISE_MODELS:
            raise ValueError(
                f"unknown noise model {self.noise_model!r}; expected {', '.join(NOISE_MODELS)}"
            )
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"output path {self.out} exists and is not a folder")
        if self.source != "procedural" and not Path(self.source).exists():
            raise ValueError(f"--source {self.source}: no such file or folder")
        if self.device is not None and self.device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise ValueError(f"--device {self.device}: CUDA is not available on this machine")
        # Resolve split names now, so a typo fails before anything is written.
        resolve_splits(self.splits, with_real=self.source != "procedural")

    def recipe(self) -> dict[str, Any]:
        source = self.source if self.source == "procedural" else os.path.normpath(self.source)
        return {
            "configs": sorted(self.configs, key=CONFIGS.index),
            "source": source,
            "splits": sorted(self.splits) if self.splits else None,
            "counts": dict(sorted(self.counts.items())),
            "seed": self.seed,
            "renderer": self.renderer,
            "weights": self.weights,
            "noise_model": self.noise_model,
            "shard_size": self.shard_size,
            "train_epochs": self.train_epochs,
            "package_version": __version__,
            "format_version": FORMAT_VERSION,
        }


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _batched(seq: list[str], n: int) -> Iterator[list[str]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _prepare_folder(opts: BuildOptions, recipe: dict[str, Any]) -> dict[str, Any]:
    """Decide between a fresh build, a resume, a refusal or an overwrite; return the manifest."""
    out = opts.out
    existing = read_manifest(out)
    entries = [p for p in out.iterdir() if p.name != LOCK]
    if existing is not None and existing.get("recipe") == recipe:
        logger.info("resuming the build in %s", out)
        return existing
    if entries and not opts.overwrite:
        if existing is None:
            raise BuildError(
                f"{out} is not empty and holds no fluorobench-c build; "
                "choose an empty folder or pass --overwrite to replace its contents"
            )
        changed = sorted(k for k in recipe if existing.get("recipe", {}).get(k) != recipe[k])
        raise BuildError(
            f"{out} holds a different build (differs in: {', '.join(changed)}); "
            "re-run the original command to resume it, or pass --overwrite to replace it"
        )
    for p in entries:
        logger.info("--overwrite: removing %s", p)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    return {
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "recipe": recipe,
        "complete": False,
        "configs": {},
    }


def _remove_partials(out: Path) -> None:
    """Temporary files of a killed build: never valid, always safe to delete under the lock."""
    for p in out.rglob(".*.tmp-*"):
        logger.info("removing unfinished file %s", p)
        p.unlink(missing_ok=True)


def build(opts: BuildOptions) -> dict[str, Any]:
    """Build (or resume) the package in ``opts.out``; return the final manifest.

    Raises:
        ValueError: bad arguments (nothing is written).
        BuildError: the folder holds something else, or another build holds the lock.
    """
    opts.validate()
    recipe = opts.recipe()
    device = torch.device(opts.device or default_device())
    with build_lock(opts.out):
        manifest = _prepare_folder(opts, recipe)
        if manifest.get("complete"):
            logger.info("%s is already complete; nothing to do", opts.out)
            return manifest
        _remove_partials(opts.out)
        manifest["complete"] = False
        for config in recipe["configs"]:
            _ConfigBuild(opts, config, manifest, device).run()
        from builder.card import write_card

        write_card(opts.out, manifest)  # load_dataset reads the card's YAML: needed below
        for config in recipe["configs"]:
            if "model" in manifest["configs"][config]:
                _evaluate_reference(opts, config, device)
        write_card(opts.out, manifest)
        manifest["complete"] = True
        write_manifest(opts.out, manifest)
    logger.info("build complete: %s", opts.out)
    return manifest


def _evaluate_reference(opts: BuildOptions, config: str, device: torch.device) -> None:
    """Score the shipped reference model on every split: ``results/<config>.json`` and
    ``.md``, and ``results/<config>-robustness.png``."""
    from builder.evaluate import evaluate, write_reports

    logger.info("evaluating the reference U-Net of %s on every split", config)
    results = evaluate(
        str(opts.out),
        config,
        device=str(device),
        batch_size=opts.batch_size,
        progress=opts.progress,
    )
    results["data"] = "."  # the package itself, wherever it is moved
    write_reports(opts.out / "results", results, stem=config)


class _ConfigBuild:
    """Everything needed to write the splits of one config."""

    def __init__(
        self, opts: BuildOptions, config: str, manifest: dict[str, Any], device: torch.device
    ) -> None:
        from synthesis.sources import open_source

        self.opts = opts
        self.config = config
        self.manifest = manifest
        self.device = device
        self.camera = Camera()
        self.features = row_features(config)
        self.source = open_source(opts.source, config, seed=opts.seed, counts=opts.counts)
        self.specs = resolve_splits(opts.splits, with_real=self.source.has_real_images)
        self._clean_cache: dict[str, Any] = {}
        self._model: tuple[torch.nn.Module, str] | None = None
        self.renderer = self._make_renderer()
        entry = manifest["configs"].setdefault(config, {})
        entry["features"] = self.features.to_dict()
        entry["source"] = self.source.describe()
        entry.setdefault("splits", {})

    # ----------------------------------------------------------------- orchestration
    def run(self) -> None:
        entry = self.manifest["configs"][self.config]
        for spec in self.specs:
            ids = self.source.ids(spec.base)
            if not ids:
                raise BuildError(
                    f"source {self.opts.source} has no {spec.base} images for config {self.config}"
                )
            split_entry = {
                "family": spec.family,
                "corruption": spec.corruption,
                "level": spec.level,
                "num_rows": len(ids),
            }
            if spec.alias_of:
                split_entry["alias_of"] = spec.alias_of
                entry["splits"][spec.name] = split_entry
                continue
            old = entry["splits"].get(spec.name, {}).get("shards", [])
            split_entry["shards"] = self._write_split(spec, ids, old)
            entry["splits"][spec.name] = split_entry
            write_manifest(self.opts.out, self.manifest)
        entry["skipped"] = dict(sorted(self.source.skipped.items()))
        write_manifest(self.opts.out, self.manifest)

    def _write_split(
        self, spec: SplitSpec, ids: list[str], old: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        size = self.opts.shard_size
        count = max(1, math.ceil(len(ids) / size))
        done = {s["path"]: s for s in old}
        shards: list[dict[str, Any]] = []
        factory = self.opts.progress or (lambda total, desc: _NoProgress())
        bar = factory(len(ids), f"{self.config} {spec.name}")
        try:
            for index in range(count):
                chunk = ids[index * size : (index + 1) * size]
                rel = f"data/{self.config}/{shard_name(spec.name, index, count)}"
                path = self.opts.out / rel
                prior = done.get(rel)
                if prior and path.exists() and sha256_file(path) == prior["sha256"]:
                    shards.append(prior)
                    bar.update(len(chunk))
                    continue
                rows: list[dict[str, Any]] = []
                for batch in _batched(chunk, self.opts.batch_size):
                    rows += self._rows(spec, batch)
                    bar.update(len(batch))
                sha, nbytes = write_shard(path, rows, self.features)
                shard = {"path": rel, "sha256": sha, "num_rows": len(rows), "num_bytes": nbytes}
                shards.append(shard)
                # Record each shard as soon as it exists, so a kill loses at most one shard.
                split = self.manifest["configs"][self.config]["splits"].setdefault(spec.name, {})
                split["shards"] = shards + old[len(shards) :]
                write_manifest(self.opts.out, self.manifest)
        finally:
            bar.close()
        return shards

    # ----------------------------------------------------------------- images
    def _make_renderer(self) -> Callable[..., Any]:
        if self.opts.renderer == "physics":
            from synthesis.render import render

            return render
        from synthesis.gan_renderer import GanRenderer

        # --weights DIR (from train-synthesizer), or the generator shipped in the package.
        try:
            return GanRenderer.from_weights(self.opts.weights, self.config, self.device)
        except (FileNotFoundError, ValueError) as exc:
            raise BuildError(f"--renderer gan: {exc}") from None

    def _seeds(self, ids: list[str], purpose: str) -> torch.Tensor:
        vals = [derive_seed(self.opts.seed, self.config, i, purpose) for i in ids]
        return torch.tensor(vals, dtype=torch.int64, device=self.device)

    def _clean(
        self, spec: SplitSpec, ids: list[str]
    ) -> tuple[list[Any], list[dict[str, Any]], torch.Tensor, torch.Tensor]:
        """(items, renderer params, mask (B,1,H,W) bool, clean (B,1,H,W) float32) of ``ids``.

        Test images are cached: most splits are made from them.
        """
        key = "\n".join(ids)
        if key in self._clean_cache:
            return self._clean_cache[key]
        items = self.source.load(ids)
        mask = torch.from_numpy(np.stack([it.mask for it in items]))[:, None].to(self.device) != 0
        instances = None
        if all(it.instances is not None for it in items):
            inst = np.stack([it.instances.astype(np.int32) for it in items])
            instances = torch.from_numpy(inst)[:, None].to(self.device)
        result = self.renderer(mask, self._seeds(ids, "render"), self.config, instances=instances)
        value = (items, result.params, mask, result.image)
        if spec.base == "test" and mask.numel() * 4 * len(self._clean_cache) < _CACHE_BYTES:
            self._clean_cache[key] = value
        return value

    def _camera(
        self,
        clean: torch.Tensor,
        mask: torch.Tensor,
        seeds: torch.Tensor,
        snr: float,
        optics: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Noisy ADU images of ``optics`` (default: ``clean``) with the exposure that gives
        ``clean`` the target ``snr``: blur changes the optics, not the exposure (k). The
        measured SNR is the camera equation on the stored image and the mask, so for blurred
        splits it is below the target (blur lowers the foreground contrast)."""
        from synthesis.noise import apply_noise, noise_parameters

        model = self.opts.noise_model
        noise = noise_parameters(clean, mask, snr, camera=self.camera, model=model)
        target = clean if optics is None else optics
        adu, measured = apply_noise(target, noise, seeds, mask=mask, model=model)
        return adu, {**noise, "snr_measured": measured}

    def reference_images(self, base: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(ADU int32, mask bool), both (N, 1, H, W), of a base split at the reference SNR:
        the same images as that split's shards."""
        spec = SplitSpec(base, "reference", "snr", REFERENCE_SNR, base)
        adus, masks = [], []
        for batch in _batched(self.source.ids(base), self.opts.batch_size):
            _, _, mask, clean = self._clean(spec, batch)
            adu, _ = self._camera(clean, mask, self._seeds(batch, "noise"), REFERENCE_SNR)
            adus.append(adu)
            masks.append(mask)
        return torch.cat(adus), torch.cat(masks)

    def _rows(self, spec: SplitSpec, ids: list[str]) -> list[dict[str, Any]]:
        items, render_params, mask, clean = self._clean(spec, ids)
        noise_seeds = self._seeds(ids, "noise")
        per_row: list[dict[str, Any]] = [empty_params() for _ in ids]
        image_np: np.ndarray
        if spec.family == "real":
            image_np = np.stack([it.image for it in items]).astype(np.uint16)
        elif spec.family == "clean":
            image_np = clean[:, 0].float().cpu().numpy()
        else:
            psf: dict[str, Any] = {"kind": "none"}
            optics = None
            if spec.family in ("sib", "svb"):
                from synthesis import psf as psf_mod

                blur = psf_mod.sib if spec.family == "sib" else psf_mod.svb
                optics = blur(clean, int(spec.level))
                kind = "gaussian" if spec.family == "sib" else "space_variant_gaussian"
                psf = psf_mod.psf_params(kind, int(spec.level))
            snr = spec.level if spec.corruption == "snr" else REFERENCE_SNR
            adu, noise = self._camera(clean, mask, noise_seeds, snr, optics)
            if spec.family == "attacks":
                adu, attack_rows = self._attack(spec, ids, adu, mask)
                for p, a in zip(per_row, attack_rows, strict=True):
                    p["attack"] = a
            for i, p in enumerate(per_row):
                for key in (
                    "snr_target",
                    "snr_measured",
                    "k_e_per_unit",
                    "signal_e",
                    "background_e",
                    "read_noise_e",
                    "offset_adu",
                    "e_per_adu",
                ):
                    p[key] = float(noise[key][i])
                p["noise_model"] = self.opts.noise_model
                p["noise_seed"] = int(noise_seeds[i])
                p["psf"] = _full_psf(psf)
            image_np = adu[:, 0].cpu().numpy().astype(np.uint16)
        mask_np = mask[:, 0].cpu().numpy().astype(np.uint8)
        rows = []
        label = CORRUPTIONS.index(spec.corruption)
        for i, (item, rid) in enumerate(zip(items, ids, strict=True)):
            p = per_row[i]
            p["build_seed"] = self.opts.seed
            p["mask_seed"] = item.meta.get("mask_seed")
            p["render_seed"] = derive_seed(self.opts.seed, self.config, rid, "render")
            p["renderer"] = self.opts.renderer if spec.family != "real" else None
            p["renderer_params"] = json.dumps(render_params[i], sort_keys=True)
            p["mask_params"] = json.dumps(item.meta, sort_keys=True, default=str)
            p["package_version"] = __version__
            row = {
                "image": image_cell(encode_tiff(image_np[i])),
                "mask": image_cell(encode_mask(mask_np[i])),
                "id": rid,
                "corruption": label,
                "level": spec.level,
                "params": p,
                "source": item.source,
            }
            if "instances" in self.features:
                inst = item.instances
                row["instances"] = (
                    image_cell(encode_tiff(inst.astype(np.uint16))) if inst is not None else None
                )
            rows.append(row)
        return rows

    # ----------------------------------------------------------------- attacks
    def _attack(
        self, spec: SplitSpec, ids: list[str], adu: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        from synthesis.attacks import attack

        model, sha = self._reference_model()
        result = attack(
            model,
            adu,
            mask,
            method=spec.corruption,
            eps_grey=spec.level,
            seeds=self._seeds(ids, f"attack/{spec.name}"),
        )
        rows = []
        for i in range(len(ids)):
            rows.append(
                {
                    "method": result.params["method"],
                    "eps_grey": float(result.params["eps_grey"]),
                    "step_grey": float(result.params["step_grey"]),
                    "iterations": int(result.params["iterations"]),
                    "random_start": bool(result.params["random_start"]),
                    "loss": str(result.params.get("loss", "")),
                    "linf_grey": float(result.linf_grey[i]),
                    "model_sha256": sha,
                    "seed": derive_seed(self.opts.seed, self.config, ids[i], f"attack/{spec.name}"),
                }
            )
        return result.adu, rows

    def _reference_model(self) -> tuple[torch.nn.Module, str]:
        if self._model is None:
            from builder.reference import ensure_reference_model

            self._model = ensure_reference_model(self)
        return self._model


def _full_psf(psf: dict[str, Any]) -> dict[str, Any]:
    keys = ("kind", "sigma_px", "sigma_center_px", "sigma_edge_px", "rings", "truncate")
    return {k: psf.get(k) for k in keys}

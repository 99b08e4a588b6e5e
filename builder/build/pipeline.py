"""``build``: masks -> clean images -> corruptions -> Parquet shards, resumable.

One build writes one Hub package folder::

    OUT/README.md                       dataset card + YAML configs and dataset_info
    OUT/manifest.json                   every shard's sha256 and row count, the recipe
    OUT/data/<config>/<split>-NNNNN-of-NNNNN.parquet
    OUT/models/<config>-unet.safetensors (+ .md)   reference model, when attacks are built
    OUT/results/<config>.json, .md, -robustness.png   the reference model on every split

This module is the only writer of the manifest. Reliability: shards are written under a
temporary name and renamed when complete; the manifest is rewritten atomically after each
shard; a re-run of the same command resumes, skipping shards whose file matches the
manifest. The rows themselves come from :class:`builder.build.images.ConfigImages`.
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from builder import __version__
from builder.build.images import ConfigImages, batched
from builder.build.options import BuildOptions
from builder.build.reference import REFERENCE, fit_reference, model_path
from builder.evaluation import evaluate, write_reports
from builder.package.card import write_card
from builder.package.manifest import (
    FORMAT_VERSION,
    LOCK,
    BuildError,
    build_lock,
    read_manifest,
    write_manifest,
)
from builder.package.plan import SplitSpec
from builder.package.shards import shard_name, write_shard
from synthesis.device import resolve_device
from synthesis.files import sha256_file
from synthesis.progress import no_progress
from synthesis.rng import derive_seed

logger = logging.getLogger(__name__)


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
        InputError: bad arguments (nothing is written).
        BuildError: the folder holds something else, or another build holds the lock.
    """
    opts.validate()
    recipe = opts.recipe()
    device = resolve_device(opts.device)
    with build_lock(opts.out):
        manifest = _prepare_folder(opts, recipe)
        if manifest.get("complete"):
            logger.info("%s is already complete; nothing to do", opts.out)
            return manifest
        _remove_partials(opts.out)
        manifest["complete"] = False
        for config in recipe["configs"]:
            _ConfigWriter(opts, config, manifest, device).run()
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


#: Bin edges of the native-SNR histogram: the benchmark's SNR levels, then wider bins.
NATIVE_SNR_EDGES: tuple[float, ...] = (0, 1, 2, 3, 4, 5, 8, 12, 16, 24, 32, 48, 64, 128)


def native_snr_summary(snr_by_id: dict[str, float]) -> dict[str, Any]:
    """Where a source's real tiles lie on the SNR scale: count, quantiles and a histogram
    over :data:`NATIVE_SNR_EDGES` (the last bin is open-ended)."""
    values = sorted(v for v in snr_by_id.values() if math.isfinite(v))
    edges = list(NATIVE_SNR_EDGES)
    counts = [0] * len(edges)
    for v in values:
        counts[max(i for i, e in enumerate(edges) if v >= e)] += 1

    def q(p: float) -> float | None:
        if not values:
            return None
        return round(values[min(len(values) - 1, int(p * (len(values) - 1) + 0.5))], 3)

    return {
        "tiles": len(values),
        "quantiles": {f"p{int(p * 100)}": q(p) for p in (0.05, 0.25, 0.5, 0.75, 0.95)},
        "histogram": {"edges": edges, "counts": counts},
    }


class _ConfigWriter:
    """Writes the splits of one config, shard by shard, recording each in the manifest."""

    def __init__(
        self, opts: BuildOptions, config: str, manifest: dict[str, Any], device: torch.device
    ) -> None:
        self.opts = opts
        self.config = config
        self.manifest = manifest
        self.device = device
        self._model: tuple[torch.nn.Module, str] | None = None
        self.images = ConfigImages(opts, config, device, reference_model=self.reference_model)
        entry = manifest["configs"].setdefault(config, {})
        entry["features"] = self.images.features.to_dict()
        entry["source"] = self.images.source.describe()
        entry.setdefault("splits", {})

    def run(self) -> None:
        entry = self.manifest["configs"][self.config]
        if any(spec.from_real_images for spec in self.images.specs):
            test_ids = self.images.source.ids("test")
            entry["native_snr"] = native_snr_summary(self.images.native_snr_of(test_ids))
        for spec in self.images.specs:
            if not self.images.source.ids(spec.base):
                raise BuildError(
                    f"source {self.opts.source} has no {spec.base} images for config {self.config}"
                )
            ids, skipped = self.images.split_ids(spec)
            if not ids:  # no tile's own noise leaves room for this SNR
                logger.warning("%s %s: no tile reaches it; split not built", self.config, spec.name)
                entry.setdefault("not_built", {})[spec.name] = (
                    f"no {spec.base} tile has a native SNR above {spec.level:g}"
                )
                continue
            split_entry = {
                "family": spec.family,
                "corruption": spec.corruption,
                "level": spec.level,
                "num_rows": len(ids),
            }
            if skipped:
                split_entry["skipped_below_target"] = skipped
            if spec.alias_of:
                split_entry["alias_of"] = spec.alias_of
                entry["splits"][spec.name] = split_entry
                continue
            old = entry["splits"].get(spec.name, {}).get("shards", [])
            split_entry["shards"] = self._write_split(spec, ids, old)
            entry["splits"][spec.name] = split_entry
            write_manifest(self.opts.out, self.manifest)
        entry["skipped"] = dict(sorted(self.images.source.skipped.items()))
        write_manifest(self.opts.out, self.manifest)

    def _write_split(
        self, spec: SplitSpec, ids: list[str], old: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        size = self.opts.shard_size
        count = max(1, math.ceil(len(ids) / size))
        done = {s["path"]: s for s in old}
        shards: list[dict[str, Any]] = []
        bar = (self.opts.progress or no_progress)(len(ids), f"{self.config} {spec.name}")
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
                for batch in batched(chunk, self.opts.batch_size):
                    rows += self.images.rows(spec, batch)
                    bar.update(len(batch))
                sha, nbytes = write_shard(path, rows, self.images.features)
                shard = {"path": rel, "sha256": sha, "num_rows": len(rows), "num_bytes": nbytes}
                shards.append(shard)
                # Record each shard as soon as it exists, so a kill loses at most one shard.
                split = self.manifest["configs"][self.config]["splits"].setdefault(spec.name, {})
                split["shards"] = shards + old[len(shards) :]
                write_manifest(self.opts.out, self.manifest)
        finally:
            bar.close()
        return shards

    def reference_model(self) -> tuple[torch.nn.Module, str]:
        """The config's reference model and its sha256: the one this build already saved,
        else trained on the ``train`` split (checkpointed on ``validation``) and recorded."""
        if self._model is None:
            from synthesis.models.unet import load_model

            entry = self.manifest["configs"][self.config]
            path = model_path(self.opts.out, self.config)
            recorded = entry.get("model")
            if recorded and path.exists() and sha256_file(path) == recorded["sha256"]:
                model, _ = load_model(path, device=self.device)
            else:
                logger.info("training the reference U-Net of %s", self.config)
                train = self.images.reference_images("train")
                val = self.images.reference_images("validation")
                seed = derive_seed(self.opts.seed, self.config, "reference-unet") % (2**31)
                model, saved = fit_reference(
                    *train,
                    *val,
                    path=path,
                    config=self.config,
                    seed=seed,
                    device=self.device,
                    epochs=self.opts.train_epochs,
                    progress=self.opts.progress,
                    extra={"seed": seed, "reference_settings": asdict(REFERENCE)},
                )
                entry["model"] = {"path": path.relative_to(self.opts.out).as_posix(), **saved}
                write_manifest(self.opts.out, self.manifest)
            model.eval()
            self._model = (model, entry["model"]["sha256"])
        return self._model

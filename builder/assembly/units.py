"""The work units of a build, and the ranks that make them.

A unit is one shard of one split of one config, ``(config, split, shard)``, with two
groupings: the attack splits of one method make one unit per shard (their budgets share
gradient steps, :func:`synthesis.corruptions.attacks.attack_budgets`), and each config's
reference U-Net is a unit of its own. ``--rows-per-shard`` sets how many rows a shard holds,
so a large split gives many units.

Every rank plans the same units in the same order and takes them from one queue on the
``torch.distributed`` store (:meth:`builder.distributed.Context.queue`): the models first
(configs train in parallel, each on one rank, never with DDP), then the noise and blur
units (they fill the time the models train), then the attack units, most expensive first.
A rank that finishes a unit takes the next, so ranks end within one unit of each other; the
attack units of a config wait for its model file, which every rank then loads.

Each unit's shards are written atomically, then a record of them
(``OUT/.build/units/<config>/<unit>.json``); a re-run, at any world size, skips a unit whose
record and files match. Rank 0 alone assembles the manifest from the records, in plan
order, so it does not depend on who made what or when.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from builder import __version__, distributed
from builder.assembly.images import ConfigImages, batched
from builder.assembly.options import BuildOptions
from builder.assembly.reference import REFERENCE, fit_reference, model_path
from builder.package.manifest import FORMAT_VERSION, BuildError
from builder.package.plan import SplitSpec
from builder.package.shards import shard_name, write_shard
from synthesis.rng import derive_seed
from synthesis.runtime.files import atomic_write_bytes, sha256_file
from synthesis.runtime.progress import no_progress

logger = logging.getLogger(__name__)

#: Working records of a build in progress (removed when it completes).
WORK = ".build"


@dataclass(frozen=True)
class Unit:
    """One piece of work: ``kind`` "model" (train a config's reference U-Net) or "shards"
    (shard ``index`` of ``count`` of ``splits``: one split, or one attack method's)."""

    config: str
    kind: str
    label: str
    splits: tuple[str, ...] = ()
    index: int = 0
    count: int = 1
    ids: tuple[str, ...] = ()
    cost: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.config}/{self.label}-{self.index:05d}-of-{self.count:05d}"


def record_path(out: Path, unit: Unit) -> Path:
    return out / WORK / "units" / f"{unit.name}.json"


def _read_record(out: Path, unit: Unit, *, verify: bool = True) -> dict[str, Any] | None:
    """The unit's record if it (and, with ``verify``, every file it names, re-hashed) is
    intact, else None."""
    path = record_path(out, unit)
    try:
        rec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    for f in rec.get("files", []) if verify else []:
        p = out / f["path"]
        if not p.exists() or sha256_file(p) != f["sha256"]:
            return None
    return rec


def _write_record(out: Path, unit: Unit, rec: dict[str, Any]) -> None:
    path = record_path(out, unit)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(rec, sort_keys=True, indent=1) + "\n").encode())


def clear_records(out: Path) -> None:
    shutil.rmtree(out / WORK, ignore_errors=True)


class ConfigPlan:
    """The units of one config and how to make them (every rank holds the same plan)."""

    def __init__(self, opts: BuildOptions, config: str, device: torch.device) -> None:
        self.opts = opts
        self.config = config
        self.device = device
        self.ctx: distributed.Context = distributed.SOLO
        self._model: tuple[torch.nn.Module, str] | None = None
        self.images = ConfigImages(opts, config, device, reference_model=self.reference_model)
        self.ids: dict[str, list[str]] = {}
        self.skipped_below: dict[str, int] = {}
        self.not_built: dict[str, str] = {}
        for spec in self.images.specs:
            if not self.images.source.ids(spec.base):
                raise BuildError(
                    f"source {opts.source} has no {spec.base} images for config {config}"
                )
            ids, skipped = self.images.split_ids(spec)
            if not ids:  # no tile's own noise leaves room for this SNR
                logger.warning("%s %s: no tile reaches it; split not built", config, spec.name)
                self.not_built[spec.name] = (
                    f"no {spec.base} tile has a native SNR above {spec.level:g}"
                )
                continue
            self.ids[spec.name] = ids
            self.skipped_below[spec.name] = skipped
        self.trains = any(
            s.family == "attacks" and s.name in self.ids and not s.alias_of
            for s in self.images.specs
        )

    def specs(self) -> list[SplitSpec]:
        """The splits built (in build order), aliases included."""
        return [s for s in self.images.specs if s.name in self.ids]

    def units(self) -> list[Unit]:
        from synthesis.corruptions.attacks import gradients_needed

        size = self.opts.shard_size
        out: list[Unit] = []
        if self.trains:
            out.append(Unit(self.config, "model", "model", cost=math.inf))
        done: set[str] = set()
        for spec in self.specs():
            if spec.alias_of or spec.name in done:
                continue
            group = [spec]
            per_row = 1.0
            label = spec.name
            if spec.family == "attacks":
                group = [s for s in self.images.attack_group(spec) if s.name in self.ids]
                per_row = 1.0 + gradients_needed(spec.corruption, [s.level for s in group])
                label = f"{spec.corruption}-attacks"
            done.update(s.name for s in group)
            ids = self.ids[spec.name]
            count = max(1, math.ceil(len(ids) / size))
            for index in range(count):
                chunk = tuple(ids[index * size : (index + 1) * size])
                out.append(
                    Unit(
                        self.config,
                        "shards",
                        label,
                        tuple(s.name for s in group),
                        index,
                        count,
                        chunk,
                        cost=per_row * len(chunk),
                    )
                )
        return out

    # ----------------------------------------------------------------- making units
    def make(self, unit: Unit) -> None:
        out = self.opts.out
        if _read_record(out, unit) is not None:
            logger.info("%s: already made, skipped", unit.name)
            if unit.kind == "model":
                self.ctx.set_key(f"model/{self.config}")
            return
        if unit.kind == "model":
            self._train()
            self.ctx.set_key(f"model/{self.config}")
            return
        specs = [s for s in self.images.specs if s.name in unit.splits]
        rows: dict[str, list[dict[str, Any]]] = {s.name: [] for s in specs}
        for batch in batched(list(unit.ids), self.opts.batch_size):
            for spec in specs:
                rows[spec.name] += self.images.rows(spec, batch)
        files = []
        for spec in specs:
            rel = f"data/{self.config}/{shard_name(spec.name, unit.index, unit.count)}"
            sha, nbytes = write_shard(out / rel, rows[spec.name], self.images.features)
            files.append(
                {
                    "split": spec.name,
                    "path": rel,
                    "sha256": sha,
                    "num_rows": len(rows[spec.name]),
                    "num_bytes": nbytes,
                }
            )
        _write_record(out, unit, {"unit": unit.name, "files": files})

    def _train(self) -> None:
        """Train the config's reference U-Net on ``train`` (checkpointed on ``validation``),
        save it and record it."""
        logger.info("training the reference U-Net of %s", self.config)
        path = model_path(self.opts.out, self.config)
        train = self.images.reference_images("train")
        val = self.images.reference_images("validation")
        seed = derive_seed(self.opts.seed, self.config, "reference-unet") % (2**31)
        _, saved = fit_reference(
            *train,
            *val,
            path=path,
            config=self.config,
            seed=seed,
            device=self.device,
            epochs=self.opts.train_epochs,
            progress=self.opts.progress if self.ctx.is_main else None,
            extra={"seed": seed, "reference_settings": asdict(REFERENCE)},
        )
        rel = path.relative_to(self.opts.out).as_posix()
        model = {"path": rel, **saved}
        unit = Unit(self.config, "model", "model", cost=math.inf)
        _write_record(
            self.opts.out,
            unit,
            {"model": model, "files": [{"path": rel, "sha256": saved["sha256"]}]},
        )

    def model_record(self) -> dict[str, Any]:
        rec = _read_record(self.opts.out, Unit(self.config, "model", "model", cost=math.inf))
        if rec is None:
            raise BuildError(
                f"{self.opts.out}: the reference model of {self.config} is missing or altered; "
                "re-run the same command to train it again"
            )
        return rec["model"]

    def reference_model(self) -> tuple[torch.nn.Module, str]:
        """The config's reference model and its sha256, once some rank has saved it."""
        if self._model is None:
            from synthesis.models.unet import load_model

            self.ctx.wait_key(f"model/{self.config}")
            rec = self.model_record()
            model, _ = load_model(self.opts.out / rec["path"], device=self.device)
            self._model = (model.eval(), rec["sha256"])
        return self._model

    # ----------------------------------------------------------------- the manifest
    def manifest_entry(self) -> dict[str, Any]:
        """This config's manifest entry, from the unit records (rank 0, all units done)."""
        images = self.images
        entry: dict[str, Any] = {
            "features": images.features.to_dict(),
            "source": images.source.describe(),
            "splits": {},
        }
        if any(spec.from_real_images for spec in images.specs):
            entry["native_snr"] = native_snr_summary(
                images.native_snr_of(images.source.ids("test"))
            )
        if self.not_built:
            entry["not_built"] = dict(self.not_built)
        shards: dict[str, list[dict[str, Any]]] = {}
        for unit in self.units():
            if unit.kind == "model":
                entry["model"] = self.model_record()
                continue
            # Checked when its unit was taken from the queue (made or re-hashed): read only.
            rec = _read_record(self.opts.out, unit, verify=False)
            if rec is None:
                raise BuildError(f"{self.opts.out}: unit {unit.name} has no valid record")
            for f in rec["files"]:
                shards.setdefault(f["split"], []).append(
                    {k: f[k] for k in ("path", "sha256", "num_rows", "num_bytes")}
                )
        for spec in self.specs():
            split_entry: dict[str, Any] = {
                "family": spec.family,
                "corruption": spec.corruption,
                "level": spec.level,
                "num_rows": len(self.ids[spec.name]),
            }
            if self.skipped_below[spec.name]:
                split_entry["skipped_below_target"] = self.skipped_below[spec.name]
            if spec.alias_of:
                split_entry["alias_of"] = spec.alias_of
            else:
                split_entry["shards"] = shards[spec.name]
            entry["splits"][spec.name] = split_entry
        entry["skipped"] = dict(sorted(images.source.skipped.items()))
        return entry


def plan_units(plans: dict[str, ConfigPlan]) -> list[Unit]:
    """Every unit of the build in queue order: models, then noise and blur units (plan
    order), then attack units by decreasing cost."""
    units = [u for p in plans.values() for u in p.units()]
    models = [u for u in units if u.kind == "model"]
    attacks = [u for u in units if u.kind == "shards" and u.label.endswith("-attacks")]
    rest = [u for u in units if u.kind == "shards" and not u.label.endswith("-attacks")]
    attacks.sort(key=lambda u: -u.cost)  # stable: plan order among equal costs
    return models + rest + attacks


def run_units(
    ctx: distributed.Context, opts: BuildOptions, plans: dict[str, ConfigPlan]
) -> list[Unit]:
    """Make this rank's share of the units (taken from the queue); returns the ones it made."""
    for plan in plans.values():
        plan.ctx = ctx
    units = plan_units(plans)
    mine: list[Unit] = []
    factory = (opts.progress if ctx.is_main else None) or no_progress
    bar = factory(None, "units", "unit")
    try:
        for index in ctx.queue("units", len(units)):
            unit = units[index]
            logger.info("rank %d: %s", ctx.rank, unit.name)
            start = time.perf_counter()
            plans[unit.config].make(unit)
            logger.info(
                "rank %d: %s done in %.2f s (%d rows)",
                ctx.rank,
                unit.name,
                time.perf_counter() - start,
                len(unit.ids),
            )
            mine.append(unit)
            bar.update(1)
    finally:
        bar.close()
    return mine


def assemble_manifest(
    opts: BuildOptions, recipe: dict[str, Any], plans: dict[str, ConfigPlan]
) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "recipe": recipe,
        "complete": False,
        "configs": {c: plans[c].manifest_entry() for c in recipe["configs"]},
    }


def check_shared_folder(ctx: distributed.Context, out: Path) -> None:
    """Raise :class:`LaunchError` on every rank unless every rank sees the files the others
    write in ``out``; leaves nothing behind either way."""
    if not ctx.distributed:
        return
    token = ctx.broadcast(uuid.uuid4().hex if ctx.is_main else None)
    existed = out.exists()
    probe = out / WORK / f"ranks-{token}"
    ok = True
    try:
        try:
            probe.mkdir(parents=True, exist_ok=True)
            (probe / str(ctx.rank)).touch()
        except OSError as exc:
            logger.error("rank %d cannot write in %s: %s", ctx.rank, out, exc)
            ok = False
        ctx.barrier()
        seen = {p.name for p in probe.iterdir()} if probe.is_dir() else set()
        ok = ok and seen == {str(r) for r in range(ctx.world_size)}
        failed = ctx.all_ok(ok)
    finally:
        ctx.barrier()
        (probe / str(ctx.rank)).unlink(missing_ok=True)
        ctx.barrier()  # every probe file is gone: the folders can go (empty ones only)
        for p in (probe, probe.parent, *([out] if not existed else [])):
            try:
                p.rmdir()
            except OSError:
                pass
        ctx.barrier()
    if failed:
        raise distributed.LaunchError(
            f"{out} is not one folder that every rank sees: rank(s) "
            f"{', '.join(map(str, failed))} did not find the files the other ranks wrote there. "
            "Put OUT on a filesystem shared by all nodes (NFS, Lustre, GPFS) and give every "
            "rank the same path",
            collective=True,
        )


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

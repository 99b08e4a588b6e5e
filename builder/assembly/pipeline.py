"""``build``: masks -> clean images -> corruptions -> Parquet shards, resumable.

One build writes one Hub package folder::

    OUT/README.md                       dataset card + YAML configs and dataset_info
    OUT/manifest.json                   every shard's sha256 and row count, the recipe
    OUT/data/<config>/<split>-NNNNN-of-NNNNN.parquet
    OUT/models/<config>-unet.safetensors (+ .md)   reference model, when attacks are built
    OUT/results/<config>.json, .md, -robustness.png   the reference model on every split
    OUT/results/<config>-metric-<name>.png           one plot per structure metric

This module is the only writer of the manifest (rank 0 of a multi-process build). The work
itself is a list of units (:mod:`builder.assembly.units`) shared out across the ranks of a
``torchrun`` launch, or done in turn by one process; each unit's shards are written under a
temporary name and renamed when complete, then recorded, so a re-run of the same command,
at any world size, resumes and ends with the bytes of an uninterrupted one-process build.
The rows themselves come from :class:`builder.assembly.images.ConfigImages`.

Bad input writes nothing. Every rank plans every config (:class:`ConfigPlan` opens the
source, which reads and checks every image within the caps) before rank 0 creates ``OUT``
or takes the lock, and the ranks stop together if any rank's source is bad. Reading the
source up front costs nothing extra: the build reads it anyway, now it does so first. As a
safety net, a one-process build that fails before writing any unit removes what it wrote
(the manifest, ``OUT`` itself if this run created it); a multi-process build never removes
anything on failure, as another rank may still be writing in ``OUT``.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from builder import __version__, distributed
from builder.assembly.options import BuildOptions
from builder.assembly.units import (
    ConfigPlan,
    assemble_manifest,
    check_shared_folder,
    clear_records,
    run_units,
)
from builder.evaluation import evaluate, write_reports
from builder.package.card import write_card
from builder.package.manifest import (
    FORMAT_VERSION,
    LOCK,
    MANIFEST,
    BuildError,
    build_lock,
    read_manifest,
    write_manifest,
)
from synthesis.runtime.device import resolve_device
from synthesis.runtime.errors import FluoroBenchError

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
        old = existing.get("recipe", {})
        changed = sorted(k for k in recipe.keys() | old.keys() if old.get(k) != recipe.get(k))
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

    In one process, or in every rank of a ``torchrun`` launch (or ``--workers``): the ranks
    share the work units (:mod:`builder.assembly.units`) through a dynamic queue and end with
    the bytes of a one-process build.

    Raises:
        InputError: bad arguments, or a bad source (an unreadable or truncated file, an
            image without its mask, sizes that differ...): nothing is written.
        BuildError: the folder holds something else, or another build holds the lock.
        LaunchError: a rank cannot reach the rendezvous, the ranks were given different
            arguments, a rank cannot read the source the others read, or ``OUT`` is not on
            a filesystem every rank sees (nothing written).
    """
    opts.validate()
    recipe = opts.recipe()
    device = resolve_device(opts.device)
    with distributed.join(
        device_type=device.type, timeout_s=opts.rendezvous_timeout, job="build"
    ) as ctx:
        device = ctx.device(device)
        ctx.agree("arguments", {**recipe, "out": str(opts.out), "device": opts.device})
        # The source is read and checked before OUT is created: bad input writes nothing.
        # A build already complete is not re-read (its source may be gone: nothing to do).
        plans = None if _complete_already(ctx, opts, recipe) else _plan(ctx, opts, recipe, device)
        check_shared_folder(ctx, opts.out)
        existed = opts.out.exists()
        stub = False  # a one-process run that failed before any unit removed its manifest
        lock = build_lock(opts.out) if ctx.is_main else contextlib.nullcontext()
        try:
            with lock:
                fresh = not ctx.distributed and not any(p.name != LOCK for p in opts.out.iterdir())
                manifest = _start(ctx, opts, recipe)
                if manifest.get("complete"):
                    logger.info("%s is already complete; nothing to do", opts.out)
                    return manifest
                try:
                    if plans is None:  # the folder changed since it was found complete
                        plans = _plan(ctx, opts, recipe, device)
                    run_units(ctx, opts, plans)
                    ctx.arrive("units")
                    if ctx.is_main:
                        manifest = assemble_manifest(opts, recipe, plans)
                        write_manifest(opts.out, manifest)
                        write_card(opts.out, manifest)  # load_dataset reads its YAML: needed below
                    ctx.arrive("card")
                    for config in recipe["configs"]:
                        if plans[config].trains:
                            _evaluate_reference(ctx, opts, config, device)
                    if ctx.is_main:
                        write_card(opts.out, manifest)
                        manifest["complete"] = True
                        write_manifest(opts.out, manifest)
                        clear_records(opts.out)
                    ctx.arrive("written")  # every rank returns the final manifest
                    ctx.leave()
                except BaseException as exc:
                    ctx.fail(f"rank {ctx.rank}: {type(exc).__name__}: {exc}")
                    if fresh:
                        stub = _remove_stub(opts.out)
                    raise
        finally:
            if stub and not existed:  # after the lock is gone: only an empty folder goes
                with contextlib.suppress(OSError):
                    opts.out.rmdir()
    logger.info("build complete: %s", opts.out)
    return read_manifest(opts.out) or manifest


def _complete_already(ctx: distributed.Context, opts: BuildOptions, recipe: dict[str, Any]) -> bool:
    """Whether ``OUT`` holds this very build, complete (rank 0 reads; every rank gets it).

    A hint only, read without the lock: :func:`_start` decides under the lock."""
    done = False
    if ctx.is_main:
        try:
            existing = read_manifest(opts.out) if opts.out.is_dir() else None
        except BuildError:  # unreadable: _start reports it under the lock
            existing = None
        done = bool(existing and existing.get("complete") and existing.get("recipe") == recipe)
    return bool(ctx.broadcast(done))


def _plan(
    ctx: distributed.Context, opts: BuildOptions, recipe: dict[str, Any], device: torch.device
) -> dict[str, ConfigPlan]:
    """Every config's plan: its source opened (every image within the caps read and
    checked), its renderer made, its units listed. Writes nothing.

    Every rank plans, then all learn which ranks failed, so none waits for another in a
    collective: where every rank failed alike, rank 0 reports the error; where only some
    did, each of those reports its own and the others stop with a :class:`LaunchError`.
    """
    plans: dict[str, ConfigPlan] = {}
    error: Exception | None = None
    try:
        plans = {c: ConfigPlan(opts, c, device) for c in recipe["configs"]}
    except Exception as exc:  # typed or not, the other ranks must hear of it
        error = exc
    failed = ctx.all_ok(error is None)
    if error is not None:
        if isinstance(error, FluoroBenchError) and len(failed) == ctx.world_size:
            error.collective = True
        raise error
    if failed:
        raise distributed.LaunchError(
            f"rank(s) {', '.join(map(str, failed))} of {ctx.world_size} could not open "
            f"--source {opts.source} (see their error) while the others could: give every rank "
            "the same files",
            collective=True,
        )
    return plans


def _remove_stub(out: Path) -> bool:
    """After a one-process build that started in an empty (or new) ``OUT`` failed, under its
    lock: if no unit was written (no file but the manifest and the lock; empty folders left
    by a unit that broke off are fine), remove the manifest and those folders and return
    True. Otherwise touch nothing: the units written are kept for a resume."""
    try:
        files = [p for p in out.rglob("*") if not p.is_dir() or p.is_symlink()]
        if any(p.parent != out or p.name not in (MANIFEST, LOCK) for p in files):
            return False
        logger.info("nothing was built: removing the manifest this run wrote in %s", out)
        (out / MANIFEST).unlink(missing_ok=True)
        for d in sorted((p for p in out.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                d.rmdir()  # empty folders only
    except OSError as exc:  # never hide the error that stopped the build
        logger.warning("could not remove the unfinished build in %s: %s", out, exc)
        return False
    return True


def _start(ctx: distributed.Context, opts: BuildOptions, recipe: dict[str, Any]) -> dict[str, Any]:
    """Rank 0 decides between a fresh build, a resume, a refusal or an overwrite and records
    the recipe; every rank gets the manifest, or the same refusal."""
    manifest: dict[str, Any] | None = None
    error = None
    if ctx.is_main:
        try:
            manifest = _prepare_folder(opts, recipe)
            if not manifest.get("complete"):
                _remove_partials(opts.out)
                manifest["complete"] = False
                manifest["configs"] = {}
                write_manifest(opts.out, manifest)
        except BuildError as exc:
            error = str(exc)
    error, manifest = ctx.broadcast((error, manifest))
    if error is not None:
        raise BuildError(error, collective=True)
    assert manifest is not None
    return manifest


def _evaluate_reference(
    ctx: distributed.Context, opts: BuildOptions, config: str, device: torch.device
) -> None:
    """Score the shipped reference model on every split, the splits shared across ranks:
    ``results/<config>.json`` and ``.md``, ``results/<config>-robustness.png`` and one plot
    per structure metric, ``results/<config>-metric-<name>.png`` (rank 0)."""
    logger.info("evaluating the reference U-Net of %s on every split", config)
    start = time.perf_counter()
    results = evaluate(
        str(opts.out),
        config,
        device=str(device),
        batch_size=opts.batch_size,
        progress=opts.progress,
        ctx=ctx,
        reference=False,  # these are the reference results: no mCE against themselves
    )
    logger.info(
        "rank %d: evaluation of %s done in %.2f s", ctx.rank, config, time.perf_counter() - start
    )
    if ctx.is_main:
        results["data"] = "."  # the package itself, wherever it is moved
        write_reports(opts.out / "results", results, stem=config)

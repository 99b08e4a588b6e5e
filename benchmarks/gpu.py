"""Everything a GPU can tell us, in one command that stops before its budget (issue 26).

    python benchmarks/gpu.py --out DIR [--device cuda] [--budget 420] [--study-counts T V E]
    python benchmarks/gpu.py --out DIR --device cpu --dry-run      # the whole script, tiny, on CPU

Needs nothing beyond ``pip install -e ".[dev,zoo]"``. The stages, in the order they run (each
starts only if the time left allows, and is then held to its share of ``--budget``; what is
not reached is listed as such):

1. ``environment``: device, driver, torch, CUDA and cuDNN versions, the host CPU, and the
   device's memory bandwidth: from the memory clock and bus width where torch's device
   properties or NVML (``nvidia-ml-py``, if installed) report them, and a measured
   device-to-device copy (read + write) always. Fractions
   of peak use the first where present, else the measured copy (which overstates them a
   little: a copy reaches ~90 % of the specification).
2. ``throughput``: per operation, at 256² and 512², over a sweep of batch sizes, images/s on
   the device and in GB/s of memory traffic with its fraction of the peak; the same work on
   the CPU in the same run (a smaller batch) and the ratio. Operations: exact
   Poisson–Gaussian noise at the reference SNR (``camera_images``), SIB and SVB at level 3,
   each attack method at 8 grey levels, a reference U-Net training step, and ``evaluate``'s
   forward pass (``predict`` of the z-scored image). The traffic is a lower bound counted
   from the tensors each must read and write per image: noise reads the float32 image and
   the bool mask and writes int32 ADU (9 B/px); a blur reads and writes float32 (8 B/px); a
   model pass writes every layer's output and reads it again (2A, A = the bytes of the
   outputs of the U-Net's modules for one image, counted by forward hooks), a gradient
   (forward and backward) also reads them back and writes their gradients (4A); the forward
   pass adds its input and output (5 B/px), a training step the same, an attack ``G`` gradients
   (its method's count at 8 grey levels) plus its input, mask and output (9 B/px); the
   gradient-free Square attack (where the library has it) is timed at 100 queries, each a
   forward pass (2A). Model operations on the CPU run one image, without a warm-up call.
   Then the rows of one build split (``sib_3`` of mito, batches of 16 and 64) as the build
   makes them, with the time of their cells' encoding and of the Parquet write: the host's
   share says whether the writer, not the device, bounds a GPU build.
3. ``determinism``: one small build (every config, every split family) twice on the device:
   the same bytes, or which files differ; then the same build on the CPU and what differs
   from it (per split: rows whose image differs, the largest difference, which params). On
   CUDA, if the two device builds differ, the pair is built again with
   ``torch.use_deterministic_algorithms(True)`` (``CUBLAS_WORKSPACE_CONFIG=:4096:8``), to
   see whether that mode would give a promise.
4. ``build``: the full default build of the three configs on the device (``fluorobench-c
   build OUT --device D``: 160/20/40 images, every family, 30 epochs), its wall time and the
   per-unit table of :mod:`scale` (a build stopped by the budget still gives the units it
   finished; a run killed during it leaves ``logs/build.log``, which holds them);
   ``--build-args`` adds arguments (``'--batch-size 64'``: rows per device batch).
5. ``gpu_tests``: ``pytest -m gpu`` on the test files that hold ``gpu``-marked tests
   (skipped without CUDA, which is recorded).
6. ``study_scale``: the same build at the original study's image counts, given by
   ``--study-counts TRAIN VALIDATION TEST`` (they are not recorded in this repository); it
   runs if the time predicted from the per-unit costs of stage 4 fits in what is left.

``gpu.json`` (rewritten atomically after every stage, so a killed run still leaves figures)
and ``gpu.md`` go into ``--out``, with the build logs under ``logs/``; a one-screen summary is
printed. ``--dry-run`` runs every stage at tiny sizes (16² and 32² images, batches of 1 and
2, builds of one config and three split families), for CI.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common

#: The test files that hold ``gpu``-marked tests (``tests/test_gpu_script.py`` checks that
#: no other file does).
GPU_TEST_FILES = ("tests/test_attacks.py", "tests/test_leaderboard.py", "tests/test_scale.py")

#: The build's default counts (``BuildOptions.counts``), for the study-scale prediction.
DEFAULT_COUNTS = {"train": 160, "validation": 20, "test": 40}

#: Share of ``--budget`` each stage may take at most (the rest of the time is the later
#: stages'); a stage also never runs past what is left minus :data:`RESERVE_S`.
SHARES = {
    "environment": 0.05,
    "throughput": 0.25,
    "determinism": 0.22,
    "build": 0.36,
    "gpu_tests": 0.25,
    "study_scale": 1.0,
}
#: Seconds kept at the end for writing the results.
RESERVE_S = 3.0
#: The least time a stage needs to be worth starting.
MIN_START_S = {
    "environment": 1.0,
    "throughput": 5.0,
    "determinism": 10.0,
    "build": 10.0,
    "gpu_tests": 5.0,
    "study_scale": 10.0,
}
STAGES = tuple(SHARES)

#: Build arguments of the determinism stage (every config, every family) and of the dry run.
SMALL_BUILD = ["--train", "8", "--validation", "4", "--test", "4", "--train-epochs", "2"]
TINY_BUILD = ["--config", "nucleus", "--train", "2", "--validation", "1", "--test", "1"]
TINY_BUILD += ["--train-epochs", "1", "--splits", "reference", "snr", "sib"]

#: Model evaluations per image of the timed Square attack (its throughput per query is what
#: matters; the default query count would take most of the budget on the CPU).
SQUARE_QUERIES_TIMED = 100

#: Bytes per pixel each operation must read and write per image, besides model activations.
PIXEL_BYTES = {"noise": 9, "sib": 8, "svb": 8, "forward": 5, "train_step": 5, "attack": 9}


# ----------------------------------------------------------------------------- the run


class Budget:
    """Wall-clock budget of the run: what is left, and each stage's deadline."""

    def __init__(self, seconds: float) -> None:
        self.total = seconds
        self.t0 = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return self.total - self.elapsed() - RESERVE_S

    def stage_limit(self, stage: str) -> float:
        return min(self.left(), SHARES[stage] * self.total)


class Run:
    """The results of one run, written after every stage."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.budget = Budget(args.budget)
        self.out: Path = args.out
        self.logs = self.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.result: dict[str, Any] = {
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "device": args.device,
            "dry_run": args.dry_run,
            "budget_s": args.budget,
            "stages": {},
            "not_reached": [],
        }

    def save(self) -> None:
        from synthesis.runtime.files import atomic_write_bytes

        self.result["elapsed_s"] = round(self.budget.elapsed(), 1)
        text = json.dumps(_json_safe(self.result), indent=2, allow_nan=False, default=str)
        atomic_write_bytes(self.out / "gpu.json", text.encode())
        atomic_write_bytes(self.out / "gpu.md", markdown(self.result).encode())

    def stage(self, name: str, fn: Callable[[float], dict[str, Any]]) -> None:
        """Run stage ``name`` with its time limit, or record why it did not run."""
        if name not in self.args.stages:
            self.result["stages"][name] = {"status": "not asked for (--stages)"}
            return
        limit = self.budget.stage_limit(name)
        if limit < MIN_START_S[name]:
            self.skip(name, f"not reached: {max(limit, 0):.0f} s left of the budget")
            return
        t0 = time.monotonic()
        self.partial(name, {})
        try:
            out = fn(limit)
            out.setdefault("status", "done")
        except Exception as exc:  # a stage's failure is a result; the others still run
            out = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000]}
        out["seconds"] = round(time.monotonic() - t0, 1)
        out["limit_s"] = round(limit, 1)
        self.result["stages"][name] = out
        if out["status"] != "done":
            self.result["not_reached"].append(f"{name}: {out['status']}")
        self.save()

    def partial(self, name: str, figures: dict[str, Any]) -> None:
        """Save what stage ``name`` has so far: a run killed during it still leaves them,
        marked as unfinished."""
        self.result["stages"][name] = {"status": "running (unfinished)", **figures}
        self.save()

    def skip(self, name: str, why: str) -> None:
        self.result["stages"][name] = {"status": why}
        self.result["not_reached"].append(f"{name}: {why}")
        self.save()


def _json_safe(x: Any) -> Any:
    """``x`` with every non-finite float replaced by None (JSON has no NaN or inf)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def finite(x: float) -> float | None:
    """``x`` rounded for the report, or None where it is not finite (JSON has no NaN)."""
    return None if x is None or not math.isfinite(x) else float(f"{x:.6g}")


# ----------------------------------------------------------------------------- processes


def run_logged(cmd: list[str], log: Path, limit: float, env: dict[str, str] | None = None) -> dict:
    """Run ``cmd`` (its output to ``log``) for at most ``limit`` seconds.

    Returns ``{"returncode", "seconds", "timed_out"}``; a command past its limit is ended
    (its own process group, so its workers too) and reported as timed out.
    """
    full_env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "TQDM_DISABLE": "1", **(env or {})}
    t0 = time.monotonic()
    with log.open("w") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(
            cmd, cwd=_common.ROOT, env=full_env, stdout=f, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            code = proc.wait(timeout=max(limit, 1.0))
            timed_out = False
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
            timed_out = True
    return {"returncode": code, "seconds": round(time.monotonic() - t0, 1), "timed_out": timed_out}


#: ``fluorobench-c`` from this checkout; with FBC_STRICT=1 torch's deterministic algorithms.
_CLI = (
    "import os, sys, torch\n"
    "if os.environ.get('FBC_STRICT') == '1':\n"
    "    torch.use_deterministic_algorithms(True, warn_only=True)\n"
    "    torch.backends.cudnn.benchmark = False\n"
    "from builder.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def build(out: Path, device: str, extra: list[str], log: Path, limit: float, strict: bool = False):
    """``fluorobench-c build out --device device *extra``, logged, within ``limit`` seconds."""
    cmd = [sys.executable, "-c", _CLI, "build", str(out), "--device", device, *extra]
    env = {"FBC_STRICT": "1", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"} if strict else {}
    return run_logged(cmd, log, limit, env)


# ----------------------------------------------------------------------------- 1. environment


def stage_environment(run: Run, limit: float) -> dict[str, Any]:
    import torch

    device = torch.device(run.args.device)
    env: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu": _common.cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
    }
    spec = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["device_name"] = props.name
        env["memory_gib"] = round(props.total_memory / 2**30, 1)
        env["compute_capability"] = f"{props.major}.{props.minor}"
        env["multiprocessors"] = props.multi_processor_count
        clock = getattr(props, "memory_clock_rate", None)  # kHz, where torch exposes it
        bus = getattr(props, "memory_bus_width", None)  # bits
        source = "torch device properties"
        if not (clock and bus):
            clock, bus = _nvml_memory(device.index or 0)
            source = "NVML (memory clock x bus width)"
        if clock and bus:
            spec = 2 * clock * 1e3 * bus / 8 / 1e9  # double data rate
            env["bandwidth_spec_source"] = source
        env["driver"] = _nvidia_smi("driver_version")
        env["memory_clock_max_mhz"] = _nvidia_smi("clocks.max.memory")
    else:
        env["device_name"] = "CPU (" + env["cpu"] + ")"
        env["driver"] = None
    copy = _copy_gbps(device, 2**24 if run.args.dry_run else 2**30)
    env["bandwidth_spec_gbps"] = finite(spec) if spec else None
    env["bandwidth_copy_gbps"] = finite(copy)
    env["peak_gbps"] = finite(spec or copy)
    env["peak_source"] = (
        "specification (memory clock x bus width)" if spec else "measured copy (read + write)"
    )
    run.result["environment"] = env
    return {"status": "done"}


def _nvml_memory(index: int) -> tuple[float | None, int | None]:
    """(maximum memory clock in kHz, memory bus width in bits) from NVML, where the
    ``nvidia-ml-py`` package happens to be installed (it is no dependency); else Nones."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            clock_mhz = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM)
            bus = pynvml.nvmlDeviceGetMemoryBusWidth(handle)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # not installed, no driver, or an old NVML: the measured copy is used
        return None, None
    return float(clock_mhz) * 1e3, int(bus)


def _nvidia_smi(field: str) -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        r = subprocess.run(
            [exe, f"--query-gpu={field}", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() or None if r.returncode == 0 else None


def _copy_gbps(device: Any, nbytes: int) -> float:
    """Best of 5 copies of ``nbytes`` between two buffers on ``device``: bytes read + written
    per second, in GB/s."""
    import torch

    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)
    t = _common.best_of(lambda: dst.copy_(src), 5, device)
    return 2 * nbytes / t / 1e9


# ----------------------------------------------------------------------------- 2. throughput


def activation_bytes(model: Any, size: int, device: Any) -> int:
    """Bytes of the outputs of every leaf module of ``model`` for one ``size``² image."""
    import torch

    total = 0

    def hook(_m: Any, _i: Any, out: Any) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel() * out.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 1, size, size, device=device))
    finally:
        for h in handles:
            h.remove()
    return total


class Workload:
    """Inputs and operations of the throughput stage at one image size, on one device."""

    def __init__(self, size: int, n: int, device: Any, model_state: dict) -> None:
        import torch
        from corruptions import scenes

        from builder.assembly.reference import REFERENCE
        from synthesis.corruptions.noise import camera_images
        from synthesis.models.unet import UNet

        base = min(n, 8)
        clean, mask = scenes(base, size)
        reps = -(-n // base)
        self.device = device
        self.clean = clean.repeat(reps, 1, 1, 1)[:n].contiguous().to(device)
        self.mask = mask.repeat(reps, 1, 1, 1)[:n].contiguous().to(device)
        self.seeds = torch.arange(n, dtype=torch.int64, device=device)
        self.adu = camera_images(self.clean, self.mask, 8.0, self.seeds).adu
        self.model = UNet(1, 1, REFERENCE.base_channels, REFERENCE.depth, seed=0)
        self.model.load_state_dict(model_state)
        self.model.to(device).eval()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=REFERENCE.lr)

    def op(self, name: str, b: int) -> Callable[[], Any]:
        """A call of operation ``name`` on the first ``b`` images."""
        import torch

        from builder.evaluation.model_loading import predict
        from synthesis.corruptions import psf
        from synthesis.corruptions.attacks import attack
        from synthesis.corruptions.noise import camera_images
        from synthesis.models.training import segmentation_loss
        from synthesis.normalize import zscore
        from synthesis.thread_invariant import model_threads

        clean, mask, seeds, adu = self.clean[:b], self.mask[:b], self.seeds[:b], self.adu[:b]
        if name == "noise":
            return lambda: camera_images(clean, mask, 8.0, seeds).adu
        if name == "sib":
            return lambda: psf.sib(clean, 3)
        if name == "svb":
            return lambda: psf.svb(clean, 3)
        if name == "forward":
            return lambda: predict(self.model, zscore(adu.float()))
        if name == "train_step":

            def step() -> Any:
                self.model.train()
                with model_threads(self.device):
                    loss = segmentation_loss(self.model(zscore(adu.float())), mask)
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    self.optimizer.step()
                self.model.eval()
                return loss.detach()

            return step
        method = name.removeprefix("attack_")
        if method == "square":  # gradient-free: SQUARE_QUERIES_TIMED model evaluations
            from synthesis.corruptions.attacks import square_attack

            return lambda: (
                square_attack(
                    self.model, adu, mask, eps_grey=8.0, seeds=seeds, queries=SQUARE_QUERIES_TIMED
                ).adu
            )
        return lambda: attack(
            self.model, adu, mask, method=method, eps_grey=8.0, seeds=seeds
        ).adu.to(torch.int32)


def op_bytes(name: str, size: int, act: int) -> int:
    """Lower bound of the bytes ``name`` reads and writes per image (module docstring)."""
    from synthesis.corruptions.attacks import gradients_needed

    px = size * size
    if name in ("noise", "sib", "svb"):
        return PIXEL_BYTES[name] * px
    if name == "forward":
        return 2 * act + PIXEL_BYTES["forward"] * px
    if name == "train_step":
        return 4 * act + PIXEL_BYTES["train_step"] * px
    method = name.removeprefix("attack_")
    if method == "square":
        return SQUARE_QUERIES_TIMED * 2 * act + PIXEL_BYTES["attack"] * px
    grads = gradients_needed(method, [8.0])
    return grads * 4 * act + PIXEL_BYTES["attack"] * px


def stage_throughput(run: Run, limit: float) -> dict[str, Any]:
    """Every operation on the device over the batch sweep at each size first, then the CPU
    figures as time allows (model operations on one image: an attack on the CPU runs one
    image at a time anyway)."""
    import torch

    from synthesis.corruptions import attacks
    from synthesis.models.unet import UNet

    args = run.args
    device = torch.device(args.device)
    deadline = time.monotonic() + limit
    peak = run.result.get("environment", {}).get("peak_gbps")
    methods = [*attacks.METHODS, *getattr(attacks, "GRADIENT_FREE", ())]
    ops = ["noise", "sib", "svb", *(f"attack_{m}" for m in methods), "train_step", "forward"]
    state = UNet(1, 1, 16, 4, seed=0).state_dict()
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    works: dict[int, tuple[Workload, int, dict[str, list[int]]]] = {}

    def workload(size: int) -> tuple[Workload, int, dict[str, list[int]]]:
        if size not in works:
            scale = max(1, (size // args.sizes[0]) ** 2)
            batches = {
                "corruption": sorted({max(1, b // scale) for b in args.batches}),
                "model": sorted({max(1, b // scale) for b in args.model_batches}),
            }
            work = Workload(size, max(batches["corruption"] + batches["model"]), device, state)
            works[size] = (work, activation_bytes(work.model, size, device), batches)
        return works[size]

    # The corruptions at every size first (their 512² figures are the goal), then the models.
    order = [(op, size) for op in ops[:3] for size in args.sizes]
    order += [(op, size) for size in args.sizes for op in ops[3:]]
    for op, size in order:
        if time.monotonic() > deadline:
            skipped.append(f"{op} at {size}²")
            continue
        work, act, batches = workload(size)
        kind = "corruption" if op in ("noise", "sib", "svb") else "model"
        per_image = op_bytes(op, size, act)
        row: dict[str, Any] = {"op": op, "size": size, "bytes_per_image": per_image}
        sweep: list[dict[str, Any]] = []
        for b in batches[kind]:
            if time.monotonic() > deadline:
                skipped.append(f"{op} at {size}², batch {b}")
                continue
            sweep.append(_measure(work, op, b, args.repeats, per_image, peak))
            if "error" in sweep[-1]:
                break  # a larger batch will not fit either
        row["sweep"] = sweep
        good = [s for s in sweep if "img_s" in s]
        if good:
            best = max(good, key=lambda s: s["img_s"])
            row.update({k: best[k] for k in ("img_s", "gbps", "fraction_of_peak")})
            row["best_batch"] = best["batch"]
        rows.append(row)
        run.partial("throughput", {"rows": rows})
    works.clear()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    # The CPU path: the same work, in the same run.
    cpu_works: dict[int, Workload] = {}
    for row in rows:
        if "img_s" not in row:
            continue
        if time.monotonic() > deadline:
            skipped.append(f"{row['op']} at {row['size']}² on the CPU")
            continue
        if device.type == "cpu":  # the device is the CPU: its own smallest batch
            cpu = min((s for s in row["sweep"] if "img_s" in s), key=lambda s: s["batch"])
        else:
            size = row["size"]
            if size not in cpu_works:
                cpu_works[size] = Workload(size, args.cpu_batch, torch.device("cpu"), state)
            b = args.cpu_batch if row["op"] in ("noise", "sib", "svb") else 1
            warm = row["op"] in ("noise", "sib", "svb")
            cpu = _measure(cpu_works[size], row["op"], b, 1, row["bytes_per_image"], None, warm)
        if "img_s" in cpu:
            row["cpu_batch"] = cpu["batch"]
            row["cpu_img_s"] = cpu["img_s"]
            row["ratio_vs_cpu"] = finite(row["img_s"] / cpu["img_s"])
        else:
            row["cpu_error"] = cpu.get("error")
        run.partial("throughput", {"rows": rows})
    # Rows of a build split: is the host (encoding, Parquet) the bottleneck?
    row_batches = [1, 2] if args.dry_run else [16, 64]
    assembly = []
    for b in row_batches:
        if time.monotonic() > deadline:
            skipped.append(f"row assembly, batch {b}")
            continue
        try:
            assembly.append(measure_rows(device, b, args.repeats))
        except Exception as exc:  # recorded; the stage goes on
            assembly.append({"batch": b, "error": f"{type(exc).__name__}: {exc}"[:500]})
    goals = {}
    for op in ("noise", "sib", "svb"):
        fr = [r.get("fraction_of_peak") for r in rows if r["op"] == op and r["size"] == 512]
        fr = [f for f in fr if f is not None]
        goals[op] = None if not fr else fr[0] >= 0.30
    out = {"torch_threads_cpu": torch.get_num_threads(), "rows": rows, "row_assembly": assembly}
    out["goal_30pct_of_peak_at_512"] = goals
    if skipped:
        out["status"] = f"stopped at its time limit ({len(skipped)} measurements not reached)"
        out["skipped"] = skipped
    return out


def measure_rows(device: Any, batch: int, repeats: int) -> dict[str, Any]:
    """One batch of ``sib_3`` rows of a default build (mito, procedural, 256²) as the build
    makes them, on ``device``: ``ConfigImages.rows`` (noise, blur and the cells' encoding;
    the clean test images cached, as the build has them for every test-derived split), the
    encoding alone (TIFF, preview, mask) and the Parquet write. The host's share says
    whether the writer is the bottleneck of a GPU build."""
    import numpy as np
    import tifffile
    from PIL import Image

    from builder.assembly.images import ConfigImages
    from builder.assembly.options import BuildOptions
    from builder.package.shards import encode_mask, encode_preview, encode_tiff, write_shard

    with tempfile.TemporaryDirectory(prefix="fbc-gpu-rows-") as tmp:
        counts = {"train": 1, "validation": 1, "test": batch}
        opts = BuildOptions(out=Path(tmp), configs=["mito"], counts=counts, batch_size=batch)
        images = ConfigImages(opts, "mito", device)
        spec = next(s for s in images.specs if s.name == "sib_3")
        ids = images.source.ids("test")[:batch]
        rows = images.rows(spec, ids)  # warm-up; fills the clean-image cache
        t_rows = _common.best_of(lambda: images.rows(spec, ids), repeats, device)
        adu = [tifffile.imread(io.BytesIO(r["image"]["bytes"])) for r in rows]
        mask_np = [np.asarray(Image.open(io.BytesIO(r["mask"]["bytes"]))) for r in rows]

        def encode() -> None:
            for i in range(len(ids)):
                encode_tiff(adu[i])
                encode_preview(adu[i])
                encode_mask(mask_np[i])

        t_encode = _common.best_of(encode, repeats)
        shard = Path(tmp) / "shard.parquet"
        t_write = _common.best_of(lambda: write_shard(shard, rows, images.features), repeats)
    total = t_rows + t_write
    return {
        "batch": batch,
        "rows_s": finite(t_rows),
        "encode_s": finite(t_encode),
        "write_s": finite(t_write),
        "rows_per_s": finite(batch / total),
        "host_share": finite((t_encode + t_write) / total),
    }


def _measure(
    work: Workload,
    op: str,
    b: int,
    repeats: int,
    per_image: int,
    peak: float | None,
    warm: bool = True,
) -> dict[str, Any]:
    import torch

    fn = work.op(op, b)
    try:
        if warm:
            fn()  # warm-up: allocator, cuDNN plans, compiled kernels
        t = _common.best_of(fn, repeats, work.device)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {"batch": b, "error": "out of memory"}
    except Exception as exc:  # recorded; the other measurements still run
        return {"batch": b, "error": f"{type(exc).__name__}: {exc}"[:500]}
    img_s = b / t
    gbps = img_s * per_image / 1e9
    return {
        "batch": b,
        "seconds": finite(t),
        "img_s": finite(img_s),
        "gbps": finite(gbps),
        "fraction_of_peak": finite(gbps / peak) if peak else None,
    }


# ----------------------------------------------------------------------------- 3. determinism


def stage_determinism(run: Run, limit: float) -> dict[str, Any]:
    args = run.args
    deadline = time.monotonic() + limit
    extra = TINY_BUILD if args.dry_run else SMALL_BUILD
    # The CPU build in worker processes: the same bytes at any count (the CPU promise).
    workers = max(1, min(8, (os.cpu_count() or 1) // 2))
    plan = [("device_a", args.device, []), ("device_b", args.device, [])]
    if args.device != "cpu":
        plan.append(("cpu", "cpu", ["--workers", str(workers), "--threads", "2"]))
    out: dict[str, Any] = {"build_args": " ".join(extra)}
    with tempfile.TemporaryDirectory(prefix="fbc-gpu-det-") as tmp:
        pkgs = _builds(run, Path(tmp), plan, extra, deadline, out, strict=False)
        if "device_b" in pkgs:
            out["device_vs_device"] = compare_packages(pkgs["device_a"], pkgs["device_b"])
        if "cpu" in pkgs:
            out["device_vs_cpu"] = compare_packages(pkgs["device_a"], pkgs["cpu"])
        elif args.device == "cpu" and "device_a" in pkgs:
            out["device_vs_cpu"] = "the device is the CPU: see device_vs_device"
        same = out.get("device_vs_device", {}).get("identical")
        if same is False and args.device != "cpu":
            strict: dict[str, Any] = {}
            pair = [("strict_a", args.device, []), ("strict_b", args.device, [])]
            made = _builds(run, Path(tmp), pair, extra, deadline, strict, strict=True)
            if "strict_b" in made:
                strict["strict_vs_strict"] = compare_packages(made["strict_a"], made["strict_b"])
            out["deterministic_algorithms"] = strict
    return out


def _builds(
    run: Run,
    tmp: Path,
    plan: list[tuple[str, str, list[str]]],
    extra: list[str],
    deadline: float,
    out: dict[str, Any],
    *,
    strict: bool,
) -> dict[str, Path]:
    """Build each ``(name, device, more args)`` of ``plan`` under ``tmp`` until one fails or
    the deadline nears; record each build's outcome in ``out``; return the packages made."""
    made = {}
    for name, device, more in plan:
        left = deadline - time.monotonic()
        if left < MIN_START_S["determinism"]:
            out["status"] = f"stopped at its time limit before build {name}"
            break
        log = run.logs / f"determinism-{name}.log"
        r = build(tmp / name, device, [*extra, *more], log, left, strict)
        out[f"{name}_build"] = r
        if r["returncode"] != 0:
            out["status"] = f"build {name} {'timed out' if r['timed_out'] else 'failed'}"
            break
        made[name] = tmp / name
    return made


def compare_packages(a: Path, b: Path) -> dict[str, Any]:
    """Which files of two packages differ (shards, models, the manifest's shard hashes:
    ``same_bytes.file_hashes``), and for each differing shard what differs in its rows."""
    import same_bytes

    ha, hb = same_bytes.file_hashes(a), same_bytes.file_hashes(b)
    keys = sorted(set(ha) | set(hb))
    differ = [k for k in keys if ha.get(k) != hb.get(k)]
    files = [k for k in differ if not k.startswith("manifest:")]
    out: dict[str, Any] = {
        "files_compared": sum(1 for k in keys if not k.startswith("manifest:")),
        "files_differ": len(files),
        "identical": not differ,
        "differ": files,
        "splits": {},
    }
    for rel in files:
        if rel.startswith("data/") and (a / rel).exists() and (b / rel).exists():
            out["splits"][rel] = compare_shard(a / rel, b / rel)
        elif rel.endswith(".safetensors") and (a / rel).exists() and (b / rel).exists():
            out["splits"][rel] = compare_weights(a / rel, b / rel)
    return out


def compare_shard(a: Path, b: Path) -> dict[str, Any]:
    """Rows of two shards of one split: how many images differ, by how much, which params."""
    import numpy as np
    import pyarrow.parquet as pq
    import tifffile

    ra = pq.read_table(a, columns=["id", "image", "params"]).to_pylist()
    rb = pq.read_table(b, columns=["id", "image", "params"]).to_pylist()
    out: dict[str, Any] = {"rows": len(ra), "rows_image_differ": 0, "pixels_differ": 0}
    max_abs, params = 0.0, set()
    for x, y in zip(ra, rb, strict=False):
        ia = tifffile.imread(io.BytesIO(x["image"]["bytes"])).astype(np.float64)
        ib = tifffile.imread(io.BytesIO(y["image"]["bytes"])).astype(np.float64)
        if ia.shape != ib.shape or not np.array_equal(ia, ib):
            out["rows_image_differ"] += 1
            if ia.shape == ib.shape:
                d = np.abs(ia - ib)
                out["pixels_differ"] += int((d > 0).sum())
                max_abs = max(max_abs, float(d.max()))
        params |= _differing_keys(x["params"], y["params"])
    out["max_abs_image_diff"] = finite(max_abs)
    out["params_differ"] = sorted(params)
    return out


def _differing_keys(a: Any, b: Any, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys: set[str] = set()
        for k in set(a) | set(b):
            keys |= _differing_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return keys
    same = a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)
    return set() if same else {prefix.rstrip(".")}


def compare_weights(a: Path, b: Path) -> dict[str, Any]:
    """The largest absolute difference between two weight files, and in how many tensors."""
    from safetensors.numpy import load_file

    wa, wb = load_file(str(a)), load_file(str(b))
    differ = [k for k in wa if k not in wb or not (wa[k] == wb[k]).all()]
    diffs = [
        abs(wa[k].astype("float64") - wb[k].astype("float64")).max() for k in differ if k in wb
    ]
    return {
        "tensors": len(wa),
        "tensors_differ": len(differ),
        "max_abs_weight_diff": finite(float(max(diffs))) if diffs else 0.0,
    }


# ----------------------------------------------------------------------------- 4. build


def stage_build(run: Run, limit: float) -> dict[str, Any]:
    extra = (TINY_BUILD if run.args.dry_run else []) + shlex.split(run.args.build_args)
    out = _timed_build(run, "build", extra, limit)
    out["counts"] = _counts(extra)
    return out


def _counts(extra: list[str]) -> dict[str, int]:
    """The train/validation/test counts of build arguments (the defaults where not given)."""
    counts = dict(DEFAULT_COUNTS)
    for split in counts:
        if f"--{split}" in extra:
            counts[split] = int(extra[extra.index(f"--{split}") + 1])
    return counts


def _with_counts(extra: list[str], counts: dict[str, int]) -> list[str]:
    """``extra`` with its train/validation/test counts replaced by ``counts``."""
    out = list(extra)
    for split, n in counts.items():
        if f"--{split}" in out:
            out[out.index(f"--{split}") + 1] = str(n)
        else:
            out += [f"--{split}", str(n)]
    return out


def _timed_build(run: Run, name: str, extra: list[str], limit: float) -> dict[str, Any]:
    import scale

    with tempfile.TemporaryDirectory(prefix=f"fbc-gpu-{name}-") as tmp:
        log = run.logs / f"{name}.log"
        r = build(Path(tmp) / "pkg", run.args.device, extra, log, limit)
        shards = sum(1 for _ in (Path(tmp) / "pkg" / "data").rglob("*.parquet"))
    text = log.read_text(errors="replace")
    units = scale.unit_table(text)
    out: dict[str, Any] = {
        "build_args": " ".join(extra) or "the defaults (every config, 160/20/40, 30 epochs)",
        "wall_s": r["seconds"],
        "returncode": r["returncode"],
        "shards": shards,
        "units": [
            {**u, "seconds": finite(u["seconds"]), "share": finite(u["share"])} for u in units
        ],
    }
    if r["timed_out"]:
        out["status"] = (
            f"stopped at its time limit after {r['seconds']:.0f} s (units finished: listed)"
        )
    elif r["returncode"] != 0:
        out["status"] = f"build failed (exit {r['returncode']}; see logs/{log.name})"
        out["log_tail"] = text[-1500:]
    if name == "build" and not run.args.dry_run:
        out["goal_under_120_s"] = r["returncode"] == 0 and r["seconds"] < 120
    return out


def stage_study(run: Run, limit: float) -> dict[str, Any]:
    if not run.args.study_counts:
        return {
            "status": "not run: the original study's image counts are not recorded in this "
            "repository (Zhong et al. 2024, Supplementary Table S1); pass --study-counts "
            "TRAIN VALIDATION TEST"
        }
    study = dict(zip(("train", "validation", "test"), run.args.study_counts, strict=True))
    built = run.result["stages"].get("build", {})
    units = built.get("units") or []
    out: dict[str, Any] = {"counts": study}
    if not units or built.get("status") != "done":
        out["status"] = "not run: no complete build stage to predict its time from"
        return out
    predicted = predict_seconds(units, built["counts"], study)
    out["predicted_s"] = finite(predicted)
    if predicted > limit:
        out["status"] = f"not run: predicted {predicted:.0f} s, {limit:.0f} s left"
        return out
    extra = _with_counts(TINY_BUILD if run.args.dry_run else [], study)
    out.update(_timed_build(run, "study_scale", extra, limit))
    return out


def predict_seconds(
    units: list[dict[str, Any]], base: dict[str, int], counts: dict[str, int]
) -> float:
    """The build time at ``counts`` from the per-unit seconds of a build at ``base`` counts:
    training and the train/validation shards scale with those counts, everything else with
    the test count (first order: fixed costs are scaled too)."""
    total = 0.0
    for u in units:
        kind = u["kind"]
        if kind == "reference U-Net training":
            factor = (counts["train"] + counts["validation"]) / (base["train"] + base["validation"])
        elif kind in ("train", "validation"):
            factor = counts[kind] / base[kind]
        else:
            factor = counts["test"] / base["test"]
        total += (u["seconds"] or 0.0) * factor
    return total


# ----------------------------------------------------------------------------- 5. gpu tests


def stage_tests(run: Run, limit: float) -> dict[str, Any]:
    import re

    log = run.logs / "gpu_tests.log"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", "-q"]
    # One worker per file on a GPU host (their fixtures build packages on the CPU).
    cmd += ["-n", "0" if run.args.device == "cpu" else "3", "-rs", *GPU_TEST_FILES]
    r = run_logged(cmd, log, limit)
    text = log.read_text(errors="replace")
    counts = {
        word: int(n)
        for n, word in re.findall(r"(\d+) (passed|failed|skipped|deselected|error|errors)", text)
    }
    out: dict[str, Any] = {"files": list(GPU_TEST_FILES), "counts": counts, **r}
    failed = [line for line in text.splitlines() if line.startswith(("FAILED", "ERROR"))]
    if failed:
        out["failed"] = failed
    skipped = [line for line in text.splitlines() if line.startswith("SKIPPED")]
    if skipped:
        out["skipped_reasons"] = skipped
    if r["timed_out"]:
        out["status"] = f"stopped at its time limit after {r['seconds']:.0f} s"
    elif r["returncode"] not in (0, 5):  # 5: nothing collected
        out["status"] = "done"
        out["verdict"] = "failures"
    else:
        out["verdict"] = "pass" if counts.get("passed") else "all skipped (no CUDA device)"
    return out


# ----------------------------------------------------------------------------- report


def markdown(r: dict[str, Any]) -> str:
    env = r.get("environment", {})
    st = r["stages"]
    lines = [
        f"# benchmarks/gpu.py on {env.get('device_name', r['device'])}",
        "",
        f"`{r['command']}` — budget {r['budget_s']:.0f} s, used {r.get('elapsed_s', 0):.0f} s"
        + (" (dry run: tiny sizes)" if r["dry_run"] else ""),
        "",
    ]
    if env:
        lines += [
            "| | |",
            "|---|---|",
            *(f"| {k} | {v} |" for k, v in env.items()),
            "",
        ]
    th = st.get("throughput", {})
    if th.get("rows"):
        lines += [
            "## Throughput (best batch of the sweep; GB/s from the lower-bound traffic)",
            "",
            "| op | size | best batch | img/s | GB/s | of peak | CPU img/s (batch) | x CPU |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in th["rows"]:
            lines.append(
                f"| {row['op']} | {row['size']}² | {row.get('best_batch', '-')} | "
                f"{_f(row.get('img_s'))} | {_f(row.get('gbps'))} | "
                f"{_pct(row.get('fraction_of_peak'))} | {_f(row.get('cpu_img_s'))} "
                f"({row.get('cpu_batch', '-')}) | {_f(row.get('ratio_vs_cpu'))} |"
            )
        lines += ["", "Sweep (batch: img/s, % of peak):", ""]
        for row in th["rows"]:
            sweep = ", ".join(
                f"{s['batch']}: {_f(s.get('img_s'))} ({_pct(s.get('fraction_of_peak'))})"
                if "img_s" in s
                else f"{s['batch']}: {s.get('error')}"
                for s in row["sweep"]
            )
            lines.append(f"- {row['op']} {row['size']}²: {sweep}")
        goal = th.get("goal_30pct_of_peak_at_512")
        lines += ["", f"Goal (noise and blur at 512² >= 30 % of peak): {goal}", ""]
    if th.get("row_assembly"):
        lines += [
            "Rows of a build split (`sib_3`, mito, 256², clean images cached): the host's share",
            "(cell encoding and the Parquet write) says whether the writer bounds a GPU build.",
            "",
            "| batch | rows() s | of which encoding s | Parquet write s | rows/s | host share |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for a in th["row_assembly"]:
            if "error" in a:
                lines.append(f"| {a['batch']} | {a['error']} | | | | |")
                continue
            lines.append(
                f"| {a['batch']} | {_f(a['rows_s'])} | {_f(a['encode_s'])} | "
                f"{_f(a['write_s'])} | {_f(a['rows_per_s'])} | {_pct(a['host_share'])} |"
            )
        lines.append("")
    det = st.get("determinism", {})
    if det.get("device_vs_device"):
        lines += ["## Determinism", "", f"Build: `{det.get('build_args')}`", ""]
        lines += _compare_lines("two builds on the device", det["device_vs_device"])
        if isinstance(det.get("device_vs_cpu"), dict):
            lines += _compare_lines("device against CPU", det["device_vs_cpu"])
        strict = det.get("deterministic_algorithms", {})
        if strict.get("strict_vs_strict"):
            lines += _compare_lines(
                "two builds with torch.use_deterministic_algorithms(True)",
                strict["strict_vs_strict"],
            )
    for name, title in (("build", "Full default build"), ("study_scale", "Study scale")):
        b = st.get(name, {})
        if b.get("units"):
            lines += [
                f"## {title}",
                "",
                f"`{b['build_args']}`: {b['wall_s']:.0f} s wall ({b['status']})",
                "",
                "| unit kind | units | rows | seconds | s per row | share |",
                "|---|---:|---:|---:|---:|---:|",
            ]
            for u in b["units"]:
                per = f"{u['seconds'] / u['rows']:.3f}" if u["rows"] else "-"
                lines.append(
                    f"| {u['kind']} | {u['units']} | {u['rows']} | {u['seconds']:.1f} | {per} | "
                    f"{_pct(u['share'])} |"
                )
            lines.append("")
    t = st.get("gpu_tests", {})
    if "counts" in t:
        lines += ["## gpu-marked tests", "", f"{t.get('verdict', t['status'])}: {t['counts']}", ""]
    lines += ["## Stages", ""]
    lines += [f"- {k}: {v.get('status')} ({v.get('seconds', 0)} s)" for k, v in st.items()]
    if r["not_reached"]:
        lines += ["", "Not reached:", "", *(f"- {x}" for x in r["not_reached"])]
    return "\n".join(lines) + "\n"


def _compare_lines(title: str, c: dict[str, Any]) -> list[str]:
    head = f"- {title}: " + (
        "same bytes"
        if c["identical"]
        else f"{c['files_differ']} of {c['files_compared']} files differ"
    )
    out = [head]
    for rel, d in c.get("splits", {}).items():
        out.append(f"  - `{rel}`: " + ", ".join(f"{k} {v}" for k, v in d.items()))
    return [*out, ""]


def _f(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3g}" if abs(x) < 100 else f"{x:,.0f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def summary(r: dict[str, Any]) -> None:
    """The one-screen summary printed at the end."""
    env = r.get("environment", {})
    st = r["stages"]
    print(f"device: {env.get('device_name', r['device'])}; driver {env.get('driver')}; torch "
          f"{env.get('torch')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}")  # fmt: skip
    print(f"host CPU: {env.get('cpu')} ({env.get('cpu_cores')} cores)")
    print(f"bandwidth: spec {env.get('bandwidth_spec_gbps')} GB/s, measured copy "
          f"{env.get('bandwidth_copy_gbps')} GB/s; peak used: {env.get('peak_source')}")  # fmt: skip
    rows = st.get("throughput", {}).get("rows", [])
    if rows:
        print(f"{'op':18s} {'size':>5s} {'img/s':>10s} {'GB/s':>8s} {'peak':>7s} {'x CPU':>8s}")
        for row in rows:
            print(
                f"{row['op']:18s} {row['size']:5d} {_f(row.get('img_s')):>10s} "
                f"{_f(row.get('gbps')):>8s} {_pct(row.get('fraction_of_peak')):>7s} "
                f"{_f(row.get('ratio_vs_cpu')):>8s}"
            )
        print(f"goal 30 % of peak at 512²: {st['throughput'].get('goal_30pct_of_peak_at_512')}")
    for a in st.get("throughput", {}).get("row_assembly", []):
        if "host_share" in a:
            print(f"build rows, batch {a['batch']}: {_f(a['rows_per_s'])} rows/s, host share "
                  f"{_pct(a['host_share'])} (encoding + Parquet)")  # fmt: skip
    det = st.get("determinism", {})
    for key, title in (
        ("device_vs_device", "two device builds"),
        ("device_vs_cpu", "device vs CPU"),
    ):
        c = det.get(key)
        if isinstance(c, dict):
            verdict = "same bytes" if c["identical"] else f"{c['files_differ']} differ"
            print(f"determinism, {title}: {c['files_compared']} files, {verdict}")
    b = st.get("build", {})
    if "wall_s" in b:
        print(f"full default build: {b['wall_s']:.0f} s ({b['status']}); under 2 min: "
              f"{b.get('goal_under_120_s')}")  # fmt: skip
    t = st.get("gpu_tests", {})
    if "counts" in t:
        print(f"gpu tests: {t.get('verdict', t['status'])} {t['counts']}")
    s = st.get("study_scale", {})
    if s:
        print(f"study scale: {s.get('status')}")
    print(f"not reached: {r['not_reached'] or 'nothing'}")
    print(f"elapsed {r.get('elapsed_s')} s of {r['budget_s']:.0f} s; results in gpu.json, gpu.md")


# ----------------------------------------------------------------------------- main


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = _common.parser(__doc__)
    p.add_argument("--out", type=Path, required=True, help="folder for gpu.json, gpu.md, logs/")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda)")
    p.add_argument("--budget", type=float, default=420.0, help="seconds; stops cleanly before")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes: the whole script in CI")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="image sizes (256 512)")
    p.add_argument(
        "--batches", type=int, nargs="+", default=None,
        help="corruption batch sweep at the first size, divided by the pixel ratio at larger ones",
    )  # fmt: skip
    p.add_argument("--model-batches", type=int, nargs="+", default=None, help="model op sweep")
    p.add_argument("--cpu-batch", type=int, default=None, help="images per CPU measurement")
    p.add_argument("--repeats", type=int, default=None, help="timings are the best of these")
    p.add_argument("--study-counts", type=int, nargs=3, default=None, metavar=("T", "V", "E"))
    p.add_argument(
        "--build-args", default="", help="more arguments of the full build, e.g. '--batch-size 64'"
    )
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = p.parse_args(argv)
    tiny = args.dry_run
    args.device = args.device or ("cpu" if tiny else "cuda")
    args.sizes = args.sizes or ([16, 32] if tiny else [256, 512])
    args.batches = args.batches or ([1, 2] if tiny else [16, 64, 256, 1024])
    args.model_batches = args.model_batches or ([1, 2] if tiny else [1, 8, 32, 64])
    args.cpu_batch = args.cpu_batch or (1 if tiny else 4)
    args.repeats = args.repeats or (1 if tiny else 3)
    if args.budget <= RESERVE_S:
        p.error(f"--budget must be more than {RESERVE_S:g} s. Got {args.budget:g}")
    if min(args.sizes) < 16 or any(s % 16 for s in args.sizes):
        p.error(f"--sizes must be multiples of 16 (the U-Net's depth 4). Got {args.sizes}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from synthesis.runtime.device import resolve_device
    from synthesis.runtime.errors import InputError

    try:
        resolve_device(args.device)
    except InputError as exc:
        print(f"gpu.py: {exc}", file=sys.stderr)
        return 2
    if args.out.exists() and any(args.out.iterdir()):
        if not args.overwrite:
            print(
                f"gpu.py: {args.out} is not empty; pass --overwrite to replace it", file=sys.stderr
            )
            return 2
        shutil.rmtree(args.out)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    run = Run(args)
    run.save()
    run.stage("environment", lambda limit: stage_environment(run, limit))
    run.stage("throughput", lambda limit: stage_throughput(run, limit))
    run.stage("determinism", lambda limit: stage_determinism(run, limit))
    run.stage("build", lambda limit: stage_build(run, limit))
    run.stage("gpu_tests", lambda limit: stage_tests(run, limit))
    run.stage("study_scale", lambda limit: stage_study(run, limit))
    run.save()
    summary(run.result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Scale-out and the speed of one process (issue 13), each against a baseline in the same run.

1. **One process, attacks.** The attack family of one config (FGSM, I-FGSM and PGD at
   1, 2, 4, 8, 16 and 32 grey levels) on ``--attack-images`` test-sized images with the
   reference U-Net: the path before issue 13 (a batch at a time, one budget at a time,
   parameter gradients computed and dropped, contiguous layout) against the new one
   (:func:`synthesis.corruptions.attacks.attack_budgets`: shared gradient steps, frozen
   parameters, channels-last weights, one image at a time). Ratio = old / new.
2. **One process, training.** Steps of reference-U-Net training, the old numerics (oneDNN's
   1x1 head, torch's z-score, the process's threads) against the new (fixed-order head and
   z-score sums, 2 threads always).
3. **Builds.** The default build of one config, every family, as 1 process x 2 threads and
   as 2 processes x 1 thread (``--workers 2 --threads 1``), in one run: wall times, their
   ratio, whether the bytes match, and the per-unit cost table (from the 1-process build's
   log) from which a cluster's time can be predicted.

    python benchmarks/scale.py [--config mito] [--train 160 --validation 20 --test 40]
                               [--epochs 30] [--attack-images 4] [--parts builds attacks training] [--json]
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import _common
from _common import emit

BUDGETS = (1, 2, 4, 8, 16, 32)


# --------------------------------------------------------------------------- 1. attacks
def _old_attack(model, adu, mask, method: str, eps_grey: float, seeds):
    """The attack loop as it was before issue 13 (synthesis/corruptions/attacks.py at
    a90a58c): the whole batch at once, parameters left requiring gradients."""
    import torch

    from synthesis.corruptions.attacks import (
        _PROTOCOLS,
        GREY_LEVELS,
        _objective,
        minmax,
        pixel_loss,
        random_start,
    )

    protocol = _PROTOCOLS[method]
    step, n_iter = protocol.step(eps_grey), protocol.iterations(eps_grey)
    x0, lo, hi = minmax(adu.float())
    eps, alpha = eps_grey / GREY_LEVELS, step / GREY_LEVELS
    _, _, h, w = adu.shape
    delta = random_start(seeds, (1, h, w), eps) if protocol.random_start else 0.0
    x = (x0 + delta).clamp(0.0, 1.0)
    for t in range(n_iter):
        x = x.detach().requires_grad_(True)
        z = (x - x.mean((1, 2, 3), keepdim=True)) / x.std(
            (1, 2, 3), keepdim=True, correction=0
        ).clamp_min(1e-6)
        logits = model(z)
        (grad,) = torch.autograd.grad(_objective(method, logits, mask, pixel_loss, t, n_iter), x)
        x = x.detach() + alpha * grad.sign()
        x = torch.minimum(torch.maximum(x, x0 - eps), x0 + eps).clamp(0.0, 1.0)
    return torch.round(lo.view(-1, 1, 1, 1) + x * (hi - lo).view(-1, 1, 1, 1))


def bench_attacks(images: int) -> dict:
    import torch

    from synthesis.corruptions.attacks import attack_budgets, gradients_needed
    from synthesis.models.unet import UNet

    model = UNet(1, 1, 16, 4, seed=0).eval()
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(images, 1, 256, 256, generator=g) > 0.7
    adu = (torch.rand(images, 1, 256, 256, generator=g) * 300 + 100 + 900 * mask).round()
    seeds = torch.arange(images)

    def old() -> None:
        for method in ("fgsm", "ifgsm", "pgd"):
            for eps in BUDGETS:
                _old_attack(model, adu, mask, method, eps, seeds)

    def new() -> None:
        for method in ("fgsm", "ifgsm", "pgd"):
            attack_budgets(
                model, adu.int(), mask, method=method, budgets=list(BUDGETS),
                seeds=[seeds + 1000 * i for i in range(len(BUDGETS))],
            )  # fmt: skip

    new()  # warm-up (oneDNN primitive caches)
    t0 = time.perf_counter()
    old()
    t_old = time.perf_counter() - t0
    t0 = time.perf_counter()
    new()
    t_new = time.perf_counter() - t0
    grads_old = sum(_old_grads(m) for m in ("fgsm", "ifgsm", "pgd"))
    grads_new = sum(gradients_needed(m, list(BUDGETS)) for m in ("fgsm", "ifgsm", "pgd"))
    return {
        "images": images,
        "old_s_per_image": t_old / images,
        "new_s_per_image": t_new / images,
        "speedup": t_old / t_new,
        "gradients_per_image_old": grads_old,
        "gradients_per_image_new": grads_new,
    }


def _old_grads(method: str) -> int:
    from synthesis.levels import ATTACKS

    return sum(ATTACKS[method].iterations(e) for e in BUDGETS)


# --------------------------------------------------------------------------- 2. training
def bench_training(steps: int) -> dict:
    import torch

    from builder.assembly.reference import REFERENCE
    from synthesis.models.training import segmentation_loss
    from synthesis.models.unet import UNet
    from synthesis.normalize import zscore
    from synthesis.thread_invariant import threads

    class OldHead(UNet):
        def _head(self, x: torch.Tensor) -> torch.Tensor:  # oneDNN's 1x1 convolution
            return self.head(x)

    g = torch.Generator().manual_seed(0)
    x = torch.rand(REFERENCE.batch_size, 1, REFERENCE.crop, REFERENCE.crop, generator=g) * 1000
    y = torch.rand(x.shape, generator=g) > 0.7

    def run(model: torch.nn.Module, norm) -> float:
        opt = torch.optim.Adam(model.parameters(), lr=REFERENCE.lr)
        model.train()
        t0 = 0.0
        for i in range(steps + 1):
            if i == 1:
                t0 = time.perf_counter()
            loss = segmentation_loss(model(norm(x)), y, REFERENCE.loss)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return (time.perf_counter() - t0) / steps

    def old_z(t: torch.Tensor) -> torch.Tensor:
        m = t.mean((1, 2, 3), keepdim=True)
        return (t - m) / t.std((1, 2, 3), keepdim=True, correction=0).clamp_min(1e-6)

    t_old = run(OldHead(1, 1, 16, 4, seed=0), old_z)
    with threads(REFERENCE.threads):
        t_new = run(UNet(1, 1, 16, 4, seed=0), zscore)
    return {"old_s_per_step": t_old, "new_s_per_step": t_new, "speedup": t_old / t_new}


# --------------------------------------------------------------------------- 3. builds
_UNIT = re.compile(r"rank \d+: (\w+)/([\w+-]+?)-(\d+)-of-\d+ done in ([\d.]+) s \((\d+) rows\)")
_EVAL = re.compile(r"rank \d+: evaluation of (\w+) done in ([\d.]+) s")


def _kind(label: str) -> str:
    if label == "model":
        return "reference U-Net training"
    if label.endswith("-attacks"):
        return label.replace("-attacks", " (6 budgets)")
    return re.sub(r"_\d+$", "", label)


def build(out: Path, args, extra: list[str]) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "builder.cli", "build", str(out), "--config", args.config,
           "--train", str(args.train), "--validation", str(args.validation), "--test",
           str(args.test), "--device", "cpu", *extra]  # fmt: skip
    if args.epochs:
        cmd += ["--train-epochs", str(args.epochs)]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "TQDM_DISABLE": "1"}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=_common.ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"build failed: {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return wall, r.stderr


def unit_table(log: str) -> list[dict]:
    rows: dict[str, dict] = defaultdict(lambda: {"units": 0, "rows": 0, "seconds": 0.0})
    for _, label, _, seconds, n in _UNIT.findall(log):
        r = rows[_kind(label)]
        r["units"] += 1
        r["rows"] += int(n)
        r["seconds"] += float(seconds)
    for _, seconds in _EVAL.findall(log):
        r = rows["reference evaluation (every split)"]
        r["units"] += 1
        r["seconds"] += float(seconds)
    total = sum(r["seconds"] for r in rows.values())
    table = [
        {"kind": k, **r, "share": r["seconds"] / total if total else 0.0}
        for k, r in sorted(rows.items(), key=lambda kv: -kv[1]["seconds"])
    ]
    return table


def tree_hash(out: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(out.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(out).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def bench_builds(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="fbc-scale-") as tmp:
        one, two = Path(tmp) / "one", Path(tmp) / "two"
        wall1, log1 = build(one, args, ["--threads", "2"])
        wall2, _ = build(two, args, ["--workers", "2", "--threads", "1"])
        same = tree_hash(one) == tree_hash(two)
    return {
        "one_process_2_threads_s": wall1,
        "two_processes_1_thread_s": wall2,
        "speedup": wall1 / wall2,
        "identical_bytes": same,
        "units": unit_table(log1),
    }


# --------------------------------------------------------------------------- report
def report(r: dict) -> None:
    print(f"machine: {r['machine']}")
    a = r.get("attacks")
    if a:
        print(
            f"attacks, one process ({a['images']} images 256x256, FGSM/I-FGSM/PGD x 6 budgets): "
            f"old {a['old_s_per_image']:.1f} s/image, new {a['new_s_per_image']:.1f} s/image, "
            f"speed-up {a['speedup']:.2f}x (gradients per image {a['gradients_per_image_old']} -> "
            f"{a['gradients_per_image_new']})"
        )
    t = r.get("training")
    if t:
        print(
            f"training, one process: old {t['old_s_per_step'] * 1000:.0f} ms/step, new "
            f"{t['new_s_per_step'] * 1000:.0f} ms/step, speed-up {t['speedup']:.2f}x"
        )
    b = r.get("builds")
    if not b:
        return
    print(
        f"default build ({r['build_args']}): 1 process x 2 threads {b['one_process_2_threads_s']:.0f} s, "
        f"2 processes x 1 thread {b['two_processes_1_thread_s']:.0f} s, ratio {b['speedup']:.2f}x, "
        f"identical bytes: {b['identical_bytes']}"
    )
    print("\n| unit kind | units | rows | seconds (1 process) | s per row | share |")
    print("|---|---:|---:|---:|---:|---:|")
    for u in b["units"]:
        per_row = f"{u['seconds'] / u['rows']:.2f}" if u["rows"] else "-"
        print(
            f"| {u['kind']} | {u['units']} | {u['rows']} | {u['seconds']:.1f} | {per_row} | "
            f"{u['share'] * 100:.1f} % |"
        )


def main() -> None:
    p = _common.parser(__doc__)
    p.add_argument("--config", default="mito")
    p.add_argument("--train", type=int, default=160)
    p.add_argument("--validation", type=int, default=20)
    p.add_argument("--test", type=int, default=40)
    p.add_argument("--epochs", type=int, default=None, help="reference epochs (default 30)")
    p.add_argument("--attack-images", type=int, default=4)
    p.add_argument("--train-steps", type=int, default=20)
    p.add_argument(
        "--parts", nargs="+", default=["builds", "attacks", "training"],
        choices=["builds", "attacks", "training"], help="what to run (builds first)",
    )  # fmt: skip
    _common.add_json(p)
    args = p.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(2)
    result = {
        "machine": _common.machine("cpu", threads=True, omp=True),
        "build_args": f"{args.config}, {args.train}/{args.validation}/{args.test}, "
        f"epochs {args.epochs or 30}, every family",
    }
    if "builds" in args.parts:
        result["builds"] = bench_builds(args)
    if "attacks" in args.parts:
        result["attacks"] = bench_attacks(args.attack_images)
    if "training" in args.parts:
        result["training"] = bench_training(args.train_steps)
    emit(result, args.json, report)


if __name__ == "__main__":
    main()

"""The cost of thread-count invariance: what each way of making model math give the same bits
at any thread count costs, against the unpinned code in the same run.

Model math on CPU is one PGD-10 attack of one 256 x 256 image (ε 8, the build's attack unit:
one image at a time) and one training step (batch 8, 128 x 128 crops) of the reference U-Net.
Each way runs in its own processes (the settings are read when torch loads):

- ``unpinned``: the process's own thread count (the code before issue 21; not invariant);
- ``pinned``: :data:`synthesis.thread_invariant.MODEL_THREADS` threads whatever the process has (the
  fix kept);
- ``pinned-1``: one thread always (the other fixed count);
- ``mkl-cnr``: oneDNN off (convolutions through ATen's im2col and MKL's GEMM) with MKL's
  conditional numerical reproducibility in strict mode on its SSE2 branch
  (``MKL_CBWR=COMPATIBLE,STRICT``), invariant by MKL's contract rather than by a fixed count;
- ``avx2-cap``: pinned, with oneDNN and ATen capped at AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``,
  ``ATEN_CPU_CAPABILITY=avx2``): what an attempt at the bits of an AVX2 machine costs on a
  bigger one.

Two situations: one process of 2 threads, and 2 worker processes of 1 thread each running at
the same time (``build --workers 2``). Times are the best of ``--repeats`` rounds; each ratio
is against ``unpinned`` in the same situation and round.

    python benchmarks/determinism.py [--repeats 2] [--json]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import _common
from _common import emit

#: Environment and thread pin of each way (None: the process's own threads).
WAYS: dict[str, tuple[dict[str, str], int | None]] = {
    "unpinned": ({}, None),
    "pinned": ({}, 0),
    "pinned-1": ({}, 1),
    "mkl-cnr": ({"MKL_CBWR": "COMPATIBLE,STRICT"}, None),
    "avx2-cap": ({"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}, 0),
}
_CLEARED = ("MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")


def child(way: str, threads: int, repeats: int) -> dict[str, float]:
    """Time the attack and the training step in this process (run with ``--child``)."""
    import torch

    torch.set_num_threads(threads)
    import synthesis.thread_invariant as invariant
    from synthesis import rng
    from synthesis.corruptions.attacks import attack
    from synthesis.models.training import segmentation_loss
    from synthesis.models.unet import UNet
    from synthesis.normalize import zscore

    pin = WAYS[way][1]
    invariant.MODEL_THREADS = threads if pin is None else (pin or invariant.MODEL_THREADS)
    if way == "mkl-cnr":
        torch.backends.mkldnn.enabled = False
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(8, 1, 256, 256, generator=g) > 0.7
    noise = rng.normal(torch.arange(8), (1, 256, 256), stream=7)
    adu = torch.round(300 + 800 * mask.float() + 120 * noise).clamp(0, 65535)
    model = UNet(seed=1)

    def attack_one() -> None:
        attack(model, adu[:1].int(), mask[:1], method="pgd", eps_grey=8, seeds=torch.arange(1))

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = zscore(adu[:, :, :128, :128]), mask[:, :, :128, :128]

    def train_step() -> None:
        model.train()
        with invariant.model_threads("cpu"):
            loss = segmentation_loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    attack_one()
    train_step()
    return {
        "attack_s": _common.best_of(attack_one, repeats),
        "train_step_s": _common.best_of(train_step, repeats),
    }


def _launch(way: str, threads: int, repeats: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    env |= {"OMP_WAIT_POLICY": "PASSIVE", **WAYS[way][0]}
    cmd = [sys.executable, __file__, "--child", way, str(threads), str(repeats)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)


def _collect(procs: list[subprocess.Popen]) -> list[dict[str, float]]:
    out = []
    for p in procs:
        stdout, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"a timed child failed (exit {p.returncode})")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        way, threads, repeats = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        print(json.dumps(child(way, threads, repeats)))
        return 0
    p = _common.parser(__doc__)
    _common.add_repeats(p, 2)
    _common.add_json(p)
    args = p.parse_args()
    t0 = time.perf_counter()
    best: dict[str, dict[str, dict[str, float]]] = {"one process x 2": {}, "2 workers x 1": {}}
    for _ in range(args.repeats):
        for way in WAYS:
            timed = {
                "one process x 2": _collect([_launch(way, 2, 1)])[0],
                # Two workers at once: each reports its own times; the slower one counts.
                "2 workers x 1": {
                    k: max(r[k] for r in rs)
                    for rs in [_collect([_launch(way, 1, 1), _launch(way, 1, 1)])]
                    for k in rs[0]
                },
            }
            for situation, t in timed.items():
                old = best[situation].get(way, {})
                best[situation][way] = {k: min(v, old.get(k, v)) for k, v in t.items()}
    result = {
        "machine": _common.machine("cpu"),
        "cpu_capability": _capability(),
        "repeats": args.repeats,
        "seconds": round(time.perf_counter() - t0, 1),
        "situations": {
            situation: {
                way: {
                    **{k: round(v, 3) for k, v in t.items()},
                    **{f"{k}_vs_unpinned": round(v / ways["unpinned"][k], 2) for k, v in t.items()},
                }
                for way, t in ways.items()
            }
            for situation, ways in best.items()
        },
    }
    emit(result, args.json, report)
    return 0


def _capability() -> str:
    import torch

    return torch.backends.cpu.get_cpu_capability()


def report(result: dict) -> None:
    print(f"machine: {result['machine']} (ATen {result['cpu_capability']} kernels)")
    print(f"best of {result['repeats']} rounds, {result['seconds']} s in all")
    for situation, ways in result["situations"].items():
        print(f"{situation}:")
        for way, t in ways.items():
            print(
                f"  {way:<9} PGD-10 attack {t['attack_s']:.2f} s/image "
                f"({t['attack_s_vs_unpinned']:.2f}x unpinned), training step "
                f"{t['train_step_s']:.3f} s ({t['train_step_s_vs_unpinned']:.2f}x)"
            )


if __name__ == "__main__":
    raise SystemExit(main())

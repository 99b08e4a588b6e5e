"""PGD-10 throughput on the reference U-Net (256x256), batched vs a naive per-image loop.

Measures, in the same run and on the same images:

- baseline: a textbook per-image PGD loop (one image at a time, ``loss.backward()`` on the
  batch-mean loss, so parameter gradients are computed and zeroed every step, as most
  research code and torchattacks-style implementations do);
- :func:`synthesis.corruptions.attacks.attack` with ``method="pgd"`` at several batch sizes (input
  gradients only via ``torch.autograd.grad``, rounding/budget in ADU included).

Also reports the reference model's training throughput (images/s per optimiser step, at the
128 px training crop and at full 256 px) as information for ``build``'s training time.
Timings are the best of ``--repeats`` interleaved runs (the machine is shared).

    python benchmarks/attacks.py [--device cuda] [--batch-sizes 1 4 8] [--images 8] [--json]
"""

from __future__ import annotations

import _common
import torch
import torch.nn.functional as F
from _common import best_of, emit, interleaved

from synthesis import rng
from synthesis.corruptions.attacks import attack, minmax
from synthesis.models.training import segmentation_loss
from synthesis.models.unet import UNet
from synthesis.normalize import zscore


def images(n: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer ADU images of bright disks in Poisson-like noise (range ~1500 ADU)."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    cy, cx = (torch.rand(n, 12, 1, 1, generator=g) * size for _ in range(2))
    r = 4 + torch.rand(n, 12, 1, 1, generator=g) * size / 16
    mask = (((yy - cy) ** 2 + (xx - cx) ** 2) < r**2).any(1, keepdim=True)
    noise = rng.normal(torch.arange(n), (1, size, size), stream=7)
    adu = torch.round(300 + 800 * mask.float() + 120 * noise).clamp(0, 65535)
    return adu.to(torch.int32).to(device), mask.to(device)


def naive_pgd(model: torch.nn.Module, adu: torch.Tensor, mask: torch.Tensor, eps_grey: float):
    """Per-image PGD-10 (step 2 grey levels, random start) written the usual way."""
    out = []
    for i in range(adu.shape[0]):
        x0, lo, hi = minmax(adu[i : i + 1].float())
        eps, alpha = eps_grey / 255, 2 / 255
        x = (x0 + torch.empty_like(x0).uniform_(-eps, eps, generator=GEN[adu.device])).clamp(0, 1)
        for _ in range(10):
            x = x.detach().requires_grad_(True)
            loss = F.binary_cross_entropy_with_logits(model(zscore(x)), mask[i : i + 1].float())
            model.zero_grad()
            loss.backward()
            x = x.detach() + alpha * x.grad.sign()
            x = torch.min(torch.max(x, x0 - eps), x0 + eps).clamp(0, 1)
        out.append(torch.round(lo + x * (hi - lo)))
    model.zero_grad(set_to_none=True)
    return torch.cat(out)


GEN: dict[torch.device, torch.Generator] = {}


def main() -> int:
    p = _common.parser(__doc__)
    _common.add_device(p, "cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--eps", type=float, default=8.0)
    _common.add_repeats(p, 2)
    _common.add_threads(p)
    _common.add_json(p)
    args = p.parse_args()
    _common.set_threads(args)

    device = torch.device(args.device)
    GEN[device] = torch.Generator(device=device).manual_seed(0)
    model = UNet().to(device).eval()
    adu, mask = images(args.images, args.size, device)
    seeds = torch.arange(args.images, device=device)

    # Warm-up (allocator, oneDNN/cuDNN plans), then the timed runs.
    attack(model, adu[:1], mask[:1], method="pgd", eps_grey=args.eps, seeds=seeds[:1])
    naive_pgd(model, adu[:1], mask[:1], args.eps)
    runs = {"baseline": lambda: naive_pgd(model, adu, mask, args.eps)}
    for bs in args.batch_sizes:

        def run(bs: int = bs) -> None:
            for s in range(0, args.images, bs):
                attack(
                    model,
                    adu[s : s + bs],
                    mask[s : s + bs],
                    method="pgd",
                    eps_grey=args.eps,
                    seeds=seeds[s : s + bs],
                )

        runs[str(bs)] = run
    best = interleaved(runs, args.repeats, device)
    t_base = best.pop("baseline")
    results = {
        "machine": _common.machine(device, threads=True),
        "device": str(device),
        "image_size": args.size,
        "images": args.images,
        "eps_grey": args.eps,
        "repeats": args.repeats,
        "model_parameters": sum(p.numel() for p in model.parameters()),
        "baseline_per_image_loop_img_s": args.images / t_base,
        "batched": {
            bs: {"img_s": args.images / t, "speedup_vs_baseline": t_base / t}
            for bs, t in best.items()
        },
    }

    # Training throughput of the reference model (one Adam step per batch of 8).
    train = {}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for crop in (128, args.size):
        x = zscore(adu[:8, :, :crop, :crop].float())
        y = mask[:8, :, :crop, :crop]

        def step(x: torch.Tensor = x, y: torch.Tensor = y) -> None:
            loss = segmentation_loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step()
        train[str(crop)] = x.shape[0] / best_of(step, args.repeats, device)
    results["train_img_s_by_crop"] = train
    emit(results, args.json, report)
    return 0


def report(results: dict) -> None:
    n, size = results["images"], results["image_size"]
    print(f"machine: {results['machine']}")
    print(
        f"PGD-10 on the reference U-Net ({results['model_parameters']:,} parameters), "
        f"{n} images of {size}x{size}, eps {results['eps_grey']:g} grey levels"
    )
    print(
        f"  baseline (naive per-image loop): {results['baseline_per_image_loop_img_s']:.3f} img/s"
    )
    for bs, r in results["batched"].items():
        print(
            f"  synthesis.corruptions.attacks.attack, batch {bs:>2}: {r['img_s']:.3f} img/s "
            f"({r['speedup_vs_baseline']:.2f}x baseline)"
        )
    for crop, v in results["train_img_s_by_crop"].items():
        print(f"  training step, batch 8, {crop}x{crop}: {v:.2f} img/s")


if __name__ == "__main__":
    raise SystemExit(main())

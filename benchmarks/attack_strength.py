"""How strong are the spec's attacks? The reference model under the protocol and under longer PGD.

The benchmark's attacks follow the authors' protocol (``docs/definitions.md#attacks``: PGD is
10 steps of 2 grey levels from a uniform random start). This script attacks the shipped
reference U-Net of a built package on its ``test`` images with that protocol and with PGD
runs of many small steps, so a robust result can be told apart from a weak attack: if 100-200
steps do not lower IoU much further than the protocol, the model itself is robust at that
budget.

    python benchmarks/attack_strength.py PACKAGE [--config mito] [--limit 4] [--threads 1]
"""

from __future__ import annotations

import time

import _common
import torch

import fluorobench_c
from builder.evaluation.model_loading import load_model_spec
from synthesis.corruptions.attacks import attack
from synthesis.metrics import SegmentationScores, logits_to_mask
from synthesis.normalize import zscore

#: (eps grey levels, step grey levels, iterations, random start); the first is the protocol.
RUNS = (
    (8, 2.0, 10, True),
    (8, 1.0, 10, False),
    (8, 0.5, 100, True),
    (8, 0.25, 200, False),
    (16, 2.0, 10, True),
    (16, 0.5, 100, True),
    (32, 2.0, 10, True),
    (32, 1.0, 100, True),
)


def main(argv: list[str] | None = None) -> None:
    parser = _common.parser(__doc__)
    parser.add_argument("package", help="a built package folder")
    parser.add_argument("--config", default="mito")
    parser.add_argument("--limit", type=int, default=4, help="test images to attack")
    _common.add_threads(parser)
    args = parser.parse_args(argv)
    _common.set_threads(args)
    info = load_model_spec(None, args.package, args.config, torch.device("cpu"))
    model = info.model
    rows = list(fluorobench_c.load(args.package, args.config, "test"))[: args.limit]
    batch = fluorobench_c.collate(rows)
    adu = batch["image"].round().to(torch.int32)
    mask = batch["mask"] != 0
    seeds = torch.arange(len(rows))

    def iou(images: torch.Tensor) -> float:
        scores = SegmentationScores()
        with torch.no_grad():
            scores.update(logits_to_mask(model(zscore(images.float()))), mask)
        return float(scores.compute()["iou"])

    clean = iou(adu)
    print(f"{args.config}: {len(rows)} test images, IoU {clean:.3f} unattacked")
    print("eps  step  iterations  random_start  IoU    robustness  seconds")
    for eps, step, iterations, start in RUNS:
        t0 = time.perf_counter()
        res = attack(
            model,
            adu,
            mask,
            method="pgd",
            eps_grey=eps,
            seeds=seeds,
            step_grey=step,
            iterations=iterations,
            random_init=start,
        )
        value = iou(res.adu)
        print(
            f"{eps:<4} {step:<5} {iterations:<11} {start!s:<13} {value:.3f}  "
            f"{100 * value / clean:10.1f}  {time.perf_counter() - t0:7.1f}"
        )


if __name__ == "__main__":
    main()

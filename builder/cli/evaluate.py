"""``fluorobench-c evaluate``: stream a benchmark into a model; IoU, Dice, robustness, the
structure metrics (clDice and Betti errors, or AP/F1/PQ; HD95, NSD), the worst case over
attacks, the mCE against the reference model and, with ``--consistency``, consistency."""

from __future__ import annotations

import argparse
from pathlib import Path

from builder.cli import common, launch
from builder.evaluation.scoring import GRADIENT_FREE_METHODS, METRIC_SETS, WHITEBOX_METHODS
from synthesis.levels import CONFIGS
from synthesis.normalize import NORMALIZATIONS


def add_parser(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--data", required=True, help="package folder or Hub repo id")
    p.add_argument("--config", required=True, choices=list(CONFIGS), help="the config")
    p.add_argument(
        "--model",
        default=None,
        help="TorchScript file, .safetensors U-Net, module.py:factory, a U-Net model folder or Hub model id (ORG/NAME), "
        "or a bioimage.io model (rdf.yaml, a package zip, or a folder holding rdf.yaml: its own "
        "axes, pre- and postprocessing; needs the bioimageio extra) "
        "(default: the package's reference U-Net)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="bioimage.io models: foreground where the output is > this (default: 0.5 for a "
        "probability, the model's own binarize threshold, > 0 for labels)",
    )
    p.add_argument(
        "--channel",
        default=None,
        help="bioimage.io models: the output channel that is the foreground, by index or name "
        "(needed when the output has several)",
    )
    common.add_splits(
        p, "splits, e.g. 'test snr_1' or 'test,snr_1' (default: every split but train/validation)"
    )
    p.add_argument(
        "--attacks",
        action=common.ListAction,
        default=None,
        metavar="METHOD:EPS",
        help="white-box attacks on the model, e.g. 'pgd:8 segpgd:8 square:8' "
        f"({', '.join(WHITEBOX_METHODS)}; {', '.join(GRADIENT_FREE_METHODS)} is gradient-free); "
        "two or more at one EPS also give the worst case per image over them",
    )
    p.add_argument(
        "--square-queries",
        type=common.counts,
        default=None,
        metavar="N",
        help="the Square attack's query budget: model evaluations per image (default 100)",
    )
    p.add_argument(
        "--objects",
        default=None,
        metavar="FILE.py:FUNCTION",
        help="nucleus object metrics: your post-processing, a function from a bool (H, W) "
        "prediction to integer instance labels (default: its 8-connected components)",
    )
    p.add_argument(
        "--metrics",
        default="all",
        choices=list(METRIC_SETS),
        help="all: IoU and Dice, the structure metrics (clDice and Betti errors for er/mito; "
        "AP, F1, PQ for nucleus; HD95, NSD), the worst case over attacks and the mCE against "
        "the package's reference model; iou: IoU and Dice only (default: all)",
    )
    p.add_argument(
        "--normalize",
        default="zscore",
        choices=list(NORMALIZATIONS),
        help="model input: per-image z-score (as the reference models), min-max or none",
    )
    p.add_argument(
        "--consistency",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also score consistency, which needs no labels: the IoU of the model's prediction "
        "on each degraded row against its own prediction on the same row undegraded (test, or "
        "real for the real-image families) (default: on when the config's masks are "
        "pseudo-masks)",
    )
    common.add_device(p)
    p.add_argument("--batch-size", type=common.counts, default=16, help="images per batch")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder for results.json, results.md, robustness.png and .eval_results/",
    )
    p.add_argument(
        "--benchmark-id",
        default=None,
        metavar="ORG/NAME",
        help="the benchmark's Hub dataset id named in .eval_results/ (default: --data when it "
        "is a Hub id; a local --data without it writes no .eval_results/)",
    )
    launch.add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from builder import distributed
    from builder.evaluation import evaluate, results_markdown, write_eval_results, write_reports
    from builder.evaluation.scoring import parse_attacks
    from synthesis.runtime.device import resolve_device

    if args.workers > 1 and not distributed.launched():
        return launch.spawn(run, args)  # rank 0 writes and prints the results
    if args.benchmark_id is not None:
        from builder.package.publish import check_repo_id

        check_repo_id(args.benchmark_id, "--benchmark-id")
    attacks = parse_attacks(args.attacks)
    objects = None
    if args.objects is not None:
        from builder.evaluation.model_loading import load_callable

        objects, _ = load_callable(args.objects, "--objects")
    device = resolve_device(args.device)
    with distributed.join(
        device_type=device.type, timeout_s=args.rendezvous_timeout, job="evaluate"
    ) as ctx:
        device = ctx.device(device)
        model = args.model
        if args.threshold is not None or args.channel is not None:
            from builder.evaluation.model_loading import load_model_spec

            model = load_model_spec(
                model,
                args.data,
                args.config,
                device,
                threshold=args.threshold,
                channel=args.channel,
            )
        ctx.agree("arguments", {k: str(v) for k, v in sorted(vars(args).items()) if k != "func"})
        results = evaluate(
            args.data,
            args.config,
            model=model,
            splits=args.splits,
            attacks=attacks,
            normalize=args.normalize,
            device=str(device),
            batch_size=args.batch_size,
            progress=common.progress,
            ctx=ctx,
            consistency=args.consistency,
            metrics=args.metrics,
            square_queries=args.square_queries,
            objects=objects,
        )
        ctx.leave()
    if not ctx.is_main:
        return 0  # rank 0 writes and reports
    write_reports(args.out, results)
    benchmark = args.benchmark_id or (None if Path(args.data).exists() else args.data)
    print(results_markdown(results))
    if benchmark is not None:
        path = write_eval_results(args.out, results, benchmark)
        print(f"Hub evaluation results for {benchmark}: {path} (copy into the model repo)")
    print(f"results written to {args.out}")
    return 0

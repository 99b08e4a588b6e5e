"""real_snr bias: the realised SNR of the real_snr_K rows against K, before and after the
per-row solve on the stored image (issue 21), on the shared BBBC038 test tiles and on seeded
synthetic tiles with a known native noise.

*Before* is the expected-value solve the splits used until issue 21, kept here verbatim
(:func:`expected_value_solve`): one ``c`` from ``(S/K)^2 = (1 + c) v(mu_F) + q^2/12``, noise
of variance ``c v(xbar)`` drawn once and stored. *After* is
:func:`synthesis.corruptions.real.add_noise_to_snr`. Both draw the same normals (stream 110,
the builder's ``real-noise`` seed of each id for ``--seed``), and both are scored with what a
row records, :func:`synthesis.corruptions.real.realised_snr` of the stored image.

Per level: rows, mean error ``snr_measured / K - 1`` (the bias), its standard deviation, the
largest ``|error|`` and the rows beyond 5% (the old per-row tolerance) and beyond
:data:`~synthesis.corruptions.real.SNR_TOLERANCE`. For *before*, the bias the old solve
predicts from its one systematic term: the noise variance is ``c v(xbar)`` with ``xbar`` a
3x3 mean, which on the rim of every nucleus mixes in background, so ``mean_F v(xbar) <
v(mu_F)``. ``--noise-seeds N`` repeats with N noise seeds per row (other than the builder's)
to separate that expectation from one draw. The synthetic part (``--synthetic N`` tiles)
also scores the SNR against the *true* native noise, which shows the native-noise
estimator's own bias.

    python benchmarks/real_snr.py [--data DIR] [--images 40] [--seed 0] [--noise-seeds 0]
                                  [--synthetic 8] [--threads N] [--json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import _common
import numpy as np
import torch

from synthesis import rng
from synthesis.corruptions import real
from synthesis.levels import SNR_LEVELS
from synthesis.rng import derive_seed, streams


def expected_value_solve(
    x: torch.Tensor, m: torch.Tensor, fit: real.NoiseFit, snr: float, seeds: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The real_snr construction before issue 21 (same outputs as ``add_noise_to_snr``)."""
    snr_native, native_var, extra, kept = real._solve(x, m, fit, snr)
    c = torch.where(kept, extra / native_var.clamp_min(1e-12), torch.zeros_like(extra))
    var_add = c.view(-1, 1, 1, 1) * fit.variance(real._local_mean(x))
    q = fit.quant_step
    offset = torch.ceil(4 * var_add.flatten(1).amax(1).sqrt() / q) * q
    n = rng.normal(seeds, tuple(x.shape[1:]), streams.REAL_NOISE).to(torch.float64)
    noisy = real._store(x + offset.view(-1, 1, 1, 1) + var_add.sqrt() * n, q)
    out = torch.where(kept.view(-1, 1, 1, 1), noisy, x)
    measured = torch.where(kept, real.realised_snr(out, x, m, fit, offset), snr_native)
    return out, {"snr_measured": measured, "added_scale": c, "kept": kept, "offset": offset}


def rim_bias(x: torch.Tensor, m: torch.Tensor, fit: real.NoiseFit, snr: float) -> torch.Tensor:
    """``(B,)`` the relative SNR error the old solve expects from the 3x3 mean on the rim:
    ``S / sqrt(v(mu_F) + c mean_F v(xbar) + q^2/12) / K - 1``."""
    _, native_var, extra, _ = real._solve(x, m, fit, snr)
    s, _ = real._contrast(x, m)
    c = extra / native_var.clamp_min(1e-12)
    fg = m.flatten(1).to(torch.float64)
    v_bar = (fit.variance(real._local_mean(x)).flatten(1) * fg).sum(1) / fg.sum(1)
    return s / (native_var + c * v_bar + fit.quant_step.square() / 12).sqrt() / snr - 1


def _stats(err: list[float]) -> dict:
    e = np.asarray(err, dtype=np.float64)
    if e.size == 0:
        return {"rows": 0}
    return {
        "rows": int(e.size),
        "mean": float(e.mean()),
        "sd": float(e.std(ddof=1)) if e.size > 1 else 0.0,
        "max_abs": float(np.abs(e).max()),
        "over_5pct": int((np.abs(e) > 0.05).sum()),
        "over_tolerance": int((np.abs(e) > real.SNR_TOLERANCE).sum()),
    }


def score(
    x: torch.Tensor,
    m: torch.Tensor,
    fit: real.NoiseFit,
    seeds: list[torch.Tensor],
    true_var: torch.Tensor | None = None,
) -> dict:
    """Per level: before/after error statistics over every (tile, seed) row; with
    ``true_var`` (the true native variance at the foreground mean) also the error of the SNR
    against the true native noise."""
    out = {}
    for level in SNR_LEVELS:
        k = float(level)
        errs: dict[str, list[float]] = {"before": [], "after": [], "rim": []}
        errs |= {"before_true": [], "after_true": []} if true_var is not None else {}
        for s in seeds:
            for name, fn in (("before", expected_value_solve), ("after", real.add_noise_to_snr)):
                img, p = fn(x, m, fit, k, s)
                kept = p["kept"]
                errs[name] += (p["snr_measured"][kept] / k - 1).tolist()
                if true_var is not None:
                    s_out, _ = real._contrast(img, m)
                    fg = m.flatten(1).to(torch.float64)
                    d2 = (img - x - p["offset"].view(-1, 1, 1, 1)).flatten(1).square()
                    power = (d2 * fg).sum(1) / fg.sum(1)
                    snr_true = s_out / (true_var + power).sqrt()
                    errs[f"{name}_true"] += (snr_true[kept] / k - 1).tolist()
        kept = real.reachable(x, m, fit, k)
        errs["rim"] = rim_bias(x, m, fit, k)[kept].tolist()
        out[str(level)] = {name: _stats(e) for name, e in errs.items()}
    return out


def bbbc038(args: argparse.Namespace) -> dict:
    from synthesis.groundtruth.sources import SPLITS, open_source

    counts = {s: 1 for s in SPLITS} | {"test": args.images}
    src = open_source(args.data, "nucleus", seed=args.seed, counts=counts)
    ids = src.ids("test")
    items = src.load(ids)
    x = torch.from_numpy(np.stack([it.image.astype(np.float64) for it in items]))[:, None]
    m = torch.from_numpy(np.stack([np.asarray(it.mask) != 0 for it in items]))[:, None]
    # One fit per tile, as the builder does (batch-invariant: same numbers).
    fit = real.estimate_noise(x, m, quant_step=1.0)
    builder = [derive_seed(args.seed, "nucleus", i, "real-noise") for i in ids]
    seeds = [torch.tensor(builder, dtype=torch.int64)]
    for j in range(args.noise_seeds):
        seeds.append(torch.tensor([derive_seed(v, "bench", j) for v in builder]))
    one = (x[:1], m[:1], real.NoiseFit(fit.a[:1], fit.b[:1], fit.quant_step[:1], fit.samples[:1]))
    timing = _common.interleaved(
        {
            "before": lambda: expected_value_solve(*one, 3.0, seeds[0][:1]),
            "after": lambda: real.add_noise_to_snr(*one, 3.0, seeds[0][:1]),
        },
        args.repeats,
    )
    return {
        "tiles": len(ids),
        "foreground_px": {
            "min": int(m.flatten(1).sum(1).min()),
            "median": int(m.flatten(1).sum(1).median()),
        },
        "noise_draws_per_row": len(seeds),
        "levels": score(x, m, fit, seeds),
        "seconds_per_row_k3": {k: round(v, 4) for k, v in timing.items()},
    }


def synthetic(args: argparse.Namespace) -> dict:
    """Known native noise (gain 0.05, read variance 0.5 grey^2, 8-bit; BBBC038's range)."""
    from tests.test_real_corruptions import _fg_mean, _poisson_gaussian, _scene

    clean, mask = _scene(args.synthetic, seed=20)
    noisy = _poisson_gaussian(clean, 0.05, 0.5, seed=21)
    fit = real.estimate_noise(noisy, mask)
    true_var = 0.05 * _fg_mean(clean, mask) + 0.5 + 1 / 12
    seeds = [torch.arange(args.synthetic) + 1000 * j for j in range(1 + args.noise_seeds)]
    rel = fit.variance(_fg_mean(clean, mask)) / true_var - 1
    return {
        "tiles": args.synthetic,
        "fitted_variance_error": {"mean": float(rel.mean()), "max_abs": float(rel.abs().max())},
        "levels": score(noisy, mask, fit, seeds, true_var),
    }


def main() -> int:
    ap = _common.parser(__doc__)
    ap.add_argument("--data", type=Path, default=_common.BBBC038)
    ap.add_argument("--images", type=int, default=40, help="BBBC038 test tiles (--test N)")
    ap.add_argument("--seed", type=int, default=0, help="the build seed")
    ap.add_argument("--noise-seeds", type=int, default=0, help="extra noise draws per row")
    ap.add_argument("--synthetic", type=int, default=8, help="synthetic tiles (0: none)")
    _common.add_repeats(ap, 3)
    _common.add_threads(ap)
    _common.add_json(ap)
    args = ap.parse_args()
    _common.set_threads(args)
    t0 = time.perf_counter()
    result: dict = {"machine": _common.machine(threads=True), "tolerance": real.SNR_TOLERANCE}
    if args.data.exists():
        result["bbbc038"] = bbbc038(args)
    else:
        print(f"BBBC038 not found at {args.data}: synthetic tiles only")
    if args.synthetic:
        result["synthetic"] = synthetic(args)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    _common.emit(result, args.json, report)
    return 0


def _pct(v: float) -> str:
    return f"{100 * v:+.3f}%"


def report(r: dict) -> None:
    for part in ("bbbc038", "synthetic"):
        if part not in r:
            continue
        d = r[part]
        extra = ""
        if part == "bbbc038":
            extra = f", foreground px min {d['foreground_px']['min']}, median "
            extra += f"{d['foreground_px']['median']}, {d['noise_draws_per_row']} draw(s) per row"
        else:
            fe = d["fitted_variance_error"]
            extra = f", fitted native variance vs truth: mean {_pct(fe['mean'])}"
        print(f"\n{part}: {d['tiles']} tiles{extra}")
        print(
            "| K | rows | before: mean | sd | max abs | > 5% | rim term (expected) "
            "| after: mean | sd | max abs | > tol |"
        )
        print("|---:" * 11 + "|")
        for level, s in d["levels"].items():
            b, a, rim = s["before"], s["after"], s["rim"]
            print(
                f"| {level} | {b['rows']} | {_pct(b['mean'])} | {100 * b['sd']:.2f}% | "
                f"{100 * b['max_abs']:.2f}% | {b['over_5pct']} | {_pct(rim['mean'])} | "
                f"{_pct(a['mean'])} | {100 * a['sd']:.4f}% | {100 * a['max_abs']:.4f}% | "
                f"{a['over_tolerance']} |"
            )
        if "before_true" in next(iter(d["levels"].values())):
            print("\nagainst the true native noise (mean / max abs):")
            for level, s in d["levels"].items():
                bt, at = s["before_true"], s["after_true"]
                print(
                    f"  K={level}: before {_pct(bt['mean'])} / {100 * bt['max_abs']:.2f}%, "
                    f"after {_pct(at['mean'])} / {100 * at['max_abs']:.2f}%"
                )
        if "seconds_per_row_k3" in d:
            t = d["seconds_per_row_k3"]
            print(f"\nper row (one tile, K=3): before {t['before']} s, after {t['after']} s")
    print(f"\ntolerance {r['tolerance']}; {r['machine']}; {r['seconds']} s")


if __name__ == "__main__":
    raise SystemExit(main())

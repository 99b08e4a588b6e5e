"""A pixel classifier as a realism measure (issue 27, exploratory; not shipped in
``synthesis.realism``): does a fast classical learner trained on a renderer variant's train
images predict how well a U-Net trained on them transfers to real nuclei?

For every variant of the renderer ablation (:mod:`builder.experiments.ablation`, its
``ablation.json`` in ``--ablation``): the variant's train images are made as the ablation makes
them; each tile is z-scored and described per pixel by scikit-image's
``multiscale_basic_features`` (intensity, edges and texture at 5 scales, sigma 1-16 px); a
logistic regression (L-BFGS, float64) and a 32-unit MLP (Adam, 300 steps, seeded) are fitted
on 40 000 pixels (half foreground, seeded draw); both predict every pixel of the 160 real
*train* tiles, scored by IoU against their masks. Prints each variant's two proxy IoUs beside
its U-Nets' mean real-image IoU, and the Spearman correlation across the variants (a measure
that predicts transfer correlates positively here: both are IoUs).

    python benchmarks/pixel_proxy.py [--ablation out/ablation] [--json]
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import _common
import numpy as np

N_PIXELS = 40_000


def _features(x) -> np.ndarray:
    from skimage.feature import multiscale_basic_features

    from synthesis.normalize import zscore

    z = zscore(x)
    return np.stack(
        [
            multiscale_basic_features(
                z[i, 0].numpy(), sigma_min=1, sigma_max=16, num_sigma=5, channel_axis=None
            ).astype(np.float32)
            for i in range(z.shape[0])
        ]
    )


def _sample(f: np.ndarray, m: np.ndarray, rng: np.random.Generator) -> tuple:
    flat = m.ravel()
    fg, bg = np.flatnonzero(flat), np.flatnonzero(~flat)
    pick = np.concatenate([rng.choice(fg, N_PIXELS // 2), rng.choice(bg, N_PIXELS // 2)])
    return f.reshape(-1, f.shape[-1])[pick], flat[pick]


def _logreg(x: np.ndarray, y: np.ndarray):
    import torch
    import torch.nn.functional as F

    x64, y64 = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    mu, sd = x64.mean(0), x64.std(0) + 1e-9
    xs = (x64 - mu) / sd
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(xs @ w + b, y64) + 1e-4 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w, b = w.detach(), b.detach()
    return lambda f: ((torch.tensor(f, dtype=torch.float64) - mu) / sd @ w + b).numpy() > 0


def _mlp(x: np.ndarray, y: np.ndarray, seed: int):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    xt, yt = torch.tensor(x), torch.tensor(y, dtype=torch.float32)
    mu, sd = xt.mean(0), xt.std(0) + 1e-6
    net = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], 32), torch.nn.ReLU(), torch.nn.Linear(32, 1)
    )
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    xs = (xt - mu) / sd
    for _ in range(300):
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(net(xs)[:, 0], yt).backward()
        opt.step()

    def predict(f: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return (net((torch.tensor(f) - mu) / sd)[:, 0] > 0).numpy()

    return predict


def _iou(pred: np.ndarray, m: np.ndarray) -> float:
    p = pred.reshape(m.shape)
    return float((p & m).sum() / (p | m).sum())


def main() -> int:
    import torch

    from builder.experiments.ablation import AblationData, AblationOptions, variant_by_name
    from synthesis.realism import spearman

    ap = _common.parser(__doc__)
    ap.add_argument("--ablation", type=Path, default=Path("out/ablation"))
    ap.add_argument("--seed", type=int, default=0)
    _common.add_threads(ap)
    _common.add_json(ap)
    args = ap.parse_args()
    _common.set_threads(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    path = args.ablation / "ablation.json"
    if not path.exists():
        raise SystemExit(f"{path}: run benchmarks/ablation.py first")
    ablation = json.loads(path.read_text())
    opts = AblationOptions(source=ablation["source"], out=args.ablation)
    data = AblationData(opts, torch.device("cpu"))
    t0 = time.perf_counter()
    _, rx, rm = data.real("train")
    real_f = _features(rx)
    real_f = real_f.reshape(-1, real_f.shape[-1])
    real_m = rm[:, 0].numpy()
    rng = np.random.default_rng(args.seed)
    rows = {}
    for name, v in ablation["variants"].items():
        adu, mask, _ = data.synthetic(variant_by_name(name), "train")
        x, y = _sample(_features(adu.cpu()), mask[:, 0].cpu().numpy(), rng)
        rows[name] = {
            "logreg": _iou(_logreg(x, y)(real_f), real_m),
            "mlp": _iou(_mlp(x, y, args.seed)(real_f), real_m),
            "unet": v["iou"]["mean"],
        }
        logging.info("%s %s", name, rows[name])
    result = {
        "machine": _common.machine(),
        "seconds": round(time.perf_counter() - t0, 1),
        "variants": rows,
        "spearman": {
            k: spearman([r[k] for r in rows.values()], [r["unet"] for r in rows.values()])
            for k in ("logreg", "mlp")
        },
    }
    _common.emit(result, args.json, report)
    return 0


def report(r: dict) -> None:
    print(f"{r['machine']}; {r['seconds']} s")
    print("| variant | U-Net IoU real | logreg proxy IoU | MLP proxy IoU |\n|---|---:|---:|---:|")
    for name, v in r["variants"].items():
        print(f"| {name} | {v['unet']:.3f} | {v['logreg']:.3f} | {v['mlp']:.3f} |")
    print("Spearman vs U-Net IoU: " + ", ".join(f"{k} {v:+.2f}" for k, v in r["spearman"].items()))


if __name__ == "__main__":
    raise SystemExit(main())

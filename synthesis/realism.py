"""Realism measures: how far rendered images are from real ones, on tensors (no file I/O).

Three kinds (definitions: ``docs/definitions.md#realism``):

- five **paired distances** between a real tile and a rendering of the same mask, each image
  first put on a common scale by :func:`normalise_levels` (minus the 0.5th percentile of its
  background, the camera offset, divided by its foreground mean): :func:`distances` of one
  pair, :func:`mean_distances` of a batch (per tile, then averaged);
- the **domain score** (:func:`domain_score`): the ROC AUC of a small CNN trained to tell
  real from rendered images, each z-scored per image as the U-Net sees it
  (:func:`synthesis.normalize.zscore`), on held-out images (2-fold). 0.5: indistinguishable;
  1: perfectly separable;
- the **feature distance** (:func:`feature_distance`): the Fréchet distance between real and
  rendered pixels in the per-pixel features of a segmentation network trained on real images
  (the reference U-Net's last decoder block, :meth:`synthesis.models.unet.UNet.features`),
  per class (foreground, background) at the same pixels of the same masks, averaged: how
  differently a network that knows real nuclei sees the renders.

:func:`realism_measures` gives all of them (:data:`MEASURES`; the feature distance only when
a feature network is given); every one is a distance (lower is more real). :func:`spearman` (average ranks for ties) is the rank correlation the renderer
ablation (``builder/experiments/ablation.py``) uses to say which measure agrees with transfer.
``benchmarks/realism.py`` and the ablation both use these definitions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "DISTANCES",
    "DOMAIN",
    "MEASURES",
    "DomainSettings",
    "average_ranks",
    "distances",
    "domain_score",
    "feature_distance",
    "frechet_distance",
    "mean_distances",
    "normalise_levels",
    "rank_auc",
    "raps",
    "realism_measures",
    "spearman",
]

#: The five paired distances, in the order of :func:`distances`.
DISTANCES: tuple[str, ...] = ("hist_w1_all", "hist_w1_fg", "raps_log10", "bg_fg_ratio", "fg_cv")
#: Every measure of :func:`realism_measures` (all distances: lower is more real).
MEASURES: tuple[str, ...] = (*DISTANCES, "domain_auc", "feature_fd")

#: Pixels per class sampled (seeded, the same positions in the real and rendered image) for
#: :func:`feature_distance`.
FEATURE_PIXELS = 20000

#: Percentile of the background taken as the offset by :func:`normalise_levels`.
OFFSET_PERCENTILE = 0.5

#: torch threads the measures run on, whatever the process has: a fixed count, so their
#: bits do not depend on the thread count (as :func:`synthesis.thread_invariant.model_threads`,
#: with one thread instead of its two). The domain classifier is too small to gain from more;
#: on a loaded 2-core machine a 2-thread OpenMP team (spin-waiting) ran it 30-70x slower.
THREADS = 1


# ----------------------------------------------------------------------------- distances


def normalise_levels(x: Tensor, fg: Tensor) -> Tensor:
    """``x`` (float64) minus the 0.5th percentile of its background ``~fg`` (the camera
    offset; linear interpolation), divided by the foreground mean of the result (floored at
    1e-9). Free of gain and offset: the foreground mean is 1, the background mean is the
    background/foreground ratio, the foreground sd its coefficient of variation.

    Raises:
        ValueError: ``fg`` has no foreground or no background.

    Example:
        >>> fg = torch.tensor([[False, True], [False, True]])
        >>> normalise_levels(torch.tensor([[10.0, 20.0], [10.0, 40.0]]), fg).tolist()
        [[0.0, 0.5], [0.0, 1.5]]
    """
    fg = fg.bool()
    if not bool(fg.any()) or bool(fg.all()):
        raise ValueError("fg must have both foreground and background pixels. Got one of them")
    x = x.to(torch.float64)
    floor = torch.quantile(x[~fg], OFFSET_PERCENTILE / 100)
    y = x - floor
    return y / max(float(y[fg].mean()), 1e-9)


def raps(x: Tensor) -> Tensor:
    """Radially averaged power spectrum of a square ``(N, N)`` image (mean removed), at the
    integer radii 1..N/2 - 1 cycles per image (float64).

    Raises:
        ValueError: not a square 2-D image of at least 8 px.
    """
    if x.dim() != 2 or x.shape[0] != x.shape[1] or x.shape[0] < 8:
        raise ValueError(f"raps needs a square (N, N) image, N >= 8. Got {tuple(x.shape)}")
    n = x.shape[0]
    x = x.to(torch.float64)
    p = torch.fft.fft2(x - x.mean()).abs() ** 2
    f = torch.fft.fftfreq(n, dtype=torch.float64) * n
    r = torch.round(torch.hypot(f[:, None], f[None, :])).long().flatten()
    sums = torch.bincount(r, weights=p.flatten())
    counts = torch.bincount(r)
    return sums[1 : n // 2] / counts[1 : n // 2]


def distances(real: Tensor, syn: Tensor, fg: Tensor) -> dict[str, float]:
    """The five distances (:data:`DISTANCES`) between two images of one mask, each already
    :func:`normalise_levels`-d, with ``fg`` the mask (``(H, W)``, square for the spectrum):

    - ``hist_w1_all``, ``hist_w1_fg``: Wasserstein-1 between the intensity histograms of all
      pixels, of the foreground pixels (mean |difference| of the sorted values);
    - ``raps_log10``: mean |log10 ratio| of the radially averaged power spectra
      (:func:`raps`) over 2..N/2 - 1 cycles per image;
    - ``bg_fg_ratio``: |difference| of the background means (background / foreground ratio);
    - ``fg_cv``: |difference| of the foreground sds (population; the coefficient of variation).
    """
    fg = fg.bool()
    bg = ~fg
    real, syn = real.to(torch.float64), syn.to(torch.float64)

    def w1(a: Tensor, b: Tensor) -> float:
        return float((a.flatten().sort().values - b.flatten().sort().values).abs().mean())

    spectra = torch.log10(raps(syn)[1:]) - torch.log10(raps(real)[1:])
    return {
        "hist_w1_all": w1(real, syn),
        "hist_w1_fg": w1(real[fg], syn[fg]),
        "raps_log10": float(spectra.abs().mean()),
        "bg_fg_ratio": abs(float(syn[bg].mean() - real[bg].mean())),
        "fg_cv": abs(float(syn[fg].std(correction=0) - real[fg].std(correction=0))),
    }


def mean_distances(real: Tensor, synthetic: Tensor, masks: Tensor) -> dict[str, float]:
    """:func:`distances` of each pair ``(real[i], synthetic[i])`` of ``(N, 1, H, W)`` images
    of the same mask ``masks[i]`` (each image :func:`normalise_levels`-d), averaged over the
    tiles (on :data:`THREADS` torch thread); tiles whose mask has no foreground or no
    background are left out (``tiles``: the number averaged).

    Raises:
        ValueError: shapes differ, or no tile has both foreground and background.
    """
    from synthesis.thread_invariant import threads

    if real.shape != synthetic.shape or real.shape != masks.shape or real.dim() != 4:
        raise ValueError(
            "real, synthetic and masks must share one (N, 1, H, W) shape. Got "
            f"{tuple(real.shape)}, {tuple(synthetic.shape)}, {tuple(masks.shape)}"
        )
    per: dict[str, list[float]] = {k: [] for k in DISTANCES}
    with threads(THREADS):
        for r, s, m in zip(real[:, 0], synthetic[:, 0], masks[:, 0].bool(), strict=True):
            if not bool(m.any()) or bool(m.all()):
                continue
            d = distances(normalise_levels(r, m), normalise_levels(s, m), m)
            for k, v in d.items():
                per[k].append(v)
    n = len(per[DISTANCES[0]])
    if n == 0:
        raise ValueError("no tile has both foreground and background pixels")
    return {**{k: math.fsum(v) / n for k, v in per.items()}, "tiles": n}


# ----------------------------------------------------------------------------- ranks


def average_ranks(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``values`` (float64), ties given the mean of the ranks they span.

    Example:
        >>> average_ranks([3.0, 1.0, 3.0, 2.0]).tolist()
        [3.5, 1.0, 3.5, 2.0]
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts).astype(np.float64)
    return ((ends - counts + 1 + ends) / 2)[inverse.ravel()]


def rank_auc(positive: Sequence[float] | Tensor, negative: Sequence[float] | Tensor) -> float:
    """ROC AUC: the probability that a ``positive`` score exceeds a ``negative`` one, ties
    counting one half (Mann-Whitney U / (n_pos n_neg), from average ranks).

    Raises:
        ValueError: either side is empty.

    Example:
        >>> rank_auc([0.9, 0.8, 0.4], [0.1, 0.4, 0.5])
        0.8333333333333334
    """
    pos = np.asarray(positive, dtype=np.float64).ravel()
    neg = np.asarray(negative, dtype=np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise ValueError(f"rank_auc needs scores of both classes. Got {pos.size} and {neg.size}")
    ranks = average_ranks(np.concatenate([pos, neg]))
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2
    return float(u / (pos.size * neg.size))


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation of paired values: the Pearson correlation of their
    :func:`average_ranks` (as ``scipy.stats.spearmanr``). None where it is undefined: fewer
    than 2 pairs, or one side constant.

    Raises:
        ValueError: ``x`` and ``y`` differ in length.

    Example:
        >>> spearman([1, 2, 3, 4], [10, 30, 20, 40])
        0.8
    """
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length. Got {len(x)} and {len(y)}")
    if len(x) < 2:
        return None
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float((rx * rx).sum()) * float((ry * ry).sum()))
    if den == 0:
        return None
    return max(-1.0, min(1.0, float((rx * ry).sum()) / den))


# ----------------------------------------------------------------------------- domain score


@dataclass(frozen=True)
class DomainSettings:
    """The domain classifier and its training: ``crop`` px square crops (drawn with seeded
    offsets from the z-scored images; a held-out image is scored by the mean logit of the
    grid of non-overlapping crops that fit in it), ``steps`` Adam steps (learning rate
    ``lr``) of ``batch`` crops, half of each class, and ``channels`` in the first of three
    stride-2 3x3 convolutions (then ``2 x channels`` twice, global average pooling, one
    logit)."""

    crop: int = 64
    steps: int = 300
    batch: int = 32
    lr: float = 2e-3
    channels: int = 16


#: The settings every caller uses (the ablation's cache key covers them).
DOMAIN = DomainSettings()


def _classifier(channels: int) -> nn.Module:
    c = channels
    return nn.Sequential(
        nn.Conv2d(1, c, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(c, 2 * c, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(2 * c, 2 * c, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * c, 1),
    )


def _crops(z: Tensor, idx: Tensor, ys: Tensor, xs: Tensor, size: int) -> Tensor:
    return torch.stack(
        [z[i, :, y : y + size, x : x + size] for i, y, x in zip(idx, ys, xs, strict=True)]
    )


def _grid_scores(model: nn.Module, z: Tensor, size: int) -> Tensor:
    """Per image, the mean logit over the grid of non-overlapping ``size`` crops."""
    _, _, h, w = z.shape
    tiles = [
        z[:, :, y : y + size, x : x + size]
        for y in range(0, h - size + 1, size)
        for x in range(0, w - size + 1, size)
    ]
    return torch.stack([model(t)[:, 0] for t in tiles]).mean(0)


def _check_pair(real: Tensor, synthetic: Tensor) -> None:
    for name, x in (("real", real), ("synthetic", synthetic)):
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor. Got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"{name} must have shape (N, 1, H, W). Got {tuple(x.shape)}")
        if x.shape[0] < 2:
            raise ValueError(f"{name} needs at least 2 images (one per fold). Got {x.shape[0]}")
    if real.shape[2:] != synthetic.shape[2:]:
        raise ValueError(
            f"real and synthetic must share H, W. Got {tuple(real.shape)}, {tuple(synthetic.shape)}"
        )


def domain_score(
    real: Tensor, synthetic: Tensor, *, seed: int, settings: DomainSettings = DOMAIN
) -> dict[str, Any]:
    """How well a small CNN tells ``synthetic`` from ``real`` images (both ``(N, 1, H, W)``
    float, any gain and offset), on images it was not trained on.

    Each image is z-scored (:func:`synthesis.normalize.zscore`, as the U-Net sees it). Each
    class is split in two halves by a seeded permutation (the same one when both classes have
    N images, so the two images of one mask stay in one half); a classifier
    (:class:`DomainSettings`) is trained on one half of each class and scores the other
    half, then the halves swap (2-fold). ``auc`` is the mean over the folds of the ROC AUC
    (:func:`rank_auc`, rendered as positive): 0.5 indistinguishable, 1 perfectly separable.
    Runs on the CPU on :data:`THREADS` torch thread, so a seed gives the same result
    whatever the process' thread count; the global torch RNG is left as it was.

    Raises:
        TypeError, ValueError: not float ``(N, 1, H, W)`` images of one size, N >= 2 each.
    """
    from synthesis.normalize import zscore
    from synthesis.thread_invariant import threads

    _check_pair(real, synthetic)
    size = min(settings.crop, real.shape[2], real.shape[3])
    with torch.no_grad():
        z = [zscore(x.detach().to("cpu", torch.float32)) for x in (real, synthetic)]
    gen = torch.Generator().manual_seed(int(seed))
    n_real, n_syn = z[0].shape[0], z[1].shape[0]
    perm_real = torch.randperm(n_real, generator=gen)
    perm_syn = perm_real if n_syn == n_real else torch.randperm(n_syn, generator=gen)
    halves = [(p[: p.numel() // 2], p[p.numel() // 2 :]) for p in (perm_real, perm_syn)]
    aucs = []
    with threads(THREADS):
        for fold in range(2):
            train = [h[fold] for h in halves]
            test = [h[1 - fold] for h in halves]
            fold_seed = int(torch.randint(2**62, (1,), generator=gen))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(fold_seed)
                model = _classifier(settings.channels)
            opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
            half = max(1, settings.batch // 2)
            labels = torch.cat([torch.zeros(half), torch.ones(half)])[:, None]
            h, w = real.shape[2:]
            model.train()
            for _ in range(settings.steps):
                parts = []
                for cls in range(2):
                    pick = train[cls][torch.randint(train[cls].numel(), (half,), generator=gen)]
                    ys = torch.randint(h - size + 1, (half,), generator=gen).tolist()
                    xs = torch.randint(w - size + 1, (half,), generator=gen).tolist()
                    parts.append(_crops(z[cls], pick, ys, xs, size))
                loss = nn.functional.binary_cross_entropy_with_logits(
                    model(torch.cat(parts)), labels
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                s_real = _grid_scores(model, z[0][test[0]], size)
                s_syn = _grid_scores(model, z[1][test[1]], size)
            aucs.append(rank_auc(s_syn.tolist(), s_real.tolist()))
    return {
        "auc": math.fsum(aucs) / len(aucs),
        "auc_folds": aucs,
        "real": n_real,
        "synthetic": n_syn,
        "seed": int(seed),
        "settings": asdict(settings),
    }


# ----------------------------------------------------------------------------- feature distance


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """The Fréchet distance between Gaussians fitted to the rows of ``a`` ``(N, D)`` and ``b``
    ``(M, D)``: ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)`` (float64;
    the covariances are the sample ones, N - 1; negative eigenvalues and a negative total
    from round-off are clipped to 0).

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(4000, 2, generator=g, dtype=torch.float64)
        >>> round(frechet_distance(x, x), 6)
        0.0
        >>> round(frechet_distance(x, x + torch.tensor([3.0, 4.0], dtype=torch.float64)), 6)
        25.0
    """
    for name, x in (("a", a), ("b", b)):
        if x.dim() != 2 or x.shape[0] < 2:
            raise ValueError(f"{name} must have shape (N >= 2, D). Got {tuple(x.shape)}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must share D. Got {a.shape[1]} and {b.shape[1]}")
    a, b = a.double(), b.double()
    mu = a.mean(0) - b.mean(0)
    sa, sb = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    ev, vec = torch.linalg.eigh(sa)
    root_a = vec @ torch.diag(ev.clamp(min=0).sqrt()) @ vec.T
    cross = torch.linalg.eigvalsh(root_a @ sb @ root_a).clamp(min=0).sqrt().sum()
    # At least 0, which round-off can undershoot for equal inputs.
    return max(0.0, float(mu @ mu + torch.trace(sa) + torch.trace(sb) - 2 * cross))


def feature_distance(
    network: nn.Module,
    real: Tensor,
    synthetic: Tensor,
    masks: Tensor,
    *,
    seed: int,
    pixels: int = FEATURE_PIXELS,
    batch: int = 8,
) -> dict[str, Any]:
    """How differently ``network`` (a module with ``features(x) -> (B, C, H, W)``, such as
    the reference U-Net trained on real images) sees ``synthetic`` and ``real``
    ``(N, 1, H, W)`` images of the same ``masks``: per class (foreground, background), the
    :func:`frechet_distance` between the features of the real and the rendered pixels, at up
    to ``pixels`` positions of that class drawn by a seeded generator (the same positions in
    both images); ``fd`` is the mean of the two. Each image is z-scored
    (:func:`synthesis.normalize.zscore`) as the network sees it; runs on the CPU on
    :data:`THREADS` torch thread in eval mode (the network's mode is restored).

    Raises:
        TypeError, ValueError: not float ``(N, 1, H, W)`` images of one shape, or masks of
            another shape, or a class with fewer than 2 pixels.
    """
    from synthesis.normalize import zscore
    from synthesis.thread_invariant import threads

    _check_pair(real, synthetic)
    if real.shape != synthetic.shape or masks.shape != real.shape:
        raise ValueError(
            "real, synthetic and masks must have one shape. Got "
            f"{tuple(real.shape)}, {tuple(synthetic.shape)}, {tuple(masks.shape)}"
        )
    m = masks.detach().to("cpu", torch.bool).flatten()
    gen = torch.Generator().manual_seed(int(seed))
    picks = {}
    for name, where in (("foreground", m), ("background", ~m)):
        idx = where.nonzero()[:, 0]
        if idx.numel() < 2:
            raise ValueError(f"feature_distance needs >= 2 {name} pixels. Got {idx.numel()}")
        picks[name] = idx[torch.randperm(idx.numel(), generator=gen)[:pixels]].sort().values
    was_training = network.training
    network.eval()
    per_image = real.shape[2] * real.shape[3]
    # Per set and class, the features of the picked pixels only, gathered batch by batch
    # (the picks are sorted flat indices over (N, H, W)).
    feats: list[dict[str, Tensor]] = []
    try:
        with threads(THREADS), torch.no_grad():
            for x in (real, synthetic):
                z = zscore(x.detach().to("cpu", torch.float32))
                parts: dict[str, list[Tensor]] = {name: [] for name in picks}
                for i in range(0, len(z), batch):
                    f = network.features(z[i : i + batch])
                    f = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])
                    lo, hi = i * per_image, (i + f.shape[0] // per_image) * per_image
                    for name, idx in picks.items():
                        mine = idx[(idx >= lo) & (idx < hi)]
                        parts[name].append(f[mine - lo])
                feats.append({name: torch.cat(v) for name, v in parts.items()})
    finally:
        network.train(was_training)
    per_class = {name: frechet_distance(feats[0][name], feats[1][name]) for name in picks}
    return {
        "fd": math.fsum(per_class.values()) / len(per_class),
        **{f"fd_{name}": v for name, v in per_class.items()},
        "pixels": {name: int(idx.numel()) for name, idx in picks.items()},
        "seed": int(seed),
    }


def realism_measures(
    real: Tensor,
    synthetic: Tensor,
    masks: Tensor,
    *,
    seed: int,
    settings: DomainSettings = DOMAIN,
    network: nn.Module | None = None,
) -> dict[str, Any]:
    """The measures (:data:`MEASURES`) between ``real`` and ``synthetic`` ``(N, 1, H, W)``
    images of the same ``masks``: the :func:`mean_distances`, the domain score's AUC
    (``domain_auc``) and, when a feature ``network`` is given, the :func:`feature_distance`
    (``feature_fd``); with ``tiles`` (pairs the distances averaged), ``domain`` (the whole
    :func:`domain_score` result) and ``features`` (the whole feature distance, or None)."""
    dist = mean_distances(real, synthetic, masks)
    domain = domain_score(real, synthetic, seed=seed, settings=settings)
    measures = {**{k: dist[k] for k in DISTANCES}, "domain_auc": domain["auc"]}
    features = None
    if network is not None:
        features = feature_distance(network, real, synthetic, masks, seed=seed)
        measures["feature_fd"] = features["fd"]
    return {"measures": measures, "tiles": dist["tiles"], "domain": domain, "features": features}

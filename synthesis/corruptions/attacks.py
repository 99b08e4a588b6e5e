"""White-box L-inf attacks on segmentation models, with budgets exact in stored ADU.

Methods: FGSM, I-FGSM and PGD as the authors ran them (``docs/definitions.md#attacks``,
protocols in :data:`synthesis.levels.ATTACKS`), and the segmentation-specific SegPGD
(Gu et al., ECCV 2022) and CosPGD (Agnihotri & Keuper, ICML 2024), which by default follow
the PGD protocol (step 2 grey levels, 10 iterations, uniform random start).

The pipeline of :func:`attack`, for every image of a batch:

1. ``adu`` (integer camera values) -> ``x = (adu - lo) / (hi - lo)`` in [0, 1], with ``lo``
   and ``hi`` the image's own minimum and maximum (:func:`minmax`), fixed from the unattacked
   image for the whole attack. One grey level is ``1/255`` of that range, so a budget of
   ``eps`` grey levels is ``eps / 255`` in this space and ``eps (hi - lo) / 255`` ADU.
2. The attack perturbs ``x`` within ``[x - eps/255, x + eps/255]`` and ``[0, 1]``, taking
   gradients through ``preprocess`` (the per-image z-score
   :func:`synthesis.normalize.zscore` by default) and the model, which sees
   ``model(preprocess(x))``. Since a z-score ignores affine maps, that is the input the model
   gets from ``zscore(adu)`` at evaluation.
3. The result is mapped back, ``lo + x (hi - lo)``, and rounded to integer ADU. The rounded
   perturbation is then clipped to ``floor(eps (hi - lo) / 255)`` ADU, so the realised budget
   holds exactly on the stored image (rounding alone could exceed it by half an ADU), and the
   values to [0, 65535]. The realised L-inf, ``max |adu' - adu| * 255 / (hi - lo)`` grey levels,
   is returned per image and is never above ``eps``.

The model runs in eval mode (restored afterwards) and only input gradients are computed
(``torch.autograd.grad``, parameters frozen for the attack), so no parameter ``.grad`` is
written. The loss is summed over
pixels and images, never averaged over the batch: each image's gradient, hence its attack, does
not depend on the other images of the batch. On CPU the images are attacked one at a time, so
not even the rounding does (a convolution's bits change with the batch it runs in), on
:data:`synthesis.thread_invariant.MODEL_THREADS` threads whatever the process has (oneDNN's kernels and
sums change with the thread count).

Randomness: the PGD/SegPGD/CosPGD random start is uniform in ``[-eps, eps]``, drawn with
:func:`synthesis.rng.uniform` from the per-row seeds on stream :data:`streams.ATTACK_START`,
so an attacked row can be replayed from its seed and stored settings.

The gradient-free **Square attack** (:func:`square_attack`, method ``"square"``;
Andriushchenko et al., ECCV 2020) searches at random in the same space and budget: it starts
from vertical stripes of ``+-eps``, then, for a budget of model evaluations (queries), sets one
random square window of the perturbation to ``+eps`` or ``-eps`` and keeps the change when the
summed per-pixel loss grows. It needs no gradient, so a model whose gradients are masked
(uninformative) is still attacked by it: if it beats the gradient attacks at the same budget,
their scores overstate the model's robustness.

Streams: :data:`streams.ATTACK_START` (the random start), :data:`streams.ATTACK_SQUARE` (the
Square attack's stripes, windows and signs).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from synthesis import rng
from synthesis.checks import check_mask, check_seeds
from synthesis.levels import ATTACKS, AttackProtocol, Camera
from synthesis.metrics import check_logits
from synthesis.normalize import zscore
from synthesis.rng import streams
from synthesis.thread_invariant import on_model_threads

__all__ = [
    "GRADIENT_FREE",
    "GREY_LEVELS",
    "METHODS",
    "SEGMENTATION_ATTACKS",
    "SQUARE_P_INIT",
    "SQUARE_QUERIES",
    "AttackResult",
    "attack",
    "minmax",
    "pixel_loss",
    "random_start",
    "square_attack",
    "square_size",
]

logger = logging.getLogger(__name__)

#: Grey levels of the 8-bit scale the budgets are expressed in (one level = range / 255).
GREY_LEVELS: float = 255.0
#: Protocols of the segmentation-specific attacks: PGD's step, iterations and random start.
SEGMENTATION_ATTACKS: dict[str, AttackProtocol] = {
    "segpgd": AttackProtocol("segpgd", step_grey=2.0, random_start=True),
    "cospgd": AttackProtocol("cospgd", step_grey=2.0, random_start=True),
}
_PROTOCOLS: dict[str, AttackProtocol] = {**ATTACKS, **SEGMENTATION_ATTACKS}
#: Gradient attack methods (:func:`attack_budgets`).
METHODS: tuple[str, ...] = tuple(_PROTOCOLS)
#: Gradient-free attack methods (:func:`square_attack`); :func:`attack` runs these too.
GRADIENT_FREE: tuple[str, ...] = ("square",)
#: The Square attack's default query budget: model evaluations per image, the start included.
SQUARE_QUERIES = 100
#: The Square attack's initial fraction of the image one square covers (the paper's L-inf
#: ``p_init``), halved on its schedule as the queries are spent (:func:`square_size`).
SQUARE_P_INIT = 0.05
_ADU_MAX = float(Camera().adc_max_adu)
#: Methods whose objective is the same at every iteration, so runs may share gradients.
_STEP_INDEPENDENT = ("fgsm", "ifgsm", "pgd")

#: A pluggable attack loss: ``loss(logits (B, C, H, W), mask (B, 1, H, W) bool)`` returning
#: per-pixel losses ``(B, 1, H, W)`` (required by SegPGD and CosPGD) or per-image ``(B,)``.
AttackLoss = Callable[[Tensor, Tensor], Tensor]


@dataclass
class AttackResult:
    """What :func:`attack` returns (tensors on the device of the input ``adu``).

    Attributes:
        adu: ``(B, 1, H, W)`` int32, the attacked images in ADU (rounded, in [0, 65535]).
        linf_grey: ``(B,)`` float32, realised ``max |adu' - adu|`` in grey levels (<= eps).
        eps_adu: ``(B,)`` int32, the budget applied in ADU, ``floor(eps (hi - lo) / 255)``.
        lo_adu: ``(B,)`` float32, minimum of each unattacked image (defines the grey scale).
        hi_adu: ``(B,)`` float32, maximum of each unattacked image.
        params: the settings shared by the batch: ``method``, ``eps_grey``, ``step_grey``,
            ``iterations``, ``random_start``, ``loss``, ``norm`` ("linf"), ``space``,
            ``seed_stream``.
    """

    adu: Tensor
    linf_grey: Tensor
    eps_adu: Tensor
    lo_adu: Tensor
    hi_adu: Tensor
    params: dict[str, Any]


def minmax(images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image min-max scaling to [0, 1].

    Args:
        images: ``(B, 1, H, W)`` float tensor.

    Returns:
        ``(scaled, lo, hi)``: ``scaled = (images - lo) / (hi - lo)`` of the input's shape, and
        the per-image minimum and maximum as ``(B,)`` tensors.

    Raises:
        ValueError: a constant image (no range to scale), or a wrong shape.

    Example:
        >>> s, lo, hi = minmax(torch.tensor([[[[100.0, 150.0, 300.0]]]]))
        >>> s.tolist(), lo.tolist(), hi.tolist()
        ([[[[0.0, 0.25, 1.0]]]], [100.0], [300.0])
    """
    if not isinstance(images, Tensor) or not images.is_floating_point() or images.dim() != 4:
        raise ValueError(
            f"images must be a float tensor of shape (B, 1, H, W). Got {getattr(images, 'shape', type(images).__name__)}"
        )
    flat = images.flatten(1)
    lo, hi = flat.amin(1), flat.amax(1)
    flat_rows = torch.nonzero(hi <= lo).flatten().tolist()
    if flat_rows:
        raise ValueError(
            f"images must not be constant: a grey level is 1/255 of the image's range. "
            f"Got constant image(s) {flat_rows}"
        )
    scaled = (images - lo.view(-1, 1, 1, 1)) / (hi - lo).view(-1, 1, 1, 1)
    return scaled, lo, hi


def random_start(seeds: Tensor | int, shape: tuple[int, int, int], eps: float) -> Tensor:
    """The uniform random start in ``[-eps, eps]`` of PGD-type attacks (sample step).

    Args:
        seeds: per-row int64 seeds ``(B,)``.
        shape: ``(1, H, W)``.
        eps: half-width in the attack space ([0, 1] units, i.e. ``eps_grey / 255``).

    Returns:
        ``(B, *shape)`` float32, a pure function of each row's seed (stream
        :data:`streams.ATTACK_START`).
    """
    u = rng.uniform(seeds, shape, streams.ATTACK_START)
    return (u * 2 - 1) * eps


def pixel_loss(logits: Tensor, mask: Tensor) -> Tensor:
    """Default attack loss: per-pixel BCE with logits (one channel) or cross-entropy (two).

    Args:
        logits: ``(B, 1, H, W)`` or ``(B, 2, H, W)``.
        mask: ``(B, 1, H, W)`` bool ground truth.

    Returns:
        ``(B, 1, H, W)`` per-pixel losses.

    Raises:
        TypeError, ValueError: see :func:`synthesis.metrics.check_logits`.
    """
    check_logits(logits, mask)
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits, mask.to(logits.dtype), reduction="none")
    return F.cross_entropy(logits, mask[:, 0].long(), reduction="none").unsqueeze(1)


def _class_probs(logits: Tensor) -> Tensor:
    """``(B, 2, H, W)`` background/foreground probabilities of one- or two-channel logits."""
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], dim=1)
    return torch.softmax(logits, dim=1)


def _objective(
    method: str,
    logits: Tensor,
    mask: Tensor,
    loss_fn: AttackLoss,
    t: int,
    iterations: int,
) -> Tensor:
    """The scalar the attack ascends at iteration ``t`` (0-based)."""
    b, _, h, w = mask.shape
    values = loss_fn(logits, mask)
    if not isinstance(values, Tensor) or values.dim() == 0 or values.shape[0] != b:
        raise ValueError(
            f"the attack loss must return a tensor with a leading batch dimension {b} "
            f"(per-pixel (B, 1, H, W) or per-image (B,)). Got {getattr(values, 'shape', type(values).__name__)}"
        )
    if method in ("fgsm", "ifgsm", "pgd"):
        return values.sum()
    if values.numel() != b * h * w:
        raise ValueError(
            f"{method} weights the loss per pixel: the attack loss must return (B, 1, H, W) = "
            f"{(b, 1, h, w)} values. Got {tuple(values.shape)}"
        )
    values = values.reshape(b, 1, h, w)
    probs = _class_probs(logits.detach())
    target = mask.long()
    if method == "segpgd":
        # Gu et al. 2022, eq. 4: weight (1 - lambda) on correctly classified pixels and lambda
        # on wrong ones, lambda = (t - 1) / (2T) for t = 1..T, per image over H x W pixels.
        lam = t / (2 * iterations)
        correct = probs.argmax(1, keepdim=True) == target
        return torch.where(correct, (1 - lam) * values, lam * values).sum() / (h * w)
    # CosPGD (Agnihotri & Keuper 2024): per-pixel loss scaled by the (detached) cosine
    # similarity of the predicted class probabilities and the one-hot target.
    p_target = probs.gather(1, target)
    cos = p_target / probs.norm(dim=1, keepdim=True)
    return (cos * values).sum()


def _check_adu(adu: object) -> Tensor:
    if not isinstance(adu, Tensor):
        raise TypeError(
            f"adu must be a torch.Tensor of shape (B, 1, H, W). Got {type(adu).__name__}"
        )
    if adu.dim() != 4 or adu.shape[1] != 1 or adu.numel() == 0:
        raise ValueError(f"adu must have shape (B, 1, H, W). Got {tuple(adu.shape)}")
    if adu.dtype == torch.bool or adu.is_complex():
        raise TypeError(f"adu must hold integer ADU values. Got dtype {adu.dtype}")
    x = adu.to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("adu must be finite. Got NaN or inf values")
    if adu.is_floating_point():
        frac = x != torch.round(x)
        if bool(frac.any()):
            raise ValueError(
                "adu must hold integer ADU values (a stored 16-bit image). "
                f"Got fractional values such as {float(x[frac][0]):g}"
            )
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > _ADU_MAX:
        raise ValueError(f"adu must lie in [0, {_ADU_MAX:.0f}]. Got range [{lo:g}, {hi:g}]")
    return x


@contextmanager
def _attack_mode(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """``model`` set up for input gradients, restored afterwards: eval mode (each submodule's
    own mode is put back: a model may hold frozen eval-mode parts), parameters without
    ``requires_grad`` (a convolution then skips its weight gradient, which an attack never
    uses), and on CPU channels-last weights (oneDNN's fast layout; 1.3x on the reference
    U-Net). None of this changes a value: the gradients with respect to the input are the
    same computation."""
    modes = [(module, module.training) for module in model.modules()]
    params = list(model.parameters())
    grads = [p.requires_grad for p in params]
    data = [p.data for p in params]
    model.eval()
    try:
        for p in params:
            p.requires_grad_(False)
        if device.type == "cpu":
            model.to(memory_format=torch.channels_last)
        yield model
    finally:
        for p, g, d in zip(params, grads, data, strict=True):
            p.data = d
            p.requires_grad_(g)
        for module, mode in modes:
            module.training = mode


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return fallback


def _attack_device(model: nn.Module, adu: object) -> torch.device:
    """The device an attack's model math runs on: the model's (else the images')."""
    return _model_device(model, adu.device if isinstance(adu, Tensor) else torch.device("cpu"))


def attack(
    model: nn.Module,
    adu: Tensor,
    mask: Tensor,
    *,
    method: str,
    eps_grey: float,
    seeds: Tensor | int | None = None,
    loss: AttackLoss | None = None,
    preprocess: Callable[[Tensor], Tensor] = zscore,
    step_grey: float | None = None,
    iterations: int | None = None,
    random_init: bool | None = None,
) -> AttackResult:
    """Attack a batch of images against ``model`` within an L-inf budget of ``eps_grey``.

    See the module docstring for the exact pipeline (min-max space, rounding, budget).

    Args:
        model: any ``nn.Module`` mapping ``(B, 1, H, W)`` to one- or two-channel logits
            ``(B, 1|2, H, W)``; it is put in eval mode for the attack and restored after.
        adu: ``(B, 1, H, W)`` integer ADU values (any integer dtype, or float holding integers).
        mask: ``(B, 1, H, W)`` bool (or 0/1) ground truth the loss is computed against.
        method: one of :data:`METHODS`.
        eps_grey: the budget in grey levels (``1/255`` of each image's range), > 0; one value
            for the batch (one split).
        seeds: per-row int64 seeds ``(B,)``; required by methods with a random start.
        loss: the per-pixel loss to ascend (see ``AttackLoss``); default :func:`pixel_loss`.
        preprocess: maps the [0, 1] image to the model input; must be differentiable.
        step_grey: step size in grey levels; default from the method's protocol (FGSM: eps).
        iterations: number of steps; default from the method's protocol.
        random_init: override the protocol's random start.

    Returns:
        An :class:`AttackResult`.

    Raises:
        TypeError: malformed ``adu``/``mask``/``seeds`` or a model output that is not a tensor.
        ValueError: unknown method, invalid budget/step/iterations, missing seeds, fractional or
            out-of-range ADU, constant images, model outputs that are not one- or two-channel
            logits of the input's size, or a loss of the wrong shape.
        RuntimeError: called in ``torch.inference_mode`` (attacks need autograd).

    ``method="square"`` runs :func:`square_attack` (``iterations``: its query budget, default
    :data:`SQUARE_QUERIES`; ``step_grey`` and ``random_init`` do not apply to it).
    """
    if method in GRADIENT_FREE:
        if step_grey is not None or random_init is not None:
            raise ValueError("the Square attack takes no step_grey or random_init")
        if seeds is None:
            raise ValueError(
                "the Square attack draws at random: pass seeds of shape (B,). Got None"
            )
        return square_attack(
            model,
            adu,
            mask,
            eps_grey=eps_grey,
            seeds=seeds,
            queries=SQUARE_QUERIES if iterations is None else iterations,
            loss=loss,
            preprocess=preprocess,
        )
    (result,) = attack_budgets(
        model,
        adu,
        mask,
        method=method,
        budgets=[eps_grey],
        seeds=None if seeds is None else [seeds],
        loss=loss,
        preprocess=preprocess,
        step_grey=step_grey,
        iterations=iterations,
        random_init=random_init,
    )
    return result


@on_model_threads(lambda args: _attack_device(args["model"], args["adu"]))
def attack_budgets(
    model: nn.Module,
    adu: Tensor,
    mask: Tensor,
    *,
    method: str,
    budgets: list[float],
    seeds: list[Tensor | int] | None = None,
    loss: AttackLoss | None = None,
    preprocess: Callable[[Tensor], Tensor] = zscore,
    step_grey: float | None = None,
    iterations: int | None = None,
    random_init: bool | None = None,
) -> list[AttackResult]:
    """:func:`attack` at several budgets of one method; the same bytes as one call each.

    Without a random start, the runs share what they have in common instead of recomputing
    it: every run's first gradient (at the unattacked image), and, for runs with the same
    step ``a``, the iterates ``x_t`` with ``t a < eps`` of the smaller budget and the gradients
    there (no projection has acted yet, so they are bit for bit those of the largest budget's
    run). I-FGSM at 1, 2, 4, 8, 16 and 32 grey levels takes 43 gradients instead of 74; FGSM
    at six budgets 1 instead of 6. ``seeds``: one per budget (methods with a random start).

    Returns one :class:`AttackResult` per budget, in the order of ``budgets``.
    """
    if method not in _PROTOCOLS:
        raise ValueError(f"method must be one of {METHODS}. Got {method!r}")
    if not budgets:
        raise ValueError("budgets must hold at least one eps_grey. Got none")
    protocol = _PROTOCOLS[method]
    runs = []
    for i, eps_grey in enumerate(budgets):
        eps_grey = float(eps_grey)
        if not math.isfinite(eps_grey) or eps_grey <= 0:
            raise ValueError(f"eps_grey must be a finite number > 0. Got {eps_grey}")
        step = protocol.step(eps_grey) if step_grey is None else float(step_grey)
        if not math.isfinite(step) or step <= 0:
            raise ValueError(f"step_grey must be a finite number > 0. Got {step_grey}")
        n_iter = protocol.iterations(eps_grey) if iterations is None else iterations
        if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 1:
            raise ValueError(f"iterations must be an int >= 1. Got {iterations!r}")
        runs.append((i, eps_grey, step, n_iter))
    start = protocol.random_start if random_init is None else bool(random_init)
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "attack needs autograd: call it outside torch.inference_mode(). Got inference mode on"
        )

    out_device = adu.device if isinstance(adu, Tensor) else torch.device("cpu")
    device = _model_device(model, out_device)
    x_adu = _check_adu(adu).to(device)
    mask = check_mask(mask, x_adu, require_foreground=False)
    b, _, h, w = x_adu.shape
    checked_seeds: list[Tensor | None] = [None] * len(budgets)
    if start:
        if seeds is None or seeds[0] is None or len(seeds) != len(budgets):
            raise ValueError(
                f"{method} starts at a random point: pass seeds of shape ({b},). Got None"
            )
        checked_seeds = [check_seeds(s, b, device) for s in seeds]
    x0, lo, hi = minmax(x_adu)  # checks the whole batch (a constant image is named by index)
    if device.type == "cpu" and b > 1:
        # One image at a time on CPU: a convolution's bits depend on the batch it runs in,
        # and batch 1 is also faster here (1.8x for 16 images of 256 x 256: cache-resident).
        parts = [
            attack_budgets(
                model,
                x_adu[i : i + 1],
                mask[i : i + 1],
                method=method,
                budgets=budgets,
                seeds=[s[i : i + 1] for s in checked_seeds] if start else None,
                loss=loss,
                preprocess=preprocess,
                step_grey=step_grey,
                iterations=iterations,
                random_init=random_init,
            )
            for i in range(b)
        ]
        return [_concat([p[k] for p in parts], out_device) for k in range(len(budgets))]
    loss_fn = pixel_loss if loss is None else loss
    channels = [0]

    def gradient(x: Tensor, t: int, n_iter: int) -> Tensor:
        x = x.detach().requires_grad_(True)
        logits = check_logits(fast(preprocess(x)), x, "model output")
        channels[0] = logits.shape[1]
        objective = _objective(method, logits, mask, loss_fn, t, n_iter)
        (grad,) = torch.autograd.grad(objective, x)
        return grad

    def ascend(
        x: Tensor,
        t0: int,
        n_iter: int,
        eps: float,
        alpha: float,
        keep: set[int],
        given: Tensor | None = None,
    ) -> Tensor:
        for t in range(t0, n_iter):
            grad = given if (t == t0 and given is not None) else gradient(x, t, n_iter)
            if t in keep:
                saved[(alpha, t)] = (x, grad)
            x = x.detach() + alpha * grad.sign()
            x = torch.minimum(torch.maximum(x, x0 - eps), x0 + eps).clamp(0.0, 1.0)
        return x

    finals: dict[int, Tensor] = {}
    saved: dict[tuple[float, int], tuple[Tensor, Tensor | None]] = {}
    with _attack_mode(model, device) as fast, torch.enable_grad():
        if start:
            for i, eps_grey, step, n_iter in runs:
                eps = eps_grey / GREY_LEVELS
                delta = random_start(checked_seeds[i], (1, h, w), eps).to(device)
                finals[i] = ascend(
                    (x0 + delta).clamp(0.0, 1.0), 0, n_iter, eps, step / GREY_LEVELS, set()
                )
        elif method not in _STEP_INDEPENDENT:  # the objective changes with t: nothing shared
            for i, eps_grey, step, n_iter in runs:
                x = (x0 + 0.0).clamp(0.0, 1.0)
                finals[i] = ascend(x, 0, n_iter, eps_grey / GREY_LEVELS, step / GREY_LEVELS, set())
        else:
            x = (x0 + 0.0).clamp(0.0, 1.0)
            first = gradient(x, 0, runs[0][3])
            # Largest budget first; a smaller one with the same step resumes from the last
            # iterate no projection has touched, t * step < eps (a margin of a whole step),
            # with the gradient there.
            for i, eps_grey, step, n_iter in sorted(runs, key=lambda r: -r[1]):
                alpha = step / GREY_LEVELS
                keep = {
                    min(math.ceil(r[1] / step) - 1, r[3])
                    for r in runs
                    if r[2] == step and r[1] < eps_grey
                }
                resume = min(math.ceil(eps_grey / step) - 1, n_iter)
                t0, x_start, given = (
                    (resume, *saved[(alpha, resume)]) if (alpha, resume) in saved else (0, x, first)
                )
                finals[i] = ascend(x_start, t0, n_iter, eps_grey / GREY_LEVELS, alpha, keep, given)
                if n_iter in keep:
                    saved[(alpha, n_iter)] = (finals[i], None)
    results = []
    for i, eps_grey, step, n_iter in runs:
        results.append(
            _finish(
                finals[i],
                x_adu,
                lo,
                hi,
                eps_grey,
                step,
                n_iter,
                start,
                method,
                loss,
                channels[0],
                out_device,
            )
        )
    return results


def _concat(parts: list[AttackResult], device: torch.device) -> AttackResult:
    """One result of a batch from the results of its images (same settings)."""
    return AttackResult(
        **{
            name: torch.cat([getattr(p, name) for p in parts]).to(device)
            for name in ("adu", "linf_grey", "eps_adu", "lo_adu", "hi_adu")
        },
        params=parts[0].params,
    )


def gradients_needed(method: str, budgets: list[float]) -> int:
    """Gradient evaluations per image of :func:`attack_budgets` at ``budgets`` with the
    method's protocol (the sharing rules of its docstring); for cost estimates."""
    protocol = _PROTOCOLS[method]
    runs = [(float(e), protocol.step(e), protocol.iterations(e)) for e in budgets]
    if protocol.random_start or method not in _STEP_INDEPENDENT:
        return sum(n for _, _, n in runs)
    total = 1  # the first gradient, shared by every run
    for eps, step, n_iter in runs:
        if any(s == step and e > eps for e, s, _ in runs):
            resume = min(math.ceil(eps / step) - 1, n_iter)
            total += max(n_iter - resume - 1, 0)
        else:
            total += n_iter - 1
    return total


def _finish(
    x: Tensor,
    x_adu: Tensor,
    lo: Tensor,
    hi: Tensor,
    eps_grey: float,
    step: float,
    n_iter: int,
    start: bool,
    method: str,
    loss: AttackLoss | None,
    n_channels: int,
    out_device: torch.device,
) -> AttackResult:
    # Back to ADU, rounded; the budget is enforced on the integer perturbation (float64 so the
    # realised L-inf below is computed with the same monotone arithmetic as the bound).
    lo64, hi64 = lo.double(), hi.double()
    scale = hi64 - lo64
    eps_adu = torch.floor(eps_grey * scale / GREY_LEVELS)
    eps_adu = torch.where(eps_adu * GREY_LEVELS / scale > eps_grey, eps_adu - 1, eps_adu)
    base = x_adu.double()
    moved = torch.round(lo64.view(-1, 1, 1, 1) + x.detach().double() * scale.view(-1, 1, 1, 1))
    bound = eps_adu.view(-1, 1, 1, 1)
    d = torch.minimum(torch.maximum(moved - base, -bound), bound)
    out = (base + d).clamp(0.0, _ADU_MAX)
    linf = (out - base).abs().flatten(1).amax(1) * GREY_LEVELS / scale
    small = int((eps_adu < 1).sum())
    if small:
        logger.warning(
            "%d image(s) have a range under %.0f ADU: %g grey level(s) is below one ADU there, "
            "so they are left unchanged",
            small,
            GREY_LEVELS / eps_grey,
            eps_grey,
        )
    if loss is None:
        loss_name = "bce_with_logits" if n_channels == 1 else "cross_entropy"
    else:
        loss_name = getattr(loss, "__name__", type(loss).__name__)
    params = {
        "method": method,
        "norm": "linf",
        "eps_grey": eps_grey,
        "step_grey": step,
        "iterations": n_iter,
        "random_start": start,
        "loss": loss_name,
        "space": "per-image min-max [0, 1], 1 grey level = range / 255",
        "seed_stream": streams.ATTACK_START,
    }
    return AttackResult(
        adu=out.to(torch.int32).to(out_device),
        linf_grey=linf.to(torch.float32).to(out_device),
        eps_adu=eps_adu.to(torch.int32).to(out_device),
        lo_adu=lo.to(out_device),
        hi_adu=hi.to(out_device),
        params=params,
    )


def square_size(p_init: float, t: int, queries: int, h: int, w: int) -> int:
    """The side (px) of the Square attack's window at iteration ``t`` (0-based) of ``queries``.

    The paper's schedule for 10 000 iterations, rescaled to ``queries``: the fraction ``p`` of
    the image a window covers starts at ``p_init`` and halves after 10, 50, 200, 500, 1000,
    2000, 4000, 6000 and 8000 (of 10 000) iterations; the side is ``round(sqrt(p H W))``,
    at least 1 and below ``min(H, W)``.

    Example:
        >>> square_size(0.05, 0, 100, 256, 256), square_size(0.05, 99, 100, 256, 256)
        (57, 3)
    """
    it = int(t / queries * 10000)
    halvings = sum(it > b for b in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000))
    side = round(math.sqrt(p_init / 2**halvings * h * w))
    return int(min(max(side, 1), max(min(h, w) - 1, 1)))


@on_model_threads(lambda args: _attack_device(args["model"], args["adu"]))
def square_attack(
    model: nn.Module,
    adu: Tensor,
    mask: Tensor,
    *,
    eps_grey: float,
    seeds: Tensor | int,
    queries: int = SQUARE_QUERIES,
    loss: AttackLoss | None = None,
    preprocess: Callable[[Tensor], Tensor] = zscore,
    p_init: float = SQUARE_P_INIT,
) -> AttackResult:
    """The Square attack (Andriushchenko et al., ECCV 2020), L-inf, gradient-free.

    In the space and budget of :func:`attack` (per-image min-max ``[0, 1]``, ``eps_grey / 255``,
    the result rounded to ADU within ``floor(eps (hi - lo) / 255)``). The perturbation starts
    as vertical stripes, each column ``+eps`` or ``-eps`` at random (one query); then for each
    of the other ``queries - 1`` queries one window of side :func:`square_size`, at a random
    position, is set to ``+eps`` or ``-eps`` at random (the opposite sign when the window
    already holds that value everywhere), and the change is kept when the image's summed
    per-pixel loss (``loss``, default :func:`pixel_loss`) strictly grows. Every draw comes from
    the row's seed on stream :data:`streams.ATTACK_SQUARE` (sub-stream 0: the stripes; 1: the
    windows and signs), drawn in advance, so a row's attack is a pure function of its seed,
    whatever its batch; on CPU the images are attacked one at a time (as :func:`attack`).

    Args:
        model: as :func:`attack`; run in eval mode without gradients.
        adu: ``(B, 1, H, W)`` integer ADU values.
        mask: ``(B, 1, H, W)`` bool ground truth.
        eps_grey: the budget in grey levels, > 0.
        seeds: per-row int64 seeds ``(B,)``.
        queries: model evaluations per image, the start included (>= 1).
        loss: the per-pixel (or per-image) loss to raise.
        preprocess: maps the [0, 1] image to the model input.
        p_init: the first window's fraction of the image, in (0, 1].

    Returns:
        An :class:`AttackResult` (``params``: ``method`` "square", ``iterations`` = ``queries``,
        ``queries``, ``p_init``, ``seed_stream`` :data:`streams.ATTACK_SQUARE`).

    Raises:
        TypeError, ValueError: as :func:`attack`; a bad ``queries`` or ``p_init``.
    """
    eps_grey = float(eps_grey)
    if not math.isfinite(eps_grey) or eps_grey <= 0:
        raise ValueError(f"eps_grey must be a finite number > 0. Got {eps_grey}")
    if isinstance(queries, bool) or not isinstance(queries, int) or queries < 1:
        raise ValueError(f"queries must be an int >= 1. Got {queries!r}")
    if not (isinstance(p_init, (int, float)) and 0 < p_init <= 1):
        raise ValueError(f"p_init must be in (0, 1]. Got {p_init!r}")
    out_device = adu.device if isinstance(adu, Tensor) else torch.device("cpu")
    device = _model_device(model, out_device)
    x_adu = _check_adu(adu).to(device)
    mask = check_mask(mask, x_adu, require_foreground=False)
    b, _, h, w = x_adu.shape
    seeds = check_seeds(seeds, b, device)
    x0, lo, hi = minmax(x_adu)
    if device.type == "cpu" and b > 1:  # one image at a time (see attack_budgets)
        parts = [
            square_attack(
                model,
                x_adu[i : i + 1],
                mask[i : i + 1],
                eps_grey=eps_grey,
                seeds=seeds[i : i + 1],
                queries=queries,
                loss=loss,
                preprocess=preprocess,
                p_init=p_init,
            )
            for i in range(b)
        ]
        return _concat(parts, out_device)
    loss_fn = pixel_loss if loss is None else loss
    eps = eps_grey / GREY_LEVELS
    cpu_seeds = seeds.cpu()
    stripes = rng.uniform(cpu_seeds, (w,), streams.ATTACK_SQUARE, sub=0).to(device)
    draws = rng.uniform(cpu_seeds, (max(queries - 1, 1), 3), streams.ATTACK_SQUARE, sub=1)
    channels = [0]
    with _attack_mode(model, device) as fast, torch.no_grad():

        def objective(x: Tensor) -> Tensor:
            logits = check_logits(fast(preprocess(x)), x, "model output")
            channels[0] = logits.shape[1]
            values = loss_fn(logits, mask)
            if not isinstance(values, Tensor) or values.dim() == 0 or values.shape[0] != b:
                raise ValueError(
                    f"the attack loss must return a tensor with a leading batch dimension {b}. "
                    f"Got {getattr(values, 'shape', type(values).__name__)}"
                )
            return values.reshape(b, -1).double().sum(1)

        sign = torch.where(stripes < 0.5, -1.0, 1.0).view(b, 1, 1, w)
        delta = (sign * eps).expand(b, 1, h, w).clone()
        best = objective((x0 + delta).clamp(0.0, 1.0))
        for t in range(queries - 1):
            side = square_size(p_init, t, queries - 1, h, w)
            candidate = delta.clone()
            for i in range(b):
                u = draws[i, t].tolist()
                r = min(int(u[0] * (h - side + 1)), h - side)
                c = min(int(u[1] * (w - side + 1)), w - side)
                value = eps if u[2] < 0.5 else -eps
                window = candidate[i, :, r : r + side, c : c + side]
                if bool((window == value).all()):
                    value = -value
                window.fill_(value)
            score = objective((x0 + candidate).clamp(0.0, 1.0))
            better = score > best
            delta = torch.where(better.view(b, 1, 1, 1), candidate, delta)
            best = torch.where(better, score, best)
    result = _finish(
        (x0 + delta).clamp(0.0, 1.0),
        x_adu,
        lo,
        hi,
        eps_grey,
        eps_grey,
        queries,
        True,
        "square",
        loss,
        channels[0],
        out_device,
    )
    result.params.update(queries=queries, p_init=float(p_init), seed_stream=streams.ATTACK_SQUARE)
    return result

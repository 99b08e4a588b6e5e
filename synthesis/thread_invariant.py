"""Model math on CPU whose bits do not depend on the number of torch threads.

Two things change bits with the thread count, and each has a fix here:

- oneDNN, which runs torch's convolutions on CPU, picks its kernel and splits its sums by
  the thread count (on AVX2 and on AVX-512 an attack's 3x3 input gradients at 1 thread differ
  from those at 2; training's weight gradients differ from 4 threads on). :func:`model_threads`
  runs model math (training, prediction, attacks, the GAN renderer) on exactly
  :data:`MODEL_THREADS` threads, whatever the process has; :func:`on_model_threads` is the
  same as a decorator (``train_segmenter``, ``attack_budgets``).
- A torch reduction with one output (one image's mean, say) is split across the threads, so
  its rounding depends on their number; one with many outputs gives each output to one
  thread. :func:`stable_sum` always takes the second path. :func:`zscore_stable` is the
  per-image z-score of :mod:`synthesis.normalize` with such sums in its forward and backward
  passes, and :func:`pointwise_conv` the U-Net's 1x1 head with such sums (it keeps the head
  invariant outside :func:`model_threads` too; oneDNN's 1x1 convolution in its place would
  give every reference model other bytes):

  - the forward pass sums the ``C`` input channels of each pixel in one thread (a reduction
    with many outputs is split across outputs, never within one);
  - the weight and bias gradients sum over batch and pixels in fixed blocks of
    :data:`BLOCK` elements (each block, below torch's parallel grain size, is summed in one
    thread), then sum the block totals the same way.

``tests/test_scale.py`` checks the bits at 1, 2 and 4 threads under several families of CPU
kernels. The sums are hand-written because no library layer promises thread-count
invariance; they are exact, not faster. ``docs/definitions.md#determinism`` states the
promise this serves, and what it does not cover (the same bits on two CPU types).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "BLOCK",
    "MODEL_THREADS",
    "model_threads",
    "on_model_threads",
    "pointwise_conv",
    "stable_sum",
    "threads",
    "zscore_stable",
]

#: torch threads that model math on CPU (training, attacks, prediction) always runs on,
#: whatever the process has. oneDNN picks its kernel and splits its sums by the thread count
#: (at 1 thread its 3x3 input gradients differ from those at 2 on AVX-512 and on AVX2), so a
#: fixed count gives the same bits in a 1-thread worker and a 64-thread process.
MODEL_THREADS = 2

#: Elements per block of :func:`stable_sum`, below torch's parallel grain size (32768), so
#: each block is summed by one thread whatever the thread count.
BLOCK = 16384


@contextmanager
def threads(count: int) -> Iterator[None]:
    """Run the block with exactly ``count`` torch intra-op threads, then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def model_threads(device: torch.device | str) -> Iterator[None]:
    """Run the block on :data:`MODEL_THREADS` torch threads when ``device`` is the CPU (GPU
    work is left as it is)."""
    if torch.device(device).type != "cpu":
        yield
        return
    with threads(MODEL_THREADS):
        yield


_F = TypeVar("_F", bound=Callable[..., Any])


def on_model_threads(
    device_of: Callable[[dict[str, Any]], torch.device | str],
) -> Callable[[_F], _F]:
    """Decorate a function so that it runs inside :func:`model_threads`; ``device_of`` maps
    the call's arguments by name (defaults applied) to the device its model math runs on."""

    def decorate(fn: _F) -> _F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def pinned(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            with model_threads(device_of(bound.arguments)):
                return fn(*args, **kwargs)

        return pinned  # type: ignore[return-value]

    return decorate


def stable_sum(values: Tensor) -> Tensor:
    """Sum each row of a ``(R, N)`` tensor, in an order independent of the thread count.

    Returns ``(R,)``. Rows are padded with zeros to whole blocks of :data:`BLOCK`, summed per
    block, and the block sums are summed again the same way until one remains.
    """
    while values.shape[1] > BLOCK:
        pad = (-values.shape[1]) % BLOCK
        if pad:
            values = F.pad(values, (0, pad))
        values = values.reshape(values.shape[0], -1, BLOCK).sum(-1)
    return values.sum(-1)


def _per_channel(values: Tensor) -> Tensor:
    """Sum a ``(B, C, H, W)`` tensor over batch and pixels: ``(C,)``, thread-invariant."""
    return stable_sum(values.transpose(0, 1).reshape(values.shape[1], -1))


class _PointwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        w = weight.flatten(1)  # (O, C)
        out = torch.stack([(x * w[o].view(1, -1, 1, 1)).sum(1) for o in range(w.shape[0])], 1)
        return out if bias is None else out + bias.view(1, -1, 1, 1)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        w = weight.flatten(1)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = sum(grad[:, o : o + 1] * w[o].view(1, -1, 1, 1) for o in range(w.shape[0]))
        if ctx.needs_input_grad[1]:
            grad_w = torch.stack(
                [_per_channel(grad[:, o : o + 1] * x) for o in range(w.shape[0])]
            ).view_as(weight)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = _per_channel(grad)
        return grad_x, grad_w, grad_b


def pointwise_conv(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """A 1x1 convolution ``(B, C, H, W) -> (B, O, H, W)`` (``weight`` ``(O, C, 1, 1)``) whose
    output and gradients have the same bits at any thread count."""
    if weight.shape[-2:] != (1, 1) or weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"pointwise_conv needs a (O, {x.shape[1]}, 1, 1) weight. Got {tuple(weight.shape)}"
        )
    return _PointwiseConv.apply(x.contiguous(), weight, bias)


def _per_image_mean(values: Tensor) -> Tensor:
    """``(B, ...)`` -> ``(B, 1, 1, 1)`` means over everything but the batch, thread-invariant."""
    flat = values.reshape(values.shape[0], -1)
    return (stable_sum(flat) / flat.shape[1]).view(-1, 1, 1, 1)


class _ZScore(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, floor: float) -> Tensor:
        centred = x - _per_image_mean(x)
        std = _per_image_mean(centred * centred).sqrt()
        scale = std.clamp_min(floor)
        z = centred / scale
        ctx.save_for_backward(z, scale, std > floor)
        return z

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        z, scale, free = ctx.saved_tensors
        g = grad - _per_image_mean(grad)
        # Where the std is not floored it depends on x too: remove the part along z.
        g = torch.where(free, g - z * _per_image_mean(grad * z), g)
        return g / scale, None


def zscore_stable(images: Tensor, floor: float) -> Tensor:
    """``(x - mean) / max(std, floor)`` per image (population std), differentiable, with the
    same bits at any thread count."""
    return _ZScore.apply(images.contiguous(), floor)

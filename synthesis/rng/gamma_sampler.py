"""Gamma variates from the counter-based streams (Marsaglia & Tsang 2000).

Built on :func:`synthesis.rng.counter.normal` and :func:`synthesis.rng.counter.uniform`, so
every value is a pure function of ``(row seed, stream, element index)``: a row's draws do not
depend on its batch. Used for the object intensities of the denoiser's clean targets
(:mod:`synthesis.render.clean_model`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from synthesis.rng.counter import normal, uniform

__all__ = ["gamma"]

#: Gamma draws are Marsaglia-Tsang proposals; P(all rejected) < 0.05**8 per value.
_GAMMA_TRIES = 8


def gamma(shape_k: Tensor, seeds: Tensor, size: tuple[int, ...], stream: int) -> Tensor:
    """Gamma(shape_k, 1) variates ``(B, *size)`` from per-row seeds (Marsaglia & Tsang 2000).

    ``shape_k`` is ``(B,)``; ``k < 1`` uses ``Gamma(k + 1) U**(1/k)``. Each value takes the
    first of :data:`_GAMMA_TRIES` proposals that is accepted (acceptance > 95% each; if all
    are rejected, which has probability < 1e-10, the mode-free value ``d`` is used). Values are
    pure functions of (seed, stream, position): proposal ``t`` draws its normal from ``sub``
    ``2 t + 1`` and its uniform from ``2 t + 2``; ``sub`` 0 gives the ``U`` of ``k < 1``.
    """
    b = seeds.shape[0]
    k = shape_k.to(torch.float64).reshape(b, *([1] * len(size)))
    boost = k < 1
    kk = torch.where(boost, k + 1, k)
    d = kk - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    out = d.expand(b, *size).clone()
    done = torch.zeros(out.shape, dtype=torch.bool, device=out.device)
    for t in range(_GAMMA_TRIES):
        z = normal(seeds, size, stream, sub=2 * t + 1).to(torch.float64)
        u = uniform(seeds, size, stream, sub=2 * t + 2).to(torch.float64)
        v = (1 + c * z) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * z * z + d - d * v + d * torch.log(v.clamp_min(1e-300)))
        take = ok & ~done
        out = torch.where(take, d * v, out)
        done |= take
    u0 = uniform(seeds, size, stream, sub=0).to(torch.float64)
    return torch.where(boost, out * u0 ** (1.0 / k), out)

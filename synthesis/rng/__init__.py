"""Counter-based random numbers: every value a pure function of ``(row seed, stream, index)``.

- :mod:`synthesis.rng.counter`: the hash and the torch generators (uniform, normal, finite
  normal) and :func:`derive_seed`;
- :mod:`synthesis.rng.poisson_sampler`: exact Poisson (the compiled kernel on CPU, the
  scheduled torch sampler elsewhere);
- :mod:`synthesis.rng.gamma_sampler`: gamma variates (Marsaglia & Tsang);
- :mod:`synthesis.rng.kernels`: the same values compiled for CPU (Numba);
- :mod:`synthesis.rng.constants`: the constants both paths share;
- :mod:`synthesis.rng.streams`: the registry of every stream id.

Definitions: ``docs/definitions.md#randomness``.
"""

from synthesis.rng import streams
from synthesis.rng.counter import (
    derive_seed,
    finite_normal,
    normal,
    random_bits,
    uniform,
)
from synthesis.rng.gamma_sampler import gamma
from synthesis.rng.poisson_sampler import POISSON_BACKENDS, poisson

__all__ = [
    "POISSON_BACKENDS",
    "derive_seed",
    "finite_normal",
    "gamma",
    "normal",
    "poisson",
    "random_bits",
    "streams",
    "uniform",
]

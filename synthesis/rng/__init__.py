"""Counter-based random numbers: every value a pure function of ``(row seed, stream, index)``.

- :mod:`synthesis.rng.counter`: the torch generator (uniform, normal, exact Poisson) and
  :func:`derive_seed`;
- :mod:`synthesis.rng.kernels`: the same values compiled for CPU (Numba);
- :mod:`synthesis.rng.constants`: the constants both paths share;
- :mod:`synthesis.rng.streams`: the registry of every stream id.

Definitions: ``docs/definitions.md#randomness``.
"""

from synthesis.rng import streams
from synthesis.rng.counter import (
    POISSON_BACKENDS,
    derive_seed,
    normal,
    poisson,
    random_bits,
    uniform,
)

__all__ = [
    "POISSON_BACKENDS",
    "derive_seed",
    "normal",
    "poisson",
    "random_bits",
    "streams",
    "uniform",
]

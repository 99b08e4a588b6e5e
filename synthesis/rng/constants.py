"""Constants of the counter-based generator, shared by the torch code
(:mod:`synthesis.rng.counter`, :mod:`synthesis.rng.poisson_sampler`) and the compiled CPU
kernels (:mod:`synthesis.rng.kernels`).

One source for both paths: a changed constant changes both, so the two backends cannot drift
apart (tests compare them bit for bit).
"""

from __future__ import annotations

import math

#: lowbias32 (Chris Wellons' 32-bit integer mixer): mask and its two multipliers.
M32 = 0xFFFFFFFF
C1 = 0x7FEB352D
C2 = 0x846CA68B
#: ``C2`` with the same bits as a signed int32 (torch multiplies int32 tensors).
C2_I32 = C2 - (1 << 32)
#: Poisson: sequential-search inversion below this rate, Hormann's PTRS from it (as numpy).
PTRS_MIN_RATE = 10.0
#: Inversion gives up after this many steps (P(k > 200 | rate < 10) is far below 1e-100).
INVERSION_MAX_STEPS = 200
#: log(k!) for k < 256, exact to float64 rounding (math.lgamma); Stirling's series above.
LOG_FACTORIAL_TABLE = tuple(math.lgamma(k + 1.0) for k in range(256))
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)

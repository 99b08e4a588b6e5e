"""Image synthesis for FluoroBench-C: masks, mask->image rendering, corruptions and attacks.

Everything here is a batched, device-agnostic torch function on ``(B, 1, H, W)`` tensors.
Randomness comes only from explicit per-row seeds (see :mod:`synthesis.rng`), so any output
can be replayed from the parameters stored with its row. This package never imports
``builder``: the builder turns what is made here into dataset shards.
"""

__all__ = ["levels", "rng"]

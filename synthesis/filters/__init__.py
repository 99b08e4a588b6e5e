"""Filters: image operations that are neither a corruption nor a renderer but serve both.

- :mod:`synthesis.filters.gaussian`: the one Gaussian kernel factory and the separable
  Gaussian blur (symmetric boundaries, flux-preserving);
- :mod:`synthesis.filters.separable`: the compiled CPU kernel that runs those blurs, and the
  space-variant blur's, with the torch code's exact operations.

Filters are kept apart from :mod:`synthesis.corruptions` (as kornia keeps its filters apart
from its augmentations): the benchmark's blur levels live there and use these.
"""

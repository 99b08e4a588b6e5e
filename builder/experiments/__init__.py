"""Experiments that combine the build and the evaluation: they make packages, train models
on them and score them (docs/architecture.md).

- :mod:`builder.experiments.ablation`: which renderer component costs real-image IoU? The
  physics renderer with one component removed, the naive one with one added, each trained
  on and scored on real tiles (``benchmarks/ablation.py``, issue 27);
- :mod:`builder.experiments.fidelity`: does a model's drop on a synthetic split predict its
  drop on real images degraded the same way? (docs/definitions.md#fidelity)
- :mod:`builder.experiments.leaderboard`: the zoo of architectures trained with one recipe,
  evaluated on every split and under white-box attacks, and ranked
  (docs/definitions.md#leaderboard);
- :mod:`builder.experiments.synthesizer`: the pix2pix GAN renderer and its denoiser fitted
  on a source's real image/mask pairs, written as weights, a model card and ``metrics.json``.

Only the command line and the benchmark scripts import this room.
"""

"""Experiments that combine the build and the evaluation: they make packages, train models
on them and score them (docs/architecture.md).

- :mod:`builder.experiments.fidelity`: does a model's drop on a synthetic split predict its
  drop on real images degraded the same way? (docs/definitions.md#fidelity)

Only the command line and the benchmark scripts import this room.
"""

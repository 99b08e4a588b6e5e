"""Everything of FluoroBench-C that touches files, datasets, processes or the command line.

``builder`` turns what :mod:`synthesis` (the tensor code) produces into packages that
``datasets.load_dataset`` reads, and works with them, by room (docs/architecture.md):

- :mod:`builder.assembly`: the resumable, distributed build of a package;
- :mod:`builder.package`: the on-disk and Hub format (no torch): split plan, row schema,
  shards, manifest, dataset card, verify, publish;
- :mod:`builder.evaluation`: scoring a model on a package;
- :mod:`builder.experiments`: fidelity, leaderboard and GAN fitting, which build, train and
  score;
- :mod:`builder.distributed`: the process group of a multi-process launch;
- :mod:`builder.cli`: the command line, ``fluorobench-c``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fluorobench-c")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0"

__all__ = ["__version__"]

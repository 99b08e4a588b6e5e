"""The Hub package side of FluoroBench-C: split plan, shard writing, dataset card, verify, publish.

``builder`` turns what :mod:`synthesis` produces into Parquet shards that
``datasets.load_dataset`` reads. The command line (``fluorobench-c``) lives in
:mod:`builder.cli`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fluorobench-c")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0"

__all__ = ["__version__"]

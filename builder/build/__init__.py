"""The build: options, the pipeline, the images of one config, the reference model.

- :mod:`builder.build.options`: :class:`BuildOptions`, checked before anything is written;
- :mod:`builder.build.pipeline`: :func:`build`, resumable, the one writer of the manifest;
- :mod:`builder.build.units`: the work units, the queue the ranks take them from, records;
- :mod:`builder.build.images`: masks -> images -> corruptions -> rows of one config;
- :mod:`builder.build.reference`: the reference U-Net, trained on tensors.
"""

from builder.build.options import BuildOptions
from builder.build.pipeline import build

__all__ = ["BuildOptions", "build"]

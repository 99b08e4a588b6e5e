"""The build: options, the pipeline, the images of one config, the reference model.

- :mod:`builder.assembly.options`: :class:`BuildOptions`, checked before anything is written;
- :mod:`builder.assembly.pipeline`: :func:`build`, resumable, the one writer of the manifest;
- :mod:`builder.assembly.units`: the work units, the queue the ranks take them from, records;
- :mod:`builder.assembly.images`: masks -> images -> corruptions -> rows of one config;
- :mod:`builder.assembly.reference`: the reference U-Net, trained on tensors.
"""

from builder.assembly.options import BuildOptions
from builder.assembly.pipeline import build

__all__ = ["BuildOptions", "build"]

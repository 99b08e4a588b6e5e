"""The on-disk and Hub format of a package, with no torch import.

- :mod:`builder.package.plan`: which splits exist and how each is made;
- :mod:`builder.package.features`: the row schema, declared once;
- :mod:`builder.package.shards`: encoding rows and writing Parquet shards atomically;
- :mod:`builder.package.manifest`: the manifest, its lock and its queries;
- :mod:`builder.package.card` and :mod:`builder.package.samples`: the dataset card and its
  sample grids;
- :mod:`builder.package.verify` and :mod:`builder.package.publish`: checking and uploading.
"""

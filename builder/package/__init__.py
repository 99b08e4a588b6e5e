"""The on-disk and Hub format of a package, with no torch import.

- :mod:`builder.package.plan`: which splits exist and how each is made;
- :mod:`builder.package.features`: the row schema, declared once;
- :mod:`builder.package.shards`: encoding rows and writing Parquet shards atomically;
- :mod:`builder.package.manifest`: the manifest, its lock and its queries;
- :mod:`builder.package.card` and :mod:`builder.package.samples`: the dataset card and its
  sample grids;
- :mod:`builder.package.verify`: checking a package against its manifest;
- :mod:`builder.package.publish`: uploading it, in named steps, from the plan of
  :mod:`builder.package.upload_plan` (what to send, computed without the network) through
  :mod:`builder.package.hub` (every Hub call, its errors typed and the token scrubbed);
- :mod:`builder.package.model_repos`: the reference U-Nets as Hub model repos (same transport);
- :mod:`builder.package.eval_results`: the Hub's ``eval.yaml`` and ``.eval_results/`` format.
"""

"""What every layer's code runs with, torch or not: typed errors and their exit codes
(:mod:`~synthesis.runtime.errors`), file hashes and atomic writes
(:mod:`~synthesis.runtime.files`), the progress-callback protocol
(:mod:`~synthesis.runtime.progress`) and the device rule (:mod:`~synthesis.runtime.device`).

Only ``device`` imports torch, so the torch-free package format (``builder.package``) can
hash and write files through ``files`` and raise the errors of ``errors``.
"""

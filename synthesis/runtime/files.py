"""Files, the one way: sha256 of a file, and atomic writes (temporary name, fsync, rename).

Shared by the model files of :mod:`synthesis.models.weights` and the package writer of
:mod:`builder.package`: nothing half-written ever stands under a final name. No torch here,
so the package side can use it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def sha256_file(path: str | os.PathLike[str]) -> str:
    """sha256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def temporary_name(path: Path) -> Path:
    """The name a file is written under before it is renamed to ``path``: hidden, beside it,
    per process (``.NAME.tmp-PID``); a killed writer's leftovers match ``.*.tmp-*``."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary name beside ``path``, fsync, then rename over it."""
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

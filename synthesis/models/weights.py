"""Model files of :mod:`synthesis`: atomic safetensors writes and the one-record header.

A model file holds its state dict and, under one header key, a JSON record
``{"architecture": {...}, "metadata": {...}}``. One key only: safetensors writes several
header entries in a varying order, which would change the file's sha256 between saves.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import Tensor

from synthesis.runtime.files import sha256_file, temporary_name


def atomic_save(tensors: dict[str, Tensor], path: Path, header: dict[str, str]) -> str:
    """Write a safetensors file under a temporary name, rename it, return its sha256."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)  # a killed writer's leftover matches the build's clean-up
    try:
        save_file(tensors, tmp, metadata=header)
        digest = sha256_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return digest


def read_record(path: Path, key: str, what: str) -> dict[str, Any]:
    """The JSON record stored under ``key`` in the header of the safetensors file ``path``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the header has no ``key`` (not a FluoroBench-C ``what``).
    """
    from safetensors import safe_open

    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist. Got no file")
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
    if key not in header:
        raise ValueError(
            f"{path} is not a FluoroBench-C {what} file: its safetensors header must hold "
            f"'{key}'. Got keys {sorted(header)}"
        )
    return json.loads(header[key])

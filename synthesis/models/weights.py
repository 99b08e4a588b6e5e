"""Model files of :mod:`synthesis`: atomic safetensors writes and the one-record header.

A model file holds its state dict and, under one header key, a JSON record
``{"architecture": {...}, "metadata": {...}}``. One key only: safetensors writes several
header entries in a varying order, which would change the file's sha256 between saves.

The reference U-Net's key, :data:`MODEL_HEADER_KEY`, and its reader,
:func:`read_model_record`, are defined here only: :mod:`synthesis.models.unet` writes and
loads with them, and :mod:`builder.package.model_repos` reads the record without torch. This
module imports no torch: headers are read with safetensors' numpy backend, and
:func:`atomic_save` imports ``safetensors.torch`` only when it is called.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from synthesis.runtime.errors import InputError
from synthesis.runtime.files import sha256_file, temporary_name

#: The header key of the reference U-Net's record (:func:`synthesis.models.unet.save_model`).
MODEL_HEADER_KEY = "fluorobench.model"


class WeightsFileError(InputError):
    """A weights file whose safetensors header cannot be read, lacks its FluoroBench-C
    record or holds a record that is not JSON; the message names the file (exit code 2)."""


def atomic_save(tensors: dict[str, Any], path: Path, header: dict[str, str]) -> str:
    """Write a safetensors file of ``tensors`` (name -> torch tensor) under a temporary
    name, rename it, return its sha256."""
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

    Read with safetensors' numpy backend: the header only, no tensor, no torch.

    Raises:
        FileNotFoundError: no such file.
        WeightsFileError: not a safetensors file, no ``key`` in its header (not a
            FluoroBench-C ``what``), or a record that is not JSON. A ``ValueError``.
    """
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist. Got no file")
    try:
        with safe_open(str(path), framework="numpy") as f:
            header = f.metadata() or {}
    except SafetensorError as exc:
        raise WeightsFileError(f"{path} is not a safetensors file ({exc})") from None
    if key not in header:
        raise WeightsFileError(
            f"{path} is not a FluoroBench-C {what} file: its safetensors header must hold "
            f"'{key}'. Got keys {sorted(header)}"
        )
    try:
        return json.loads(header[key])
    except json.JSONDecodeError as exc:
        raise WeightsFileError(
            f"{path}: the '{key}' record of its safetensors header is not JSON ({exc})"
        ) from None


def read_model_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The record of a reference U-Net file (:data:`MODEL_HEADER_KEY`): ``{"architecture":
    {"class": "UNet", constructor arguments}, "metadata": {...}}``.

    Raises:
        FileNotFoundError: no such file.
        WeightsFileError: not a safetensors file, or no U-Net record in its header.
    """
    return read_record(Path(path), MODEL_HEADER_KEY, "model")

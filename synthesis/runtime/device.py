"""The device rule, in one place: ``cpu``, ``cuda`` or ``cuda:N``; CUDA when present.

torch is imported only when a device is resolved, so the command line can check a name
without loading it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from synthesis.runtime.errors import InputError

if TYPE_CHECKING:
    import torch

#: What ``--device`` accepts.
DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?)$")


def default_device() -> str:
    """``"cuda"`` when a CUDA device is available, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device_name(name: str) -> str:
    """``name`` if it is ``cpu``, ``cuda`` or ``cuda:N``; else :class:`InputError`."""
    if not DEVICE_PATTERN.match(name):
        raise InputError(f"--device must be cpu, cuda or cuda:N. Got {name!r}")
    return name


def resolve_device(name: str | torch.device | None) -> torch.device:
    """The device to run on: ``name``, or :func:`default_device` when None.

    Raises:
        InputError: a malformed name, or CUDA asked for on a machine without it (or an
            index past the last device).
    """
    import torch

    if isinstance(name, torch.device):
        return name
    if name is None:
        return torch.device(default_device())
    check_device_name(name)
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {name}: CUDA is not available on this machine")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise InputError(
                f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    return torch.device(name)

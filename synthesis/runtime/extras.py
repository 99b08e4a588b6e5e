"""Optional extras: whether the modules an extra provides import, and how to install it."""

from __future__ import annotations

import importlib
from collections.abc import Sequence

__all__ = ["missing_extra"]


def missing_extra(extra: str, modules: Sequence[str]) -> str | None:
    """None when every module of ``modules`` imports, else how to install ``extra``.

    Example:
        >>> missing_extra("dev", ["json"]) is None
        True
        >>> missing_extra("ome", ["no_such_module_here"]).split(" (")[0]
        'needs the ome extra: pip install "fluorobench-c[ome]"'
    """
    try:
        for name in modules:
            importlib.import_module(name)
    except ImportError as exc:
        return f'needs the {extra} extra: pip install "fluorobench-c[{extra}]" ({exc})'
    return None

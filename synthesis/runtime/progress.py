"""Progress reporting as library code sees it: a factory the caller passes in.

Library code never draws a progress bar; it takes an optional :data:`ProgressFactory` and
calls ``factory(total, desc, unit)`` for each long loop, then ``update`` and ``close`` on what
it returns. The command line passes its one tqdm factory (:func:`builder.cli.common.progress`);
other callers pass nothing, and :func:`no_progress` stands in.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def update(self, n: int = 1) -> object: ...
    def close(self) -> object: ...


class ProgressFactory(Protocol):
    def __call__(self, total: int | None, desc: str, unit: str = "img") -> Progress: ...


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def no_progress(total: int | None, desc: str, unit: str = "img") -> Progress:
    """A progress bar that shows nothing."""
    return _NoProgress()

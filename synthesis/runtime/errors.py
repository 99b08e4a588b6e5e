"""The typed errors of FluoroBench-C's library code.

Library code never prints or exits: it raises one of these, with a message that names the
file or argument and what was wrong. The command line (:mod:`builder.cli`) maps each class
to an exit code through :attr:`FluoroBenchError.exit_code`.
"""

from __future__ import annotations


class FluoroBenchError(Exception):
    """Base class. ``exit_code``: what the command line returns for it."""

    exit_code: int = 1

    def __init__(self, *args: object, collective: bool = False) -> None:
        super().__init__(*args)
        #: Raised alike by every rank of a multi-process job: only rank 0 reports it.
        self.collective = collective


class InputError(FluoroBenchError, ValueError):
    """A bad argument or input (a path, a name, a number out of range), found before any
    work: exit code 2. A ``ValueError``, so callers that catch those keep working."""

    exit_code = 2


class RefusedError(FluoroBenchError):
    """The job would replace or collide with something it must not touch (a different build
    in the folder, a lock held by another process, a Hub repo with other content): exit
    code 2, nothing written."""

    exit_code = 2


class JobFailed(FluoroBenchError):
    """The job started and failed part-way (e.g. a network error); re-running the same
    command resumes it: exit code 1."""

    exit_code = 1

"""``--workers N``: one job on N local processes, without typing ``torchrun``.

The processes are started by ``torch.multiprocessing`` and join one ``torch.distributed``
group through the same environment ``torchrun`` sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), so the library sees no difference. If a
worker dies (even by SIGKILL), the others are stopped and the command fails; re-running it,
with any number of workers, resumes.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Callable


def add_arguments(p: argparse.ArgumentParser) -> None:
    from builder.cli import common

    p.add_argument(
        "--workers",
        type=common.counts,
        default=1,
        help="processes on this machine (torch.distributed, gloo/NCCL); same bytes at any number",
    )
    p.add_argument(
        "--threads",
        type=common.counts,
        default=None,
        help="torch threads per worker (default: the process's threads // workers, at least 1)",
    )
    p.add_argument(
        "--rendezvous-timeout",
        type=float,
        default=600.0,
        help="seconds a rank waits to reach the others (torchrun or --workers)",
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run ``run(args)`` on ``args.workers`` processes; the exit code of the job."""
    import torch
    import torch.multiprocessing as mp

    workers = args.workers
    threads = args.threads or max(1, torch.get_num_threads() // workers)
    env = {
        "WORLD_SIZE": str(workers),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
    }
    verbose = bool(getattr(args, "verbose", False))
    try:
        mp.start_processes(
            _worker,
            args=(run, args, env, threads, verbose),
            nprocs=workers,
            start_method="spawn",
        )
    except mp.ProcessExitedException as exc:
        if exc.exit_code < 0:  # killed by a signal: the others have been stopped
            print(
                f"fluorobench-c: error: worker {exc.error_index} was killed "
                f"({exc.signal_name}); re-run the same command to resume",
                file=sys.stderr,
            )
            return 1
        return exc.exit_code
    except mp.ProcessRaisedException as exc:
        print(f"fluorobench-c: error: a worker failed:\n{exc}", file=sys.stderr)
        return 1
    return 0


def _worker(
    local_rank: int,
    run: Callable[[argparse.Namespace], int],
    args: argparse.Namespace,
    env: dict[str, str],
    threads: int,
    verbose: bool,
) -> None:
    import torch

    from builder.cli import run_command

    os.environ.update(env, RANK=str(local_rank), LOCAL_RANK=str(local_rank))
    torch.set_num_threads(threads)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format=f"%(levelname)s [rank {local_rank}] %(name)s: %(message)s",
    )
    args.workers = 1  # this process is one of them
    code = run_command(run, args)
    if code:
        sys.exit(code)

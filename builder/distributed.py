"""Many processes, one job: ``torch.distributed`` as launched by ``torchrun`` (or by
``fluorobench-c build --workers N``), with gloo on CPU and NCCL for CUDA tensors.

What the build and ``evaluate`` need of it, and nothing more:

- :func:`join` joins the process group that the launcher's environment describes
  (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), or returns
  the one-process :data:`SOLO` context when there is none; a rank that cannot reach the
  rendezvous gets one :class:`LaunchError` naming the address and the timeout. A job that
  runs others (``fidelity`` builds packages) joins once: a :func:`join` inside an open one
  gets a context on the same group, with keys of its own.
- :class:`Context` holds rank, world size and the process group's key-value store.
  :meth:`Context.queue` is a dynamic work queue on that store: every rank holds the same
  ordered list of units and takes the next one with an atomic ``store.add``, so a rank that
  finishes early takes more (greedy list scheduling: the finish times differ by at most one
  unit). :meth:`Context.agree` checks that every rank was given the same arguments.
- :meth:`Context.wait_key` waits for a flag without a timeout (a reference model may train
  for an hour) by polling ``store.check``; collectives are used only where every rank
  arrives together.

No home-made scheduler or transport: the store and the collectives are torch's.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from synthesis.runtime.errors import JobFailed, RefusedError

logger = logging.getLogger(__name__)

#: The context of the open outermost :func:`join` of this process, if any.
_OPEN: list[Context] = []
#: How many nested :func:`join` blocks this process has opened (their key prefixes).
_NESTED: list[int] = [0]

#: How long a rank waits to reach the rendezvous (and for a collective), by default.
RENDEZVOUS_TIMEOUT_S = 600.0
_POLL_S = 0.5


class LaunchError(RefusedError):
    """A multi-process launch that cannot work (a rank that cannot reach the rendezvous,
    ranks given different arguments, an output folder that not every rank sees): exit code
    2, nothing written."""


@dataclass
class Context:
    """Where this process stands in the job. ``store`` is None when ``world_size`` is 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    store: Any = None
    prefix: str = ""
    _opened: dict[str, int] = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def device(self, device: Any) -> Any:
        """``device``, with a CUDA device made this rank's own (``cuda:LOCAL_RANK``)."""
        import torch

        if self.distributed and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def queue(self, name: str, count: int) -> Iterator[int]:
        """Indices ``0..count-1`` shared out across ranks as each asks for the next; every
        index goes to exactly one rank. One process: all of them, in order. Every rank must
        open the same queues in the same order (each opening is a new queue)."""
        if not self.distributed:
            yield from range(count)
            return
        self._opened[name] = self._opened.get(name, 0) + 1
        key = self.key(f"queue/{name}/{self._opened[name]}")
        while True:
            index = int(self.store.add(key, 1)) - 1
            if index >= count:
                return
            yield index

    def set_key(self, name: str, value: str = "1") -> None:
        if self.distributed:
            self.store.set(self.key(name), value)

    def wait_key(self, name: str, *, poll_s: float = _POLL_S) -> None:
        """Return once some rank has :meth:`set_key` ``name`` (at once in one process).

        Raises:
            JobFailed: another rank failed (:meth:`fail`) meanwhile.
        """
        if not self.distributed:
            return
        key, failed = self.key(name), self.key("failed")
        while not self.store.check([key]):
            if self.store.check([failed]):
                raise JobFailed(
                    f"stopped: {self.store.get(failed).decode()}; re-run the same command "
                    "to resume",
                    collective=True,
                )
            time.sleep(poll_s)

    def fail(self, message: str) -> None:
        """Tell the other ranks this one failed, so none waits for it forever."""
        if self.distributed:
            try:
                self.store.set(self.key("failed"), message)
            except Exception:  # the store may be gone with rank 0; the launcher reports it
                logger.debug("could not record the failure in the store", exc_info=True)

    def barrier(self) -> None:
        """A collective barrier (every rank arrives together, within the timeout)."""
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def arrive(self, name: str) -> None:
        """Wait, without a timeout, until every rank has arrived at ``name``."""
        if not self.distributed:
            return
        if int(self.store.add(self.key(f"arrive/{name}"), 1)) == self.world_size:
            self.set_key(f"all/{name}")
        self.wait_key(f"all/{name}")

    def leave(self) -> None:
        """The last call of a job: rank 0, which hosts the store, returns only once every
        rank has arrived here, so no rank still polling finds the store gone."""
        if not self.distributed:
            return
        key = self.key("left")
        self.store.add(key, 1)
        if self.is_main:
            while int(self.store.add(key, 0)) < self.world_size:
                time.sleep(_POLL_S / 5)

    def agree(self, what: str, values: dict[str, Any]) -> None:
        """Raise :class:`LaunchError` on every rank unless all ranks hold the same
        ``values``; the message names the ranks and the fields that differ."""
        if not self.distributed:
            return
        import torch.distributed as dist

        mine = json.dumps(values, sort_keys=True, default=str)
        gathered: list[str | None] = [None] * self.world_size
        dist.all_gather_object(gathered, mine)
        first = json.loads(gathered[0] or "{}")
        for rank, text in enumerate(gathered):
            other = json.loads(text or "{}")
            if other != first:
                fields = sorted(k for k in set(first) | set(other) if first.get(k) != other.get(k))
                detail = ", ".join(f"{k}: {first.get(k)!r} vs {other.get(k)!r}" for k in fields)
                raise LaunchError(
                    f"the ranks were given different {what}: rank 0 and rank {rank} differ in "
                    f"{detail}. Launch every rank with the same command",
                    collective=True,
                )

    def all_ok(self, ok: bool) -> list[int]:
        """The ranks (all of them must call) whose ``ok`` was False."""
        if not self.distributed:
            return [] if ok else [0]
        import torch
        import torch.distributed as dist

        flags = torch.zeros(self.world_size, dtype=torch.int64)
        flags[self.rank] = 0 if ok else 1
        dist.all_reduce(flags)
        return [r for r, f in enumerate(flags.tolist()) if f]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order, on every rank (a collective:
        all ranks must call)."""
        if not self.distributed:
            return [value]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def sum_(self, values: Any) -> Any:
        """All-reduce ``values`` (a tensor) by sum, in place; returns it."""
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(values)
        return values


SOLO = Context()


def launched() -> bool:
    """True when the environment describes a multi-process job (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextmanager
def join(
    *, device_type: str = "cpu", timeout_s: float = RENDEZVOUS_TIMEOUT_S, job: str = "job"
) -> Iterator[Context]:
    """The process group of this launch, for the duration of the block (:data:`SOLO` when the
    environment holds none). ``device_type`` ``"cuda"`` adds NCCL for CUDA tensors (gloo
    keeps CPU tensors). The group is destroyed on exit.

    Inside an open ``join`` (a job that runs another: the fidelity run's builds), the block
    gets a context on the same process group whose store keys are its own (``job`` and a
    count of the nested blocks, the same on every rank as every rank opens them in the same
    order); the group stays up until the outer block ends.

    Raises:
        LaunchError: this rank could not reach the rendezvous within ``timeout_s``.
    """
    if not launched():
        yield SOLO
        return
    if _OPEN:
        outer = _OPEN[-1]
        _NESTED[0] += 1
        yield Context(
            rank=outer.rank,
            world_size=outer.world_size,
            local_rank=outer.local_rank,
            store=outer.store,
            prefix=f"{outer.prefix}{job}-{_NESTED[0]}/",
        )
        return
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ["WORLD_SIZE"])
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    backend = "cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo"
    try:
        dist.init_process_group(
            backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s)
        )
    except (RuntimeError, ValueError) as exc:  # DistStoreError and timeouts are RuntimeErrors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LaunchError(
            f"rank {rank} of {world} could not reach the rendezvous at {where} within "
            f"{timeout_s:g} s ({first}); check MASTER_ADDR/MASTER_PORT (torchrun "
            "--rdzv-endpoint) and that every rank is running"
        ) from None
    ctx = Context(
        rank=rank,
        world_size=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        store=dist.distributed_c10d._get_default_store(),
        prefix=f"fluorobench-c/{job}/",
    )
    logger.info("rank %d of %d joined the %s at %s (%s)", rank, world, job, where, backend)
    _OPEN.append(ctx)
    try:
        yield ctx
    finally:
        _OPEN.pop()
        dist.destroy_process_group()

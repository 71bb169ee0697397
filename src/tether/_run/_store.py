"""What the engine needs from a run store: the Storage protocol, and this process's owner id.

Implemented by ``tether.storage`` (SQLite, PostgreSQL). Every backend passes one conformance suite
(``tests/storage/test_conformance.py``). A backend stores one row per run, written as RUNNING when
the run starts and finalised when it ends, plus one heartbeat row per process (its *owner* id), so
runs left RUNNING by a dead process can be found.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Protocol, runtime_checkable

from ._events import RunStatus
from ._output import RunOutput

OWNER_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
"""This process's owner id; refreshed after ``fork`` by :func:`owner_id`."""

_owner_pid = os.getpid()


def owner_id() -> str:
    """The id under which this process owns its running runs (new in a forked child)."""
    global OWNER_ID, _owner_pid
    if os.getpid() != _owner_pid:
        OWNER_ID, _owner_pid = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}", os.getpid()
    return OWNER_ID


@runtime_checkable
class Storage(Protocol):
    """An async run store. All methods raise :class:`~tether.exceptions.StorageError` on failure.

    Backends must be safe to use from several event loops of one process (the sync bridge has its
    own loop) and from several processes at once, and must never block the event loop.

    Cancellation: every method may be abandoned by cancelling its caller, which then returns at
    once. An abandoned write either never happens or happens completely (one transaction), and
    never after a later write of the same run made through the same store. To let a write go on in
    the background, run it in a task of its own and wait for that task with a bound, rather than
    cancelling the call.

    Text: any valid Unicode string round-trips exactly; a lone surrogate (not valid Unicode) is a
    StorageError naming the run and column, raised before anything is written.
    """

    async def open(self) -> None:
        """Connect and create or migrate the schema. Idempotent; fails fast with a clear error."""
        ...

    async def aclose(self) -> None:
        """Release connections. The store may be opened again."""
        ...

    async def start_run(self, output: RunOutput, owner: str) -> None:
        """Write the run as RUNNING (insert or replace), owned by ``owner``, and refresh its heartbeat."""
        ...

    async def finish_run(self, output: RunOutput) -> None:
        """Write the run's final state (insert or replace); it is no longer owned.

        Idempotent: safe to call again (to retry a failed final write) and concurrently with
        :meth:`reap`, whose ERROR it overwrites. A finished run is never reaped.
        """
        ...

    async def get_run(self, run_id: str) -> RunOutput | None:
        """The stored run, or None."""
        ...

    async def list_runs(
        self,
        *,
        agent_id: str | None = None,
        session_id: str | None = None,
        status: RunStatus | None = None,
        limit: int | None = None,
    ) -> list[RunOutput]:
        """Runs matching every given filter, oldest first (in the order they started)."""
        ...

    async def heartbeat(self, owner: str) -> None:
        """Record that ``owner`` is alive: one write for all of its runs."""
        ...

    async def reap(self, stale_after: float) -> list[str]:
        """Mark ERROR every RUNNING run whose owner's heartbeat is older than ``stale_after`` seconds
        (or missing); return their ids. Runs owned by this process (:func:`owner_id`) are never
        reaped, whatever its heartbeat: it is alive, it is running this call."""
        ...

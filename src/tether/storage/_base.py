"""The Storage protocol: where runs are persisted, and the row shape every backend shares.

Every backend passes one conformance suite (``tests/storage/test_conformance.py``). A backend
stores one row per run, written as RUNNING when the run starts and finalised when it ends, plus one
heartbeat row per process (its *owner* id), so runs left RUNNING by a dead process can be found.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from typing import Any, Protocol, runtime_checkable

from .._messages import Message
from .._run._events import RunStatus
from .._run._output import RunMetrics, RunOutput
from ..exceptions import StorageError

SCHEMA_VERSION = 2
"""Bump with a migration step in every backend when the schema changes."""

CRASHED_ERROR = "worker exited while the run was active"
CRASHED_TYPE = "WorkerExited"

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


# -- the row shape shared by the SQL backends -----------------------------------------------------

COLUMNS = (
    "run_id",
    "agent_id",
    "agent_name",
    "session_id",
    "user_id",
    "parent_run_id",
    "model",
    "status",
    "content",
    "messages",
    "cancel_reason",
    "cancel_source",
    "error",
    "error_type",
    "metrics",
    "created_at",
)


def to_row(output: RunOutput) -> dict[str, Any]:
    """A RunOutput as column values; ``messages`` and ``metrics`` as JSON text.

    Raises StorageError, before anything is written, if a text holds a lone surrogate (not valid
    Unicode: UTF-8 cannot encode it, so no backend can store it).
    """
    row = {
        "run_id": output.run_id,
        "agent_id": output.agent_id,
        "agent_name": output.agent_name,
        "session_id": output.session_id,
        "user_id": output.user_id,
        "parent_run_id": output.parent_run_id,
        "model": output.model,
        "status": output.status.value,
        "content": output.content,
        "messages": json.dumps(
            [m.model_dump(exclude_defaults=True) for m in output.messages], ensure_ascii=False
        ),
        "cancel_reason": output.cancel_reason,
        "cancel_source": output.cancel_source,
        "error": output.error,
        "error_type": output.error_type,
        "metrics": output.metrics.model_dump_json(),
        "created_at": output.created_at,
    }
    for column, value in row.items():
        if isinstance(value, str):
            try:
                value.encode()
            except UnicodeEncodeError as exc:
                raise StorageError(
                    f"run {output.run_id!r} cannot be stored: its {column} holds a lone surrogate "
                    f"({value[exc.start]!r} at index {exc.start} of the column's text), which is not "
                    "valid Unicode"
                ) from exc
    return row


def from_row(row: Any) -> RunOutput:
    """A RunOutput from a row (mapping by column name); JSON columns may be text or already decoded."""
    messages = row["messages"]
    metrics = row["metrics"]
    return RunOutput(
        run_id=row["run_id"],
        agent_id=row["agent_id"],
        agent_name=row["agent_name"],
        session_id=row["session_id"],
        user_id=row["user_id"],
        parent_run_id=row["parent_run_id"],
        model=row["model"],
        status=RunStatus(row["status"]),
        content=row["content"] or "",
        messages=[
            Message.model_validate(m)
            for m in (json.loads(messages) if isinstance(messages, str) else messages)
        ],
        cancel_reason=row["cancel_reason"],
        cancel_source=row["cancel_source"],
        error=row["error"],
        error_type=row["error_type"],
        metrics=RunMetrics.model_validate_json(metrics)
        if isinstance(metrics, str)
        else RunMetrics(**metrics),
        created_at=row["created_at"],
    )

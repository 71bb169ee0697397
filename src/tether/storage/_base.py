"""The row shape every backend shares; the Storage protocol itself is the engine's (``_run/_store.py``).

Every backend passes one conformance suite (``tests/storage/test_conformance.py``). A backend
stores one row per run, written as RUNNING when the run starts and finalised when it ends, plus one
heartbeat row per process (its *owner* id), so runs left RUNNING by a dead process can be found.
"""

from __future__ import annotations

import json
from typing import Any

from .._messages import Message
from .._run._events import RunStatus
from .._run._output import RunMetrics, RunOutput
from .._run._store import Storage, owner_id
from ..exceptions import StorageError

__all__ = ["Storage", "owner_id"]  # defined by the engine, which needs them

SCHEMA_VERSION = 2
"""Bump with a migration step in every backend when the schema changes."""

CRASHED_ERROR = "worker exited while the run was active"
CRASHED_TYPE = "WorkerExited"

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

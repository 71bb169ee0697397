"""The row shape every backend shares; the Storage protocol itself is the engine's (``_run/_store.py``).

Every backend passes one conformance suite (``tests/storage/test_conformance.py``). A backend
stores one row per run, written as RUNNING when the run starts and finalised when it ends, plus one
heartbeat row per process (its *owner* id), so runs left RUNNING by a dead process can be found.

A run's events (``RunOutput.events``) are stored with its row, in the ``events`` column: NULL when
the run has none, else JSON text of a compact list (see :func:`to_row`). ``get_run`` reads them;
listings (``list_runs``) select NULL in their place, so listing many long runs stays cheap.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from pydantic import TypeAdapter, ValidationError

from .._messages import Message
from .._run._events import BaseRunEvent, RunContentEvent, RunEvent, RunOutputEvent, RunStatus, construct
from .._run._output import RunMetrics, RunOutput
from .._run._record import EventRecord
from .._run._store import Storage, owner_id
from ..exceptions import StorageError

__all__ = ["Storage", "owner_id"]  # defined by the engine, which needs them

logger = logging.getLogger("tether.storage")

SCHEMA_VERSION = 3
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
    "events",
)
LISTED_COLUMNS = ", ".join("NULL AS events" if column == "events" else column for column in COLUMNS)
"""The select list of listings: every column, but NULL for ``events`` (only ``get_run`` reads them)."""

EVENT_SHARED = ("run_id", "agent_id", "agent_name", "session_id")
"""Fields a run's events share with its row: left out of the stored events, restored when read."""
_EVENT: TypeAdapter[RunOutputEvent] = TypeAdapter(RunOutputEvent)


def to_row(output: RunOutput) -> dict[str, Any]:
    """A RunOutput as column values; ``messages``, ``metrics`` and ``events`` as JSON text.

    ``events`` is NULL when ``output.events`` is None, else a compact JSON list in ``event_index``
    order. RunContent events that share the row's fields (``EVENT_SHARED``) go in runs: consecutive
    ones of the same second as one array ``[first_event_index, created_at, content, content, ...]``
    (a few bytes per chunk besides its text); any other event as its ``model_dump(mode="json")``
    without the fields it shares with the row (one that differs from the row's value is kept).
    Written with ``ensure_ascii=False`` (JSON escapes NUL and the other control characters, so the
    text never holds a raw NUL).

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
        "events": None if output.events is None else _events_text(output, output.events),
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
        events=_events_from(row),
    )


def _events_text(output: RunOutput, events: Sequence[RunOutputEvent]) -> str:
    shared = {name: getattr(output, name) for name in EVENT_SHARED}
    items: list[Any] = []
    if isinstance(events, EventRecord) and events.common == shared:
        # A run of this process: its texts are stored as they were kept, with no object per chunk.
        others = iter(events.others)
        other = next(others, None)
        for first, second, texts in events.runs():
            while other is not None and other.event_index < first:
                items.append(_compact(other, shared))
                other = next(others, None)
            items.append([first, second, *texts])
        if other is not None:
            items.append(_compact(other, shared))
        items.extend(_compact(event, shared) for event in others)
    else:
        for event in events:
            item = _compact(event, shared)
            last = items[-1] if items else None
            if (
                type(item) is list
                and type(last) is list
                and last[1] == item[1]
                and last[0] + len(last) - 2 == item[0]
            ):
                last.append(item[2])  # the next text of the same run
            else:
                items.append(item)
    return json.dumps(items, ensure_ascii=False, separators=(",", ":"))


def _compact(event: BaseRunEvent, shared: dict[str, Any]) -> Any:
    """One event's stored form: ``[event_index, created_at, content]`` for a RunContent that shares
    every field with its row (a run of one), else its JSON object without the fields it shares with
    the row."""
    if (
        type(event) is RunContentEvent
        and event.status is RunStatus.running
        and type(event.content) is str
        and all(getattr(event, name) == value for name, value in shared.items())
    ):
        return [event.event_index, event.created_at, event.content]
    dumped = event.model_dump(mode="json")
    for name, value in shared.items():
        if dumped[name] == value:
            del dumped[name]
    return dumped


def _events_from(row: Any) -> list[RunOutputEvent] | None:
    """The stored events of a row (None when NULL). Unreadable ones are logged and read as None:
    the rest of the run stays readable."""
    text = row["events"]
    if text is None:
        return None
    shared = {name: row[name] for name in EVENT_SHARED}
    try:
        items = json.loads(text)
        if not isinstance(items, list):
            raise ValueError(f"not a JSON list: {text[:40]!r}")
        return [event for position, item in enumerate(items) for event in _events_of(position, item, shared)]
    # JSONDecodeError and pydantic's ValidationError are ValueErrors; very deep JSON is a RecursionError.
    except (ValueError, RecursionError) as exc:
        logger.warning("run %r: its stored events are unreadable, read as None: %s", row["run_id"], _why(exc))
        return None


def _events_of(position: int, item: Any, shared: dict[str, Any]) -> list[RunOutputEvent]:
    """The events of one stored item: an event object, or a run of texts (see :func:`to_row`)."""
    if isinstance(item, dict):
        try:  # strict, as JSON: a bool or a string is no index, and no field is left to its default
            event = _EVENT.validate_json(json.dumps({**shared, **item}), strict=True)
        except ValidationError as exc:
            raise ValueError(f"event {position}: {_why(exc)}") from exc
        missing = sorted(type(event).model_fields.keys() - event.model_fields_set)
        if missing:
            raise ValueError(f"event {position}: {', '.join(missing)} is missing")
        return [event]
    if (
        isinstance(item, list)
        and len(item) > 2
        and type(item[0]) is int
        and type(item[1]) is int
        and all(type(text) is str for text in item[2:])
    ):
        first, second = item[0], item[1]
        common = {"event": RunEvent.run_content, **shared, "created_at": second, "status": RunStatus.running}
        return [  # every field checked above
            construct(RunContentEvent, {**common, "event_index": first + offset, "content": text})
            for offset, text in enumerate(item[2:])
        ]
    shape = "[event_index, created_at, content, ...]"
    raise ValueError(f"item {position} is neither an event object nor {shape}: {item!r:.60}")


def _why(exc: Exception) -> str:
    """A one-line reason: the first of a ValidationError's errors, not all of them."""
    if not isinstance(exc, ValidationError):
        return str(exc)
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{exc.error_count()} validation error(s), the first at {where or 'the top'}: {first['msg']}"

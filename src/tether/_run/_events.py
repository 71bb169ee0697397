"""Run events and statuses: the string values are Agno's, so Agno clients feel at home."""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field


class RunEvent(StrEnum):
    """The kind of a run event (its ``event`` field)."""

    run_started = "RunStarted"
    run_content = "RunContent"
    tool_call_started = "ToolCallStarted"
    tool_call_completed = "ToolCallCompleted"
    run_completed = "RunCompleted"
    run_cancelled = "RunCancelled"
    run_error = "RunError"


class RunStatus(StrEnum):
    """The status of a run."""

    pending = "PENDING"
    running = "RUNNING"
    completed = "COMPLETED"
    cancelled = "CANCELLED"
    error = "ERROR"

    @property
    def is_active(self) -> bool:
        """True while the run has not ended."""
        return self in (RunStatus.pending, RunStatus.running)


CancelSource = Literal["user", "timeout", "consumer", "outer", "shutdown", "remote", "parent"]


class BaseRunEvent(BaseModel):
    """Fields every run event has. ``status`` is the run's status when the event was emitted.

    ``event_index`` is the event's position in its run: 0 for ``RunStarted``, then +1 per event as
    the run's own consumer received them (Agno's field; over SSE also the frame's ``id:``). A reader
    that attaches later (``agent.aattach(run_id, after=i)``) resumes after index ``i``.
    """

    model_config = ConfigDict(extra="forbid")

    event: RunEvent
    event_index: int = 0
    run_id: str
    agent_id: str
    agent_name: str | None = None
    session_id: str | None = None
    created_at: int = Field(default_factory=lambda: int(time.time()))
    status: RunStatus
    content: str | None = None

    @property
    def is_terminal(self) -> bool:
        """True for the one event that ends a run (completed, cancelled or error)."""
        return self.event in _TERMINAL


class RunStartedEvent(BaseRunEvent):
    """The run has started; always the first event, emitted before the model is called."""

    event: Literal[RunEvent.run_started] = RunEvent.run_started
    model: str | None = None


class RunContentEvent(BaseRunEvent):
    """One chunk of text from the model: ``content`` is the delta."""

    event: Literal[RunEvent.run_content] = RunEvent.run_content


class ToolCallStartedEvent(BaseRunEvent):
    """The model asked for a tool call and it is starting."""

    event: Literal[RunEvent.tool_call_started] = RunEvent.tool_call_started
    tool_call_id: str
    tool_name: str
    tool_args: dict[str, Any] = Field(default_factory=dict)


class ToolCallCompletedEvent(BaseRunEvent):
    """A tool call finished; ``content`` is its result, ``error`` set when it failed."""

    event: Literal[RunEvent.tool_call_completed] = RunEvent.tool_call_completed
    tool_call_id: str
    tool_name: str
    error: str | None = None
    duration: float | None = None


class RunCompletedEvent(BaseRunEvent):
    """The run finished normally; ``content`` is the full text."""

    event: Literal[RunEvent.run_completed] = RunEvent.run_completed


class RunCancelledEvent(BaseRunEvent):
    """The run was cancelled; ``content`` is the partial text delivered before the stop."""

    event: Literal[RunEvent.run_cancelled] = RunEvent.run_cancelled
    reason: str | None = None
    source: CancelSource | None = None


class RunErrorEvent(BaseRunEvent):
    """The run failed; ``content`` is the partial text, ``error`` a clear message."""

    event: Literal[RunEvent.run_error] = RunEvent.run_error
    error: str
    error_type: str


RunOutputEvent = Annotated[
    RunStartedEvent
    | RunContentEvent
    | ToolCallStartedEvent
    | ToolCallCompletedEvent
    | RunCompletedEvent
    | RunCancelledEvent
    | RunErrorEvent,
    Field(discriminator="event"),
]
"""Any run event; validate JSON into it with a ``pydantic.TypeAdapter(RunOutputEvent)``."""

_TERMINAL = frozenset({RunEvent.run_completed, RunEvent.run_cancelled, RunEvent.run_error})
TERMINAL_EVENT_TYPES = (RunCompletedEvent, RunCancelledEvent, RunErrorEvent)

_M = TypeVar("_M", bound=BaseModel)
_FIELDS_SETS: dict[type[BaseModel], set[str]] = {}
# BaseModel's own slot setters: calling them directly skips a lookup per attribute on the hot path.
_set_dict = BaseModel.__dict__["__dict__"].__set__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__


def construct(cls: type[_M], fields: dict[str, Any]) -> _M:
    """Build a model from already-valid values without validation (the per-chunk hot path).

    ``fields`` must hold every field of ``cls``; this is ``model_construct`` minus its per-field
    default handling, which costs more than the rest of the chunk's work.
    """
    fields_set = _FIELDS_SETS.get(cls)
    if fields_set is None:
        fields_set = _FIELDS_SETS[cls] = set(cls.model_fields)
    model = cls.__new__(cls)
    _set_dict(model, fields)
    # Shared safely: it already names every field, so pydantic's later ``add`` never changes it.
    _set_fields_set(model, fields_set)
    _set_extra(model, None)
    _set_private(model, None)
    return model

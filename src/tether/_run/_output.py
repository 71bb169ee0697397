"""The result of a run."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field

from .._messages import Message
from ._events import CancelSource, RunOutputEvent, RunStatus
from ._record import EventRecord


def _listed(events: Any) -> Any:
    """An EventRecord as a list: pydantic rebuilds a sequence of another type than list or tuple as
    ``type(events)(items)``, which an EventRecord is not built from."""
    return list(events) if isinstance(events, EventRecord) else events


class RunMetrics(BaseModel):
    """Timing and token counts of a run. Times are in seconds."""

    duration: float | None = None
    time_to_first_token: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None


class RunOutput(BaseModel):
    """Everything a run produced, whatever ended it.

    A cancelled run has ``status == RunStatus.cancelled``, the partial ``content`` and the
    ``cancel_reason``/``cancel_source``; a failed one has ``status == RunStatus.error`` and ``error``.
    """

    run_id: str
    agent_id: str
    agent_name: str | None = None
    session_id: str | None = None
    user_id: str | None = None
    parent_run_id: str | None = None
    model: str | None = None
    status: RunStatus
    content: str = ""
    messages: list[Message] = Field(default_factory=list)
    cancel_reason: str | None = None
    cancel_source: CancelSource | None = None
    error: str | None = None
    error_type: str | None = None
    metrics: RunMetrics = Field(default_factory=RunMetrics)
    created_at: int = Field(default_factory=lambda: int(time.time()))
    events: Annotated[Sequence[RunOutputEvent] | None, BeforeValidator(_listed)] = Field(
        default=None, exclude=True, repr=False
    )
    """The run's events as its consumer received them, in ``event_index`` order (set once it has ended,
    when the agent has storage, and stored with it), for readers that attach after the end. A sequence
    (a list when read from storage or validated). Left out of ``model_dump``/JSON: too big for every
    answer."""

"""The run engine: registry, the one run loop, events, output, and the consumer's stream."""

from ._events import (
    BaseRunEvent,
    CancelSource,
    RunCancelledEvent,
    RunCompletedEvent,
    RunContentEvent,
    RunErrorEvent,
    RunEvent,
    RunOutputEvent,
    RunStartedEvent,
    RunStatus,
    ToolCallCompletedEvent,
    ToolCallStartedEvent,
)
from ._handle import RunHandle
from ._loop import RunState
from ._output import RunMetrics, RunOutput
from ._registry import active_runs, cancel_run, registry
from ._stream import RunStream

__all__ = [
    "BaseRunEvent",
    "CancelSource",
    "RunCancelledEvent",
    "RunCompletedEvent",
    "RunContentEvent",
    "RunErrorEvent",
    "RunEvent",
    "RunHandle",
    "RunMetrics",
    "RunOutput",
    "RunOutputEvent",
    "RunStartedEvent",
    "RunState",
    "RunStatus",
    "RunStream",
    "ToolCallCompletedEvent",
    "ToolCallStartedEvent",
    "active_runs",
    "cancel_run",
    "registry",
]

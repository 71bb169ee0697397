"""The run engine: registry, the one run loop, events, output, and the consumer's stream."""

from ._context import RunContext
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
from ._lifecycle import CancelAnswer, CancelMode
from ._output import RunMetrics, RunOutput
from ._reader import RunReader
from ._registry import active_runs, registry
from ._state import RunSpec, RunState
from ._stream import RunStream

__all__ = [
    "BaseRunEvent",
    "CancelAnswer",
    "CancelMode",
    "CancelSource",
    "RunCancelledEvent",
    "RunCompletedEvent",
    "RunContentEvent",
    "RunContext",
    "RunErrorEvent",
    "RunEvent",
    "RunHandle",
    "RunMetrics",
    "RunOutput",
    "RunOutputEvent",
    "RunReader",
    "RunSpec",
    "RunStartedEvent",
    "RunState",
    "RunStatus",
    "RunStream",
    "ToolCallCompletedEvent",
    "ToolCallStartedEvent",
    "active_runs",
    "registry",
]

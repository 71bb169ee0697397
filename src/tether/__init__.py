"""tether: an asyncio-native agent runtime whose runs can be stopped promptly, from anywhere.

Example::

    from tether import Agent, RunEvent
    from tether.models.openai import OpenAIChat

    agent = Agent(name="Storyteller", model=OpenAIChat(id="gpt-5-mini"))
    async for event in agent.arun("Write a story", stream=True):
        if event.event == RunEvent.run_content:
            print(event.content, end="")
"""

from ._agent import Agent, RunOptions
from ._cancel import cancel_run
from ._messages import Message, ToolCall, ToolCallFunction
from ._run import (
    BaseRunEvent,
    CancelMode,
    CancelSource,
    RunCancelledEvent,
    RunCompletedEvent,
    RunContentEvent,
    RunContext,
    RunErrorEvent,
    RunEvent,
    RunMetrics,
    RunOutput,
    RunOutputEvent,
    RunStartedEvent,
    RunStatus,
    RunStream,
    ToolCallCompletedEvent,
    ToolCallStartedEvent,
    active_runs,
)
from ._sync import SyncRunStream
from .exceptions import (
    APIError,
    ConfigurationError,
    MaxStepsExceededError,
    ModelConnectionError,
    ModelError,
    ModelResponseError,
    ModelStatusError,
    ModelTimeoutError,
    RemoteCancelError,
    StorageError,
    StreamBusyError,
    TetherError,
    ToolCancelledError,
    ToolError,
)
from .tools import Tool, tool

__version__ = "0.1.0.dev0"

__all__ = [
    "APIError",
    "Agent",
    "BaseRunEvent",
    "CancelMode",
    "CancelSource",
    "ConfigurationError",
    "MaxStepsExceededError",
    "Message",
    "ModelConnectionError",
    "ModelError",
    "ModelResponseError",
    "ModelStatusError",
    "ModelTimeoutError",
    "RemoteCancelError",
    "RunCancelledEvent",
    "RunCompletedEvent",
    "RunContentEvent",
    "RunContext",
    "RunErrorEvent",
    "RunEvent",
    "RunMetrics",
    "RunOptions",
    "RunOutput",
    "RunOutputEvent",
    "RunStartedEvent",
    "RunStatus",
    "RunStream",
    "StorageError",
    "StreamBusyError",
    "SyncRunStream",
    "TetherError",
    "Tool",
    "ToolCall",
    "ToolCallCompletedEvent",
    "ToolCallFunction",
    "ToolCallStartedEvent",
    "ToolCancelledError",
    "ToolError",
    "__version__",
    "active_runs",
    "cancel_run",
    "tool",
]

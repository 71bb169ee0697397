"""tether: an asyncio-native agent runtime whose runs can be stopped promptly, from anywhere.

Example::

    from tether import Agent, RunEvent
    from tether.models.openai import OpenAIChat

    agent = Agent(name="Storyteller", model=OpenAIChat(id="gpt-5-mini"))
    async for event in agent.arun("Write a story", stream=True):
        if event.event == RunEvent.run_content:
            print(event.content, end="")
"""

from ._agent import Agent
from ._messages import Message, ToolCall, ToolCallFunction
from ._run import (
    BaseRunEvent,
    CancelSource,
    RunCancelledEvent,
    RunCompletedEvent,
    RunContentEvent,
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
    cancel_run,
)
from ._sync import SyncRunStream
from .exceptions import (
    ConfigurationError,
    ModelConnectionError,
    ModelError,
    ModelResponseError,
    ModelStatusError,
    ModelTimeoutError,
    TetherError,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "Agent",
    "BaseRunEvent",
    "CancelSource",
    "ConfigurationError",
    "Message",
    "ModelConnectionError",
    "ModelError",
    "ModelResponseError",
    "ModelStatusError",
    "ModelTimeoutError",
    "RunCancelledEvent",
    "RunCompletedEvent",
    "RunContentEvent",
    "RunErrorEvent",
    "RunEvent",
    "RunMetrics",
    "RunOutput",
    "RunOutputEvent",
    "RunStartedEvent",
    "RunStatus",
    "RunStream",
    "SyncRunStream",
    "TetherError",
    "ToolCall",
    "ToolCallCompletedEvent",
    "ToolCallFunction",
    "ToolCallStartedEvent",
    "__version__",
    "active_runs",
    "cancel_run",
]

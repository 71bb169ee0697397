"""tether: an asyncio-native agent runtime whose runs can be stopped promptly, from anywhere.

Example::

    from tether import Agent, RunEvent
    from tether.models.openai import OpenAIChat

    agent = Agent(name="Storyteller", model=OpenAIChat(id="gpt-5-mini"))
    async for event in agent.arun("Write a story", stream=True):
        if event.event == RunEvent.run_content:
            print(event.content, end="")

Names are imported when first used (PEP 562), so ``import tether.cli`` (the console script) starts in
milliseconds and can take over Ctrl-C before the heavy imports run.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # not typing's: importing typing alone would double this module's import time
if TYPE_CHECKING:
    from typing import Any

    from ._agent import Agent
    from ._cancel import cancel_run
    from ._messages import Message, ToolCall, ToolCallFunction
    from ._options import RunOptions
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
        RunNotFoundError,
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
    "RunNotFoundError",
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

_WHERE = {
    "APIError": ".exceptions",
    "Agent": "._agent",
    "BaseRunEvent": "._run",
    "CancelMode": "._run",
    "CancelSource": "._run",
    "ConfigurationError": ".exceptions",
    "MaxStepsExceededError": ".exceptions",
    "Message": "._messages",
    "ModelConnectionError": ".exceptions",
    "ModelError": ".exceptions",
    "ModelResponseError": ".exceptions",
    "ModelStatusError": ".exceptions",
    "ModelTimeoutError": ".exceptions",
    "RemoteCancelError": ".exceptions",
    "RunCancelledEvent": "._run",
    "RunCompletedEvent": "._run",
    "RunContentEvent": "._run",
    "RunContext": "._run",
    "RunErrorEvent": "._run",
    "RunEvent": "._run",
    "RunMetrics": "._run",
    "RunOptions": "._options",
    "RunOutput": "._run",
    "RunOutputEvent": "._run",
    "RunStartedEvent": "._run",
    "RunStatus": "._run",
    "RunStream": "._run",
    "RunNotFoundError": ".exceptions",
    "StorageError": ".exceptions",
    "StreamBusyError": ".exceptions",
    "SyncRunStream": "._sync",
    "TetherError": ".exceptions",
    "Tool": ".tools",
    "ToolCall": "._messages",
    "ToolCallCompletedEvent": "._run",
    "ToolCallFunction": "._messages",
    "ToolCallStartedEvent": "._run",
    "ToolCancelledError": ".exceptions",
    "ToolError": ".exceptions",
    "active_runs": "._run",
    "cancel_run": "._cancel",
    "tool": ".tools",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'tether' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

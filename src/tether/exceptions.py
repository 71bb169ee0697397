"""Every exception tether raises, in one place.

::

    TetherError
     ├── APIError                  a call to a tether server failed (``status_code``, ``error_code``)
     ├── ConfigurationError        bad arguments or settings; raised at the call (also a ValueError)
     ├── MaxStepsExceededError     the model kept calling tools past ``max_steps``; ends the run in error
     ├── RemoteCancelError         a cancel for a run in another process could not be delivered (Redis down)
     ├── RunNotFoundError          no run with that id to attach to (also a LookupError)
     ├── StorageError              the run store failed: unreachable, corrupt, read-only, or a failed write
     ├── StreamBusyError           a RunStream already has a reader (also a RuntimeError)
     ├── ToolError                 raise it in a tool to send the model a plain error message
     │    └── ToolCancelledError   raised by ``RunContext.raise_if_cancelled()`` in a cancelled run
     └── ModelError                the model provider failed; a run reports it as a RunError event
          ├── ModelConnectionError the endpoint could not be reached
          ├── ModelTimeoutError    the endpoint did not answer in time
          ├── ModelStatusError     the endpoint answered with an HTTP error (``status_code``)
          └── ModelResponseError   the stream broke off or could not be parsed

Errors of the provider's client (``openai``, ``httpx2``) are translated into ``ModelError`` at the
adapter boundary and raised ``from`` the original, so callers never need the provider's classes.
A run never raises these from ``await agent.arun()``: it ends with status ``ERROR`` and the message.
"""

from __future__ import annotations

__all__ = [
    "APIError",
    "ConfigurationError",
    "MaxStepsExceededError",
    "ModelConnectionError",
    "ModelError",
    "ModelResponseError",
    "ModelStatusError",
    "ModelTimeoutError",
    "RemoteCancelError",
    "RunNotFoundError",
    "StorageError",
    "StreamBusyError",
    "TetherError",
    "ToolCancelledError",
    "ToolError",
]


class TetherError(Exception):
    """Base class of every tether error."""


class APIError(TetherError):
    """A call to a tether server failed: an error answer, or no answer (``status_code`` None)."""

    def __init__(self, detail: str, *, status_code: int | None = None, error_code: str | None = None) -> None:
        super().__init__(f"{detail} (HTTP {status_code}, {error_code})" if status_code else detail)
        self.detail = detail
        self.status_code = status_code
        self.error_code = error_code


class ConfigurationError(TetherError, ValueError):
    """An argument or setting is invalid; nothing was started."""


class MaxStepsExceededError(TetherError):
    """The model asked for tools in more consecutive steps than the agent's ``max_steps`` allows."""


class RemoteCancelError(TetherError):
    """A cancel for a run owned by another process could not be delivered (e.g. Redis is down)."""


class RunNotFoundError(TetherError, LookupError):
    """No run with that id (of that agent) is live here or stored: there is nothing to attach to."""


class StorageError(TetherError):
    """The run store failed (unreachable, corrupt or read-only, or a write failed)."""


class StreamBusyError(TetherError, RuntimeError):
    """A RunStream has one reader at a time; another task (or event loop) is already reading it."""


class ToolError(TetherError):
    """A tool failed in a way the model should be told about, without a traceback."""


class ToolCancelledError(ToolError):
    """The run that called this tool was cancelled."""


class ModelError(TetherError):
    """The model provider failed."""


class ModelConnectionError(ModelError):
    """The model endpoint could not be reached."""


class ModelTimeoutError(ModelError):
    """The model endpoint did not answer in time."""


class ModelStatusError(ModelError):
    """The model endpoint answered with an HTTP error status."""

    def __init__(self, message: str, *, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class ModelResponseError(ModelError):
    """The model's response stream broke off or could not be parsed."""

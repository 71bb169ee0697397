"""The model protocol: what the run loop needs from a model adapter.

An adapter turns a list of messages into an async iterator of deltas: ``str`` for each chunk of
text (the hot path: plain strings, no wrapper objects), or ``list[str]`` for several chunks that
arrived together (one step of the iterator for a whole network read; each still becomes its own
``RunContent`` event), then one :class:`ModelTurnEnd`.

Cancellation contract for adapters: the run cancels by interrupting whatever the iterator awaits;
the adapter must then close its upstream connection (shielded, bounded in time) so the provider
stops generating and billing, and must not swallow the cancellation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .._messages import Message, ToolCall


@dataclass(slots=True)
class ModelUsage:
    """Token counts reported by the provider."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None


@dataclass(slots=True)
class ModelTurnEnd:
    """The end of one model response: why it stopped, tool calls it asked for, usage."""

    finish_reason: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: ModelUsage | None = None


ModelDelta = str | list[str] | ModelTurnEnd
ToolSpec = dict[str, Any]
"""A tool as OpenAI's ``tools`` entry: ``{"type": "function", "function": {...}}``."""


@runtime_checkable
class Model(Protocol):
    """A chat model tether can run. See the module docstring for the cancellation contract."""

    @property
    def id(self) -> str:
        """The model's name at its provider, e.g. ``"gpt-5-mini"``."""
        ...

    def stream(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[ModelDelta]:
        """Stream one response to ``messages``: text deltas (str or list[str]), then a ``ModelTurnEnd``.

        ``tools`` are the functions the model may ask to call (``ModelTurnEnd.tool_calls``).
        """
        ...

"""ScriptedModel: a deterministic in-process model for fast tests (no HTTP)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field

import anyio

from .._messages import Message, ToolCall, ToolCallFunction
from ..models.base import ModelDelta, ModelTurnEnd, ModelUsage, ToolSpec
from ._loopback import Reply, ScriptedToolCall


@dataclass
class _Plan:
    chunks: list[str]
    delay: float = 0.0
    stall: float = 0.0
    stall_at: int = 0
    error: BaseException | None = None
    error_at: int | None = None
    finish_reason: str = "stop"
    tool_calls: list[ScriptedToolCall] = field(default_factory=list)


class ScriptedModel:
    """A model that streams ``chunks`` as scripted.

    - ``delay``: seconds before each chunk after the first;
    - ``stall``/``stall_at``: an extra wait of ``stall`` seconds before chunk number ``stall_at``
      (``stall_at=0``: before the first token);
    - ``error``/``error_at``: raise ``error`` instead of chunk number ``error_at``
      (default: after the last one);
    - ``tool_calls``: tool calls the response asks for (finish reason ``"tool_calls"``);
    - ``turns``: a script of several responses, one :class:`Reply` per model request (``pace`` is the
      delay, ``stall`` the stall before the first chunk); the last one repeats.

    It records every request's messages in ``calls`` and tools in ``tools_seen``, and counts
    ``open_streams`` (started, not yet closed) so tests can check that a cancel closed the stream.

    Example::

        model = ScriptedModel(turns=[
            Reply(chunks=[], tool_calls=[ScriptedToolCall("lookup", '{"city": "Paris"}')]),
            Reply(chunks=["It is sunny."]),
        ])
    """

    def __init__(
        self,
        chunks: Sequence[str] = ("Hello", " from", " a", " scripted", " model."),
        *,
        id: str = "scripted",
        delay: float = 0.0,
        stall: float = 0.0,
        stall_at: int = 0,
        error: BaseException | None = None,
        error_at: int | None = None,
        tool_calls: Sequence[ScriptedToolCall] = (),
        turns: Sequence[Reply] = (),
    ) -> None:
        self._id = id
        calls = list(tool_calls)
        finish = "tool_calls" if calls else "stop"
        self._plans = [_plan(reply) for reply in turns] or [
            _Plan(list(chunks), delay, stall, stall_at, error, error_at, finish, calls)
        ]
        self.calls: list[list[Message]] = []
        self.tools_seen: list[list[ToolSpec]] = []
        self.open_streams = 0

    @property
    def id(self) -> str:
        return self._id

    def stream(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[ModelDelta]:
        plan = self._plans[min(len(self.calls), len(self._plans) - 1)]
        self.calls.append(list(messages))
        self.tools_seen.append(list(tools))
        return self._stream(plan, len(self.calls), len(messages))

    async def _stream(self, plan: _Plan, number: int, prompt: int) -> AsyncGenerator[ModelDelta, None]:
        self.open_streams += 1
        try:
            for index, chunk in enumerate(plan.chunks):
                await _wait_before(plan, index)
                yield chunk
            await _wait_before(plan, len(plan.chunks))
            words = sum(len(c.split()) for c in plan.chunks)
            calls = [
                ToolCall(
                    id=c.id or f"call_{number}_{i}",
                    function=ToolCallFunction(name=c.name, arguments=c.arguments),
                )
                for i, c in enumerate(plan.tool_calls)
            ]
            usage = ModelUsage(input_tokens=prompt, output_tokens=words, total_tokens=prompt + words)
            yield ModelTurnEnd(finish_reason=plan.finish_reason, tool_calls=calls, usage=usage)
        finally:
            self.open_streams -= 1


def _plan(reply: Reply) -> _Plan:
    finish = "tool_calls" if reply.tool_calls else reply.finish_reason
    return _Plan(list(reply.chunks), reply.pace, reply.stall, 0, None, None, finish, list(reply.tool_calls))


async def _wait_before(plan: _Plan, index: int) -> None:
    if plan.stall and index == plan.stall_at:
        await anyio.sleep(plan.stall)
    elif plan.delay and 0 < index < len(plan.chunks):
        await anyio.sleep(plan.delay)
    error_at = plan.error_at if plan.error_at is not None else len(plan.chunks)
    if plan.error is not None and index == error_at:
        raise plan.error

"""ScriptedModel: a deterministic in-process model for fast tests (no HTTP)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence

import anyio

from .._messages import Message, ToolCall
from ..models.base import ModelDelta, ModelTurnEnd, ModelUsage


class ScriptedModel:
    """A model that streams ``chunks`` as scripted.

    - ``delay``: seconds before each chunk after the first;
    - ``stall``/``stall_at``: an extra wait of ``stall`` seconds before chunk number ``stall_at``
      (``stall_at=0``: before the first token);
    - ``error``/``error_at``: raise ``error`` instead of chunk number ``error_at``
      (``len(chunks)``: after the last one).

    It records every call's messages in ``calls`` and counts ``open_streams`` (streams started and
    not yet closed), so tests can check that a cancelled run closed its model stream.

    Example::

        agent = Agent(model=ScriptedModel(["Once", " upon", " a time"], delay=0.01))
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
        finish_reason: str = "stop",
        tool_calls: Sequence[ToolCall] = (),
    ) -> None:
        self._id = id
        self.chunks = list(chunks)
        self.delay = delay
        self.stall = stall
        self.stall_at = stall_at
        self.error = error
        self.error_at = error_at if error_at is not None else (len(self.chunks) if error else None)
        self.finish_reason = finish_reason
        self.tool_calls = list(tool_calls)
        self.calls: list[list[Message]] = []
        self.open_streams = 0

    @property
    def id(self) -> str:
        return self._id

    def stream(self, messages: Sequence[Message]) -> AsyncIterator[ModelDelta]:
        return self._stream(messages)

    async def _stream(self, messages: Sequence[Message]) -> AsyncGenerator[ModelDelta, None]:
        self.calls.append(list(messages))
        self.open_streams += 1
        try:
            for index, chunk in enumerate(self.chunks):
                await self._wait_before(index)
                yield chunk
            await self._wait_before(len(self.chunks))
            words = sum(len(c.split()) for c in self.chunks)
            usage = ModelUsage(
                input_tokens=len(messages), output_tokens=words, total_tokens=len(messages) + words
            )
            yield ModelTurnEnd(
                finish_reason=self.finish_reason, tool_calls=list(self.tool_calls), usage=usage
            )
        finally:
            self.open_streams -= 1

    async def _wait_before(self, index: int) -> None:
        if self.stall and index == self.stall_at:
            await anyio.sleep(self.stall)
        elif self.delay and 0 < index < len(self.chunks):
            await anyio.sleep(self.delay)
        if self.error is not None and index == self.error_at:
            raise self.error

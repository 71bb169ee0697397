"""RunStream: the consumer's side of a run (async iterator of events, or drained to a RunOutput)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from types import TracebackType

import anyio

from ._events import TERMINAL_EVENT_TYPES, BaseRunEvent
from ._finish import snapshot
from ._handle import RunHandle
from ._loop import execute
from ._output import RunOutput
from ._registry import registry
from ._state import RunState

OUTER_CANCEL_WAIT = 2.0
"""Seconds a cancelled consumer waits (shielded) for the run to record its end before re-raising."""

BATCH = 256


class RunStream:
    """The events of one run, in order, ending with exactly one terminal event.

    ``async for event in stream`` consumes it; ``await stream.collect()`` drains it into a
    :class:`RunOutput`. The run starts when the stream is first read, in the reader's event loop.
    Stopping early (``break``, :meth:`aclose`, dropping the stream) cancels the run with
    ``source="consumer"``; if the reading task is itself cancelled, the run is cancelled with
    ``source="outer"`` and the ``CancelledError`` propagates.

    Example::

        stream = agent.arun("Write a story", stream=True)
        async for event in stream:
            if event.event == RunEvent.run_content:
                print(event.content, end="")
        print(stream.output.status)
    """

    __slots__ = ("__weakref__", "_ended", "_make_state", "_state", "handle")

    def __init__(self, handle: RunHandle, make_state: Callable[[RunHandle], RunState]) -> None:
        self.handle = handle
        self._make_state = make_state
        self._state: RunState | None = None
        self._ended = True  # until registered, so a failed __init__ leaves nothing for __del__
        registry.register(handle)
        self._ended = False

    @property
    def run_id(self) -> str:
        return self.handle.run_id

    @property
    def output(self) -> RunOutput | None:
        """The run's output once it has ended, else None."""
        return self._state.output if self._state is not None else None

    def __aiter__(self) -> RunStream:
        return self

    async def __anext__(self) -> BaseRunEvent:
        state = self._state or self._start()
        channel = state.channel
        try:
            while True:
                try:
                    event = channel.receive.receive_nowait()
                    break
                except anyio.WouldBlock:
                    await channel.wait_ready()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self._close_channel()
            raise StopAsyncIteration from None
        except BaseException:
            await self._on_outer_cancel()
            raise
        return self._took(event)

    async def next_batch(self) -> list[BaseRunEvent]:
        """At least one event (empty list at the end), plus what else is ready: for the sync bridge."""
        try:
            first = await self.__anext__()
        except StopAsyncIteration:
            return []
        batch = [first]
        if self._ended:
            return batch
        channel = self._state.channel if self._state is not None else None
        while channel is not None and len(batch) < BATCH:
            try:
                event = channel.receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
            batch.append(self._took(event))
            if self._ended:
                break
        return batch

    async def collect(self) -> RunOutput:
        """Read the run to its end and return its output (a cancelled run does not raise)."""
        async for _ in self:
            pass
        output = self.output
        assert output is not None, "a run always records its output before its terminal event"
        return output

    async def aclose(self) -> None:
        """Stop reading: cancels the run if it is still active (``source="consumer"``)."""
        if self._state is None:
            self._forget()
            return
        if not self._ended:
            self.handle.request_cancel(None, "consumer")
            await self._wait_done()
            self._close_channel()

    async def __aenter__(self) -> RunStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # Dropped by its consumer (e.g. after ``break``): stop the run, release the channel.
        if self._state is None:
            self._forget()
        elif not self._ended:
            self.handle.request_cancel(None, "consumer")
            channel = self._state.channel
            if not self.handle.call_soon(channel.close):
                channel.close()

    def _start(self) -> RunState:
        state = self._state = self._make_state(self.handle)
        self.handle.snapshot = functools.partial(_live_output, state)
        self.handle.task = asyncio.get_running_loop().create_task(
            execute(state), name=f"tether-run-{self.run_id}"
        )
        return state

    def _took(self, event: BaseRunEvent) -> BaseRunEvent:
        """Bookkeeping for an event handed to the consumer: backpressure, and the end after the last."""
        assert self._state is not None
        self._state.channel.taken()
        if type(event) in TERMINAL_EVENT_TYPES:
            self._close_channel()
        return event

    def _forget(self) -> None:
        """A stream never read: its run never started, so it only leaves the registry."""
        if not self._ended:
            self._ended = True
            self.handle.request_cancel(None, "consumer")
            self.handle.decide(failed=False)
            registry.unregister(self.handle)
            self.handle.mark_ended()

    def _close_channel(self) -> None:
        self._ended = True
        if self._state is not None:
            self._state.channel.receive.close()

    async def _wait_done(self) -> None:
        if self._state is not None:  # a run that never started has nothing to wait for
            with anyio.move_on_after(OUTER_CANCEL_WAIT, shield=True):
                await self.handle.done_event().wait()

    async def _on_outer_cancel(self) -> None:
        self.handle.request_cancel(None, "outer")
        await self._wait_done()
        self._close_channel()


def _live_output(state: RunState) -> RunOutput:
    return state.output or snapshot(state, state.handle.status)

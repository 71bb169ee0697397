"""RunStream: the consumer's side of a run (async iterator of events, or drained to a RunOutput)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from types import TracebackType

import anyio

from ..exceptions import StreamBusyError
from ._channel import Channel
from ._events import TERMINAL_EVENT_TYPES, BaseRunEvent, CancelSource, RunContentEvent
from ._finish import snapshot
from ._handle import RunHandle
from ._loop import execute
from ._output import RunOutput
from ._registry import registry
from ._state import RunState

OUTER_CANCEL_WAIT = 2.0
"""Seconds a consumer that leaves waits (shielded) for the run to record its end before going on."""

BATCH = 256


class RunStream:
    """The events of one run, in order, ending with exactly one terminal event.

    ``async for event in stream`` consumes it; ``await stream.collect()`` drains it into a
    :class:`RunOutput`. The run starts when the stream is first read, in the reader's event loop,
    and it has one reader: the task that first reads it (another task, or another event loop, gets
    :class:`StreamBusyError`). Read again after its end, it yields nothing; ``output`` holds the result.
    Stopping early (``break``, :meth:`aclose`, dropping the stream) cancels the run with
    ``source="consumer"``; if the reading task is itself cancelled, the run is cancelled with
    ``source="outer"`` and the ``CancelledError`` propagates. Either way the run keeps exactly the
    text this stream delivered. An exception such as ``KeyboardInterrupt`` raised inside the run ends
    it with a ``RunError`` and is then raised from this stream.

    Example::

        stream = agent.arun("Write a story", stream=True)
        async for event in stream:
            if event.event == RunEvent.run_content:
                print(event.content, end="")
        print(stream.output.status)
    """

    __slots__ = (
        "__weakref__",
        "_batches",
        "_ended",
        "_loop",
        "_make_state",
        "_reader",
        "_state",
        "_unacked",
        "handle",
    )

    def __init__(self, handle: RunHandle, make_state: Callable[[RunHandle], RunState]) -> None:
        self.handle = handle
        self._make_state = make_state
        self._state: RunState | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the run (and its reader) is on
        self._reader: asyncio.Task[object] | None = None  # the task that reads it (None: batches)
        self._unacked = 0  # RunContent events of the last batch, until the next call acknowledges it
        self._batches = False  # read with next_batch: an event is delivered once the next call comes
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
        if self._state is None:
            state = self._start()
            self._reader = asyncio.current_task()
        else:
            state = self._state
            # current_task(loop): no get_running_loop, a getpid() system call on CPython 3.11 (0.25 µs a
            # chunk). From another thread this is the task that loop runs now: not the reader, unless
            # that task runs at this very moment; the wait below then catches another loop.
            if self._reader is not None and asyncio.current_task(self._loop) is not self._reader:
                raise StreamBusyError(
                    f"run {self.run_id} is read by another task; a RunStream has one reader "
                    "(the task that first read it)"
                )
        channel = state.channel
        busy = False
        try:
            while True:
                try:
                    event = channel.receive.receive_nowait()
                    break
                except anyio.WouldBlock:
                    if channel.busy or asyncio.get_running_loop() is not self._loop:
                        busy = True
                        break
                    await channel.wait_ready()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self._close_channel()
            escaped, state.escaped = state.escaped, None
            if escaped is not None:
                raise escaped from None
            raise StopAsyncIteration from None
        except BaseException:
            await self._leave("outer", self._unacked)
            raise
        else:
            if busy:
                raise StreamBusyError(
                    f"run {self.run_id} is already being read by another task (or another event loop); "
                    "a RunStream has one reader at a time"
                )
            return self._took(event)

    async def next_batch(self) -> list[BaseRunEvent]:
        """At least one event (empty list at the end), plus what else is ready: for the sync bridge.

        Calling it again acknowledges the previous batch as received.
        """
        self._unacked = 0
        self._batches = True
        if self._state is None:
            self._start()  # read in batches: each call may come from a task of its own
        else:
            self._state.channel.ack()
        try:
            first = await self.__anext__()
        except StopAsyncIteration:
            return []
        batch = [first]
        state = self._state
        if self._ended or state is None:
            return batch
        channel = state.channel
        before = channel.received - (type(first) is RunContentEvent)
        while len(batch) < BATCH:
            try:
                event = channel.receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
            batch.append(self._took(event))
            if self._ended:
                break
        self._unacked = channel.received - before
        return batch

    def start_background(self) -> RunOutput:
        """Start the run now, with no consumer (``background=True``): its events go to its log only,
        for readers that attach; dropping this object does not cancel it. Its output so far."""
        state = self._start()
        state.channel.detached = True  # before the run's task first runs
        self._ended = True
        return _live_output(state)

    def take_escaped(self) -> BaseException | None:
        """The KeyboardInterrupt or SystemExit that ended the run, once (for a reader that raises it)."""
        state = self._state
        if state is None:
            return None
        escaped, state.escaped = state.escaped, None
        return escaped

    async def collect(self) -> RunOutput:
        """Read the run to its end and return its output (a cancelled run does not raise)."""
        async for _ in self:
            pass
        output = self.output
        assert output is not None, "a run always records its output before its terminal event"
        return output

    async def aclose(self) -> None:
        """Stop reading: cancels the run if it is still active (``source="consumer"``)."""
        await self._leave("consumer", 0)

    async def aclose_unread(self, unread: int) -> None:
        """:meth:`aclose` for a reader that took ``unread`` RunContent events it never delivered."""
        await self._leave("consumer", unread)

    def leave_soon(self, source: CancelSource, unread: int | None = None) -> None:
        """From any thread, without blocking or locking: the reader has gone; the run is told on its loop.

        ``unread``: RunContent events the reader took but never delivered (None: its last batch).
        """
        if self._state is not None and not self._ended:
            self.handle.call_soon(functools.partial(self._left, source, unread))

    async def __aenter__(self) -> RunStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # A finalizer may run on any thread during a GC pass: it only schedules, never takes a lock.
        if self._ended:
            return
        state = self._state
        if state is None:
            registry.dropped(self.handle)
            return
        loop = self.handle.loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(_consumer_dropped, self.handle, state.channel)
            except RuntimeError:
                # Its loop is closed (interpreter exit): the run ended with it and nothing can touch
                # the channel any more; closing our end only flips its flags (no lock, no I/O).
                state.channel.receive.close()

    def _start(self) -> RunState:
        state = self._state = self._make_state(self.handle)
        self.handle.snapshot = functools.partial(_live_output, state)
        loop = self._loop = asyncio.get_running_loop()
        self.handle.task = loop.create_task(execute(state), name=f"tether-run-{self.run_id}")
        return state

    def _took(self, event: BaseRunEvent) -> BaseRunEvent:
        """Bookkeeping for an event handed to the consumer: backpressure, and the end after the last."""
        assert self._state is not None
        channel = self._state.channel
        channel.taken(event, acked=not self._batches)
        if type(event) in TERMINAL_EVENT_TYPES:
            channel.ack()
            self._close_channel()
        return event

    def _left(self, source: CancelSource, unread: int | None) -> None:
        """On the run's loop: the reader leaves; ``unread`` RunContent events it took were not delivered."""
        if self._state is None:
            if not self._ended and self.handle.life.abandon(source):
                registry.unregister(self.handle)
            self._ended = True
            return
        if not self._ended:
            unread = self._unacked if unread is None else unread
            self._state.channel.received -= unread
            self._state.channel.unack(unread)
            self.handle.request_cancel(None, source)
            self._close_channel()

    async def _leave(self, source: CancelSource, unread: int) -> None:
        started = self._state is not None
        self._left(source, unread)
        if started:
            with anyio.move_on_after(OUTER_CANCEL_WAIT, shield=True):
                await self.handle.done_event().wait()

    def _close_channel(self) -> None:
        self._ended = True
        if self._state is not None:
            self._state.channel.close_receiving()


def _consumer_dropped(handle: RunHandle, channel: Channel) -> None:
    if not channel.gone:
        handle.request_cancel(None, "consumer")
        channel.close_receiving()


def _live_output(state: RunState) -> RunOutput:
    return state.output or snapshot(state, state.handle.status)

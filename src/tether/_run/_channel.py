"""The event channel between a run's task and its consumer.

An anyio memory object stream with an unbounded buffer, so that putting an event never awaits:
a chunk is either delivered into the channel or not, with no cancelled-mid-send ambiguity, and the
terminal event never waits for the consumer. Backpressure is a high/low watermark instead: the
producer awaits :meth:`Channel.wait_for_room` once ``HIGH`` events are unread.

Delivery is counted: ``received`` is the number of ``RunContent`` events the consumer has taken,
so a run that ends keeps exactly the text its consumer received (what was queued but not taken is
dropped with :meth:`drop_unread`). At a turn boundary the run waits in :meth:`caught_up` until its
consumer has taken everything and asks for more, so it never runs a turn ahead of its reader.
Both ends live on the run's event loop.
"""

from __future__ import annotations

import asyncio
import math

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._events import BaseRunEvent, RunContentEvent, ToolCallCompletedEvent, ToolCallStartedEvent

HIGH = 256
LOW = 64


class Channel:
    __slots__ = ("_asked", "_ready", "_room", "backlog", "detached", "gone", "receive", "received", "send")

    def __init__(self) -> None:
        send, receive = anyio.create_memory_object_stream[BaseRunEvent](math.inf)
        self.send: MemoryObjectSendStream[BaseRunEvent] = send
        self.receive: MemoryObjectReceiveStream[BaseRunEvent] = receive
        self.backlog = 0
        self.received = 0  # RunContent events taken by the consumer
        self.detached = False  # no consumer (the run is read by nobody): nothing to wait for
        self.gone = False  # the consumer has left (or read the terminal event)
        self._room: anyio.Event | None = None
        self._ready: asyncio.Future[None] | None = None  # the consumer waits for events
        self._asked: asyncio.Future[None] | None = None  # the producer waits for the consumer

    def put(self, event: BaseRunEvent) -> bool:
        """Deliver ``event`` now; False when the consumer has gone away."""
        return self.put_many([event])

    def put_many(self, events: list[BaseRunEvent]) -> bool:
        """Deliver ``events`` now, in order; False when the consumer has gone away."""
        send = self.send.send_nowait
        try:
            for event in events:
                send(event)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return False
        self.backlog += len(events)
        wake(self._ready)
        return True

    # -- the consumer's side -------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """A consumer is waiting for events right now (a second reader must not wait too)."""
        return self._ready is not None and not self._ready.done()

    async def wait_ready(self) -> None:
        """Wait until something was put or the channel ended (cancellable); this asks for more.

        A plain future, not anyio's ``receive()``: that costs an extra turn of the loop and an event
        per wait, and a live run's consumer spends most of its life waiting here.
        """
        self._ready = asyncio.get_running_loop().create_future()
        wake(self._asked)
        await self._ready

    def taken(self, event: BaseRunEvent) -> None:
        """Consumer side: ``event`` was read."""
        self.backlog -= 1
        if type(event) is RunContentEvent:
            self.received += 1
        if self._room is not None and self.backlog <= LOW:
            self._room.set()
            self._room = None

    def close_receiving(self) -> None:
        """The consumer has left: it takes nothing more; a producer waiting for it wakes."""
        self.gone = True
        self.receive.close()
        wake(self._ready)
        wake(self._asked)

    # -- the producer's side -------------------------------------------------------------------

    @property
    def full(self) -> bool:
        return self.backlog >= HIGH

    async def wait_for_room(self) -> None:
        """Wait until the consumer has caught up to the low watermark (cancellable)."""
        while self.backlog >= HIGH:
            room = self._room = anyio.Event()
            await room.wait()

    async def caught_up(self) -> None:
        """Wait until the consumer has taken every event and asks for the next (or has left)."""
        while not (self.detached or self.gone) and (self.backlog or not self.busy):
            self._asked = asyncio.get_running_loop().create_future()
            await self._asked

    def drop_unread(self) -> None:
        """Discard the events the consumer has not taken (the run ends with what it received).

        A tool call's completion is kept when the consumer has taken its start: every started call
        it saw is seen to complete.
        """
        kept: list[BaseRunEvent] = []
        unread_starts: set[str] = set()
        while self.backlog:
            try:
                event = self.receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
            self.backlog -= 1
            if type(event) is ToolCallStartedEvent:
                unread_starts.add(event.tool_call_id)
            elif type(event) is ToolCallCompletedEvent and event.tool_call_id not in unread_starts:
                kept.append(event)
        if kept:
            self.put_many(kept)

    def end(self) -> None:
        """Producer side: nothing more will come; a waiting consumer wakes to read the rest."""
        self.send.close()
        wake(self._ready)


def wake(waiter: asyncio.Future[None] | None) -> None:
    """Resolve ``waiter`` if someone waits on it (a one-shot wake-up between two tasks of one loop)."""
    if waiter is not None and not waiter.done():
        waiter.set_result(None)

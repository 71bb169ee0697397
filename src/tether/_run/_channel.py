"""The event channel between a run's task and its consumer.

An anyio memory object stream with an unbounded buffer, so that putting an event never awaits:
a chunk is either delivered into the channel or not, with no cancelled-mid-send ambiguity, and the
terminal event never waits for the consumer. Backpressure is a high/low watermark instead: the
producer awaits :meth:`Channel.wait_for_room` once ``HIGH`` events are unread.

Delivery is counted: ``received`` is the number of ``RunContent`` events the consumer has taken,
so a run that ends keeps exactly the text its consumer received (what was queued but not taken is
dropped with :meth:`drop_unread`). At a turn boundary the run waits in :meth:`caught_up` until its
consumer has taken everything and asks for more, so it never runs a turn ahead of its reader.
Every event gets its ``event_index`` here, as it is put; what the consumer has is copied into the
run's :class:`~tether._run._log.EventLog` for other readers (see there). Both ends live on the run's
event loop.
"""

from __future__ import annotations

import asyncio
import math

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._events import BaseRunEvent, RunContentEvent, ToolCallCompletedEvent, ToolCallStartedEvent
from ._log import EventLog

HIGH = 256
LOW = 64


class Channel:
    __slots__ = (
        "_asked",
        "_ready",
        "_room",
        "backlog",
        "detached",
        "gone",
        "log",
        "next_index",
        "receive",
        "received",
        "send",
        "settled",
        "unacked",
    )

    def __init__(self, log: EventLog) -> None:
        send, receive = anyio.create_memory_object_stream[BaseRunEvent](math.inf)
        self.send: MemoryObjectSendStream[BaseRunEvent] = send
        self.receive: MemoryObjectReceiveStream[BaseRunEvent] = receive
        self.backlog = 0
        self.received = 0  # RunContent events taken by the consumer
        self.detached = False  # no consumer (a background run): events go to the log as they are put
        self.log = log
        self.next_index = 0  # the event_index of the next event put
        self.unacked: list[BaseRunEvent] = []  # taken in a batch the consumer has not acknowledged yet
        self.settled = False  # the run's end is decided: what is put from now on is logged at once
        self.gone = False  # the consumer has left (or read the terminal event)
        self._room: anyio.Event | None = None
        self._ready: asyncio.Future[None] | None = None  # the consumer waits for events
        self._asked: asyncio.Future[None] | None = None  # the producer waits for the consumer

    def put(self, event: BaseRunEvent) -> bool:
        """Deliver ``event`` now; False when the consumer has gone away."""
        return self.put_many([event])

    def put_many(self, events: list[BaseRunEvent]) -> bool:
        """Deliver ``events`` now, in order, each given its ``event_index``; False when the consumer has
        gone away (an event that could not be delivered leaves its index to the next one)."""
        if self.detached or self.settled:
            return self._put_logged(events)
        send = self.send.send_nowait
        index = start = self.next_index
        try:
            for event in events:
                event.__dict__["event_index"] = index
                send(event)
                index += 1
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return False
        finally:
            self.next_index = index
            self.backlog += index - start
        wake(self._ready)
        return True

    def _put_logged(self, events: list[BaseRunEvent]) -> bool:
        """Log ``events`` as they are put (no consumer, or the run's end is decided), then deliver them."""
        add = self.log.add
        index = self.next_index
        for event in events:
            event.__dict__["event_index"] = index
            index += 1
            add(event)
        self.next_index = index
        if self.detached:
            return True
        try:
            for event in events:
                self.send.send_nowait(event)
                self.backlog += 1
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return False
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

    def taken(self, event: BaseRunEvent, *, acked: bool) -> None:
        """Consumer side: ``event`` was read (``acked``: and delivered; else :meth:`ack` says when)."""
        self.backlog -= 1
        if acked:
            self.log.add(event)
        else:
            self.unacked.append(event)
        if type(event) is RunContentEvent:
            self.received += 1
        if self._room is not None and self.backlog <= LOW:
            self._room.set()
            self._room = None

    def ack(self) -> None:
        """The events taken in batches so far were delivered: other readers may see them now."""
        if self.unacked:
            for event in self.unacked:
                self.log.add(event)
            self.unacked.clear()

    def unack(self, unread: int) -> None:
        """The consumer leaves: the last ``unread`` RunContent events it took were not delivered (and
        nothing after them); the rest was."""
        unacked = self.unacked
        while unread > 0 and unacked:
            if type(unacked.pop()) is RunContentEvent:
                unread -= 1
        self.ack()

    def settle(self) -> None:
        """At the run's end: drop what the consumer has not taken (:meth:`drop_unread`), count what it
        took as delivered, give the dropped indexes again, and from now on log what is put as it is put
        (tool calls closed at the end, the terminal event), whether or not the consumer takes it."""
        kept = [] if self.detached else self.drop_unread()
        self.ack()
        self.next_index = self.log.next
        self.settled = True
        if kept:
            self.put_many(kept)

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

    def drop_unread(self) -> list[BaseRunEvent]:
        """Discard the events the consumer has not taken (the run ends with what it received), but the
        completions of tool calls whose start it took: those are returned, to be put again, so every
        started call it saw is seen to complete."""
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
        return kept

    def end(self) -> None:
        """Producer side: nothing more will come; a waiting consumer wakes to read the rest."""
        self.send.close()
        if self.detached:  # nobody reads this end
            self.receive.close()
        wake(self._ready)


def wake(waiter: asyncio.Future[None] | None) -> None:
    """Resolve ``waiter`` if someone waits on it (a one-shot wake-up between two tasks of one loop)."""
    if waiter is not None and not waiter.done():
        waiter.set_result(None)

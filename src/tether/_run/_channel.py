"""The event channel between a run's task and its consumer.

An anyio memory object stream with an unbounded buffer, so that putting an event never awaits:
a chunk is either delivered into the channel or not, with no cancelled-mid-send ambiguity, and the
terminal event never waits for the consumer. Backpressure is a high/low watermark instead: the
producer awaits :meth:`Channel.wait_for_room` once ``HIGH`` events are unread.
Both ends live on the run's event loop.
"""

from __future__ import annotations

import asyncio
import math

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._events import BaseRunEvent

HIGH = 256
LOW = 64


class Channel:
    __slots__ = ("_ready", "_room", "backlog", "receive", "send")

    def __init__(self) -> None:
        send, receive = anyio.create_memory_object_stream[BaseRunEvent](math.inf)
        self.send: MemoryObjectSendStream[BaseRunEvent] = send
        self.receive: MemoryObjectReceiveStream[BaseRunEvent] = receive
        self.backlog = 0
        self._room: anyio.Event | None = None
        self._ready: asyncio.Future[None] | None = None

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

    async def wait_ready(self) -> None:
        """Consumer side: wait until something was put or the channel ended (cancellable).

        A plain future, not anyio's ``receive()``: that costs an extra turn of the loop and an event
        per wait, and a live run's consumer spends most of its life waiting here.
        """
        self._ready = asyncio.get_running_loop().create_future()
        await self._ready

    def end(self) -> None:
        """Producer side: nothing more will come; a waiting consumer wakes to read the rest."""
        self.send.close()
        wake(self._ready)

    @property
    def full(self) -> bool:
        return self.backlog >= HIGH

    async def wait_for_room(self) -> None:
        """Wait until the consumer has caught up to the low watermark (cancellable)."""
        while self.backlog >= HIGH:
            room = self._room = anyio.Event()
            await room.wait()

    def taken(self, count: int = 1) -> None:
        """Consumer side: ``count`` events were read."""
        self.backlog -= count
        if self._room is not None and self.backlog <= LOW:
            self._room.set()
            self._room = None

    def close(self) -> None:
        wake(self._ready)
        self.send.close()
        self.receive.close()


def wake(waiter: asyncio.Future[None] | None) -> None:
    """Resolve ``waiter`` if someone waits on it (a one-shot wake-up between two tasks of one loop)."""
    if waiter is not None and not waiter.done():
        waiter.set_result(None)

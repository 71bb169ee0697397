"""The outbox: Redis commands handed over from any thread without waiting, sent in batches.

A run registers (and unregisters) from whatever thread or loop it lives on, the background loop's
own included. :meth:`Outbox.put` only appends to a queue and, when the queue was empty, wakes the
background loop (``call_soon_threadsafe``): it never waits for that loop nor for Redis. The loop sends
everything queued in one pipeline on one connection, so a burst of thousands of runs costs a few round
trips and never opens thousands of connections. Each command's own replies come back through the future
``put`` returned (a slice of the pipeline's, found with ``len(pipe)`` before and after the command).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

Command = Callable[[Any], object]
"""Queues commands on the pipeline it is given (e.g. ``lambda pipe: pipe.hdel(key, field)``)."""
Sent = concurrent.futures.Future[list[Any]]
"""Done once a command was sent: its replies (an error as an exception object), or ``[]`` if it was not."""


class Outbox:
    """Commands waiting to be sent from the background loop. ``put`` is thread-safe and never blocks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[tuple[Command, Sent]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Event | None = None

    def open(self) -> None:
        """Start taking commands; call on the background loop."""
        self._loop, self._ready = asyncio.get_running_loop(), asyncio.Event()

    def put(self, command: Command) -> Sent | None:
        """Queue ``command``; a future of its replies, done once it was sent (``[]`` if it was not, Redis
        being unreachable), None if closed. Its callbacks run on the background loop: they must not block."""
        loop = self._loop
        if loop is None:
            return None
        sent: Sent = concurrent.futures.Future()
        with self._lock:
            self._queue.append((command, sent))
            first = len(self._queue) == 1
        if first:
            try:
                loop.call_soon_threadsafe(self.wake)
            except RuntimeError:  # the background loop is closed: nothing will be sent
                self._loop = None
                self._release(self._take())
                return None
        return sent

    def wake(self) -> None:
        """Let :meth:`send` go on (on the background loop)."""
        if self._ready is not None:
            self._ready.set()

    async def send(self, client: aioredis.Redis | None) -> None:
        """Wait for commands, then send all of them in one pipeline. Raises redis' errors."""
        assert self._ready is not None
        await self._ready.wait()
        self._ready.clear()
        batch = self._take()
        replies: list[list[Any]] = []
        try:
            if batch and client is not None:
                pipe = client.pipeline(transaction=False)
                spans = []
                for command, _sent in batch:
                    start = len(pipe)
                    command(pipe)
                    spans.append((start, len(pipe)))
                results = await pipe.execute(raise_on_error=False)  # one failing command fails no other
                replies = [results[start:end] for start, end in spans]
        finally:
            self._release(batch, replies)

    def close(self) -> None:
        """Take no more commands; those queued are sent by the next :meth:`send`."""
        self._loop = None
        self.wake()

    def discard(self) -> None:
        """Drop what is still queued (its waiters are released); after :meth:`close` and the last send."""
        self._release(self._take())

    def _take(self) -> list[tuple[Command, Sent]]:
        with self._lock:
            batch, self._queue = self._queue, []
        return batch

    @staticmethod
    def _release(batch: list[tuple[Command, Sent]], replies: list[list[Any]] | None = None) -> None:
        """Complete the batch's futures: with their replies, ``[]`` for those not sent."""
        for index, (_command, sent) in enumerate(batch):
            with contextlib.suppress(concurrent.futures.InvalidStateError):  # cancelled by its waiter
                sent.set_result(replies[index] if replies and index < len(replies) else [])

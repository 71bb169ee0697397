"""The outbox: Redis commands handed over from any thread without waiting, sent in batches.

A run registers (and unregisters) from whatever thread or loop it lives on, the background loop's
own included. :meth:`Outbox.put` only appends to a queue and, when the queue was empty, wakes the
background loop (``call_soon_threadsafe``): it never waits for that loop nor for Redis. The loop sends
everything queued in one pipeline on one connection, so a burst of thousands of runs costs a few round
trips and never opens thousands of connections.
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
"""Queues one command on the pipeline it is given (e.g. ``lambda pipe: pipe.hdel(key, field)``)."""


class Outbox:
    """Commands waiting to be sent from the background loop. ``put`` is thread-safe and never blocks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[tuple[Command, concurrent.futures.Future[None]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Event | None = None

    def open(self) -> None:
        """Start taking commands; call on the background loop."""
        self._loop, self._ready = asyncio.get_running_loop(), asyncio.Event()

    def put(self, command: Command) -> concurrent.futures.Future[None] | None:
        """Queue ``command``; a future done once it was sent (whatever the outcome), None if closed."""
        loop = self._loop
        if loop is None:
            return None
        sent: concurrent.futures.Future[None] = concurrent.futures.Future()
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
        try:
            if batch and client is not None:
                pipe = client.pipeline(transaction=False)
                for command, _sent in batch:
                    command(pipe)
                await pipe.execute(raise_on_error=False)  # one failing command does not fail the others
        finally:
            self._release(batch)

    def close(self) -> None:
        """Take no more commands; those queued are sent by the next :meth:`send`."""
        self._loop = None
        self.wake()

    def discard(self) -> None:
        """Drop what is still queued (its waiters are released); after :meth:`close` and the last send."""
        self._release(self._take())

    def _take(self) -> list[tuple[Command, concurrent.futures.Future[None]]]:
        with self._lock:
            batch, self._queue = self._queue, []
        return batch

    @staticmethod
    def _release(batch: list[tuple[Command, concurrent.futures.Future[None]]]) -> None:
        for _command, sent in batch:
            with contextlib.suppress(concurrent.futures.InvalidStateError):  # cancelled by its waiter
                sent.set_result(None)

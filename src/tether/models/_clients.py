"""The HTTP clients of one OpenAIChat on one event loop: live streams spread over small pools.

httpx's connection pool does work in proportion to its size on every request and every response
close (it scans its connections and requests), so one pool carrying thousands of live streams
makes each start and each cancel slower than the last. Here a client carries at most
``per_client`` concurrent streams; the next stream opens another client. The first clients fill
first, so a quiet agent keeps to one client and reuses its keep-alive connections.
"""

from __future__ import annotations

from collections.abc import Callable

import openai


class Lease:
    """One stream's hold on a client; :meth:`release` it when the stream is over (idempotent)."""

    __slots__ = ("_index", "_owner", "client")

    def __init__(self, owner: ClientSet, index: int) -> None:
        self._owner: ClientSet | None = owner
        self._index = index
        self.client = owner.clients[index]

    def release(self) -> None:
        if self._owner is not None:
            self._owner.release(self._index)
            self._owner = None


class ClientSet:
    """The clients of one event loop; ``make(per_client)`` builds a client of that many connections."""

    def __init__(self, make: Callable[[int], openai.AsyncOpenAI], per_client: int) -> None:
        self._make = make
        self._per_client = per_client
        self.clients: list[openai.AsyncOpenAI] = []
        self._loads: list[int] = []
        self._first_free = 0  # every client before this index is full

    def lease(self) -> Lease:
        """A client with room for one more stream (a new client when all are full)."""
        loads = self._loads
        index = self._first_free
        while index < len(loads) and loads[index] >= self._per_client:
            index += 1
        if index == len(loads):
            self.clients.append(self._make(self._per_client))
            loads.append(0)
        loads[index] += 1
        self._first_free = index
        return Lease(self, index)

    def release(self, index: int) -> None:
        if index < len(self._loads):  # not after close(): those clients are gone
            self._loads[index] -= 1
            self._first_free = min(self._first_free, index)

    async def close(self) -> None:
        clients, self.clients, self._loads = self.clients, [], []
        self._first_free = 0
        for client in clients:
            await client.close()

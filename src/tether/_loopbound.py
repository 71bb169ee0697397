"""Per-event-loop resources that close themselves when their loop shuts down.

An HTTP client's connection pool belongs to the event loop that opened its connections. Sharing
one client across ``asyncio.run()`` calls (or with the sync bridge's loop) breaks on the second
loop, and abandoning it leaks sockets. So each loop gets its own client, and a parked async
generator closes it from ``loop.shutdown_asyncgens()``, which ``asyncio.run`` and ``anyio.run`` call.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Generic, TypeVar

R = TypeVar("R")


class LoopBound(Generic[R]):
    """One resource per running event loop, made by ``factory`` and closed by ``closer``."""

    def __init__(self, factory: Callable[[], R], closer: Callable[[R], Awaitable[object]]) -> None:
        self._factory = factory
        self._closer = closer
        self._by_loop: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[R, AsyncGenerator[None, None]]
        ]
        self._by_loop = weakref.WeakKeyDictionary()

    async def get(self) -> R:
        loop = asyncio.get_running_loop()
        entry = self._by_loop.get(loop)
        if entry is None:
            resource = self._factory()
            keeper = _close_at_shutdown(resource, self._closer)
            await keeper.asend(None)  # parks it: the loop now tracks it for shutdown_asyncgens
            entry = self._by_loop[loop] = (resource, keeper)
        return entry[0]


async def _close_at_shutdown(
    resource: R, closer: Callable[[R], Awaitable[object]]
) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        await closer(resource)

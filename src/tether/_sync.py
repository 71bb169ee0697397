"""The blocking bridge: one background event-loop thread runs every sync call (anyio BlockingPortal).

``agent.run()`` and the sync event iterator hand their work to this thread, so they work from
any thread, including one that already runs an event loop (Jupyter), and there is only one run
loop (the async one). The thread starts on first use, is a daemon, and at interpreter exit its
live runs are cancelled with ``source="shutdown"`` before it stops (bounded).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TypeVar

import anyio
from anyio.from_thread import BlockingPortal

from ._run import BaseRunEvent, RunOutput, RunStream, registry
from ._run._registry import stop_runs
from .exceptions import ConfigurationError

T = TypeVar("T")

STOP_TIMEOUT = 3.0


class Bridge:
    """Owns the background loop thread. Thread-safe; restarts after ``fork``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._portal: BlockingPortal | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0
        self._atexit = False

    def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn()`` on the bridge loop and wait for its result."""
        portal = self.portal()
        if threading.current_thread() is self._thread:
            raise ConfigurationError(
                "a blocking tether call (agent.run) was made from tether's own event loop thread; "
                "use `await agent.arun(...)` inside async code"
            )
        return portal.call(_await, fn)

    def portal(self) -> BlockingPortal:
        """The portal to the background loop (started on first use)."""
        with self._lock:
            if self._portal is None or self._pid != os.getpid():
                self._start()
            assert self._portal is not None
            return self._portal

    def loop(self) -> asyncio.AbstractEventLoop:
        """The background event loop (started on first use)."""
        self.portal()
        assert self._loop is not None
        return self._loop

    def _start(self) -> None:
        ready = threading.Event()
        holder: list[BlockingPortal] = []

        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            async with BlockingPortal() as portal:
                holder.append(portal)
                ready.set()
                await portal.sleep_until_stopped()

        thread = threading.Thread(target=anyio.run, args=(serve,), name="tether-bridge", daemon=True)
        thread.start()
        if not ready.wait(10) or not holder:
            raise RuntimeError("tether's background event loop thread did not start")
        self._portal, self._thread, self._pid = holder[0], thread, os.getpid()
        if not self._atexit:
            atexit.register(self.stop)
            self._atexit = True

    def stop(self) -> None:
        """Cancel the bridge's live runs (``source="shutdown"``) and stop its thread. Bounded."""
        with self._lock:
            portal, thread = self._portal, self._thread
            self._portal = self._thread = None
        if portal is None or thread is None or not thread.is_alive() or self._pid != os.getpid():
            return
        try:
            portal.call(_shutdown_runs)
            portal.call(portal.stop, True)
        except RuntimeError:  # the loop already stopped
            pass
        thread.join(STOP_TIMEOUT)


async def _await(fn: Callable[[], Awaitable[T]]) -> T:
    return await fn()


async def _shutdown_runs() -> None:
    loop = asyncio.get_running_loop()
    handles = [h for h in registry.handles() if h.task is not None and h.task.get_loop() is loop]
    await stop_runs(handles, "interpreter exit", "shutdown", STOP_TIMEOUT)


bridge = Bridge()


class SyncRunStream:
    """A run's events as a plain (blocking) iterator; usable from any thread.

    Closing it (``close()``, leaving a ``with`` block, or dropping it) cancels the run with
    ``source="consumer"``; an exception such as ``KeyboardInterrupt`` while it waits cancels the run
    with ``source="outer"`` and propagates.

    Example::

        for event in agent.run("Write a story", stream=True):
            print(event.event, event.content)
    """

    def __init__(self, stream: RunStream) -> None:
        self._stream = stream
        self._buffer: deque[BaseRunEvent] = deque()
        self._finished = False

    @property
    def run_id(self) -> str:
        return self._stream.run_id

    @property
    def output(self) -> RunOutput | None:
        """The run's output once it has ended, else None."""
        return self._stream.output

    def __iter__(self) -> SyncRunStream:
        return self

    def __next__(self) -> BaseRunEvent:
        if not self._buffer:
            if self._finished:
                raise StopIteration
            try:
                batch = bridge.call(self._stream.next_batch)
            except BaseException:
                self._stream.handle.request_cancel(None, "outer")
                raise
            if not batch:
                self._finished = True
                raise StopIteration
            self._buffer.extend(batch)
        return self._buffer.popleft()

    def close(self) -> None:
        """Stop reading; cancels the run if it is still active, and waits for it to end (bounded)."""
        if not self._finished:
            self._finished = True
            self._buffer.clear()
            bridge.call(self._stream.aclose)

    def __enter__(self) -> SyncRunStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

"""The process-wide background event loop: one daemon thread, entered through an anyio BlockingPortal.

``agent.run()``, the sync event iterator, the blocking HTTP client and the Redis canceller hand
their work to this loop, so blocking calls work from any thread, including one that already runs an
event loop (Jupyter), and there is only one run loop (the async one). The thread starts on first
use. At interpreter exit its live runs are cancelled with ``source="shutdown"`` and stored before it
stops (bounded): this runs from ``threading``'s own exit hook, before the interpreter forbids new
threads (Python 3.12+), since storing a run may need a worker thread.

An exception that is not an ``Exception`` (``KeyboardInterrupt``, ``SystemExit``) raised by a call
reaches the caller's thread; it never stops the loop.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

from ._run import registry
from ._run._persist import settle_writes
from ._run._registry import stop_runs
from .exceptions import ConfigurationError

T = TypeVar("T")

STOP_TIMEOUT = 3.0


class BackgroundLoop:
    """Owns the background loop thread. Thread-safe; restarts after ``fork``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._portal: BlockingPortal | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0
        self._atexit = False

    def check_caller(self) -> None:
        """Raise ConfigurationError when called from the background loop's own thread (it would block it)."""
        if threading.current_thread() is self._thread:
            raise ConfigurationError(
                "a blocking tether call (agent.run) was made from tether's background event loop thread; "
                "use `await agent.arun(...)` inside async code"
            )

    def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn()`` on the background loop and wait for its result (its exception is raised here)."""
        portal = self.portal()
        self.check_caller()
        outcome = portal.call(_await, fn)
        if isinstance(outcome, _Raised):
            raise outcome.exc
        return outcome.value

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

        thread = threading.Thread(target=anyio.run, args=(serve,), name="tether-loop", daemon=True)
        thread.start()
        if not ready.wait(10) or not holder:
            raise RuntimeError("tether's background event loop thread did not start")
        self._portal, self._thread, self._pid = holder[0], thread, os.getpid()
        if not self._atexit:
            at_exit(self.stop)
            self._atexit = True

    def stop(self) -> None:
        """Cancel the loop's live runs (``source="shutdown"``), store them, stop the thread. Bounded."""
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


@dataclass(slots=True)
class _Returned(Generic[T]):
    value: T


@dataclass(slots=True)
class _Raised:
    exc: BaseException


async def _await(fn: Callable[[], Awaitable[T]]) -> _Returned[T] | _Raised:
    # A KeyboardInterrupt or SystemExit raised into the portal would end its task group and the
    # loop with it: carried to the caller's thread as a value instead.
    try:
        return _Returned(await fn())
    except asyncio.CancelledError:
        raise
    except Exception:
        raise
    except BaseException as exc:
        return _Raised(exc)


def at_exit(fn: Callable[[], object]) -> None:
    """Run ``fn`` at interpreter exit while threads can still start (last registered, first run).

    ``threading``'s own exit hook (what ``concurrent.futures`` uses) runs before Python 3.12+ forbids
    new threads; plain ``atexit`` runs after, where storing a run would fail to start its worker.
    """
    register = getattr(threading, "_register_atexit", None)
    if register is None:  # pragma: no cover - every supported CPython has it
        atexit.register(fn)
    else:
        register(fn)


async def _shutdown_runs() -> None:
    loop = asyncio.get_running_loop()
    handles = [h for h in registry.handles() if h.task is not None and h.task.get_loop() is loop]
    await stop_runs(handles, "interpreter exit", "shutdown", STOP_TIMEOUT)
    await settle_writes(STOP_TIMEOUT)


background_loop = BackgroundLoop()
"""The one background loop of this process."""

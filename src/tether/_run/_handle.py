"""One run's shared state: identity, status, and the thread-safe way to cancel it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import anyio

from ._events import CancelSource, RunStatus


class RunHandle:
    """The registry's view of one run.

    ``request_cancel`` may be called from any thread at any time; everything else belongs to the
    run's event loop. The first cancel request wins: its reason and source are the ones recorded.
    """

    __slots__ = (
        "_lock",
        "_loop",
        "_loop_thread",
        "_scope",
        "agent_id",
        "agent_name",
        "cancel_reason",
        "cancel_requested",
        "cancel_source",
        "done",
        "run_id",
        "session_id",
        "status",
        "task",
    )

    def __init__(self, run_id: str, agent_id: str, agent_name: str | None, session_id: str | None) -> None:
        self.run_id = run_id
        self.agent_id = agent_id
        self.agent_name = agent_name
        self.session_id = session_id
        self.status = RunStatus.pending
        self.cancel_requested = False
        self.cancel_reason: str | None = None
        self.cancel_source: CancelSource | None = None
        self.task: asyncio.Task[None] | None = None
        self.done: anyio.Event | None = None
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._scope: anyio.CancelScope | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the run's task lives on (None until it starts)."""
        return self._loop

    @property
    def is_active(self) -> bool:
        """True until the run's outcome is decided."""
        return self.status.is_active

    def request_cancel(self, reason: str | None, source: CancelSource) -> bool:
        """Ask the run to stop; True iff it was still active. Thread-safe and idempotent."""
        with self._lock:
            if not self.status.is_active:
                return False
            if not self.cancel_requested:
                self.cancel_requested = True
                self.cancel_reason = reason
                self.cancel_source = source
            loop, thread, scope = self._loop, self._loop_thread, self._scope
        if scope is not None and loop is not None:
            _call_in_loop(loop, thread, scope.cancel)
        return True

    def attach(self, scope: anyio.CancelScope) -> None:
        """Bind the run to its task's cancel scope; cancels it at once if a cancel came first."""
        with self._lock:
            self._loop = asyncio.get_running_loop()
            self._loop_thread = threading.get_ident()
            self._scope = scope
            self.status = RunStatus.running
            early = self.cancel_requested
        if early:
            scope.cancel()

    def decide(self, failed: bool) -> RunStatus:
        """Fix the run's final status: a requested cancel wins, then a failure."""
        with self._lock:
            if self.cancel_requested:
                self.status = RunStatus.cancelled
            elif failed:
                self.status = RunStatus.error
            else:
                self.status = RunStatus.completed
            self._scope = None
            return self.status

    def call_soon(self, fn: Callable[[], object]) -> bool:
        """Run ``fn`` on the run's loop (now if this is that loop's thread); False if it is gone."""
        with self._lock:
            loop, thread = self._loop, self._loop_thread
        if loop is None:
            return False
        return _call_in_loop(loop, thread, fn)


def _call_in_loop(loop: asyncio.AbstractEventLoop, thread: int | None, fn: Callable[[], object]) -> bool:
    if thread == threading.get_ident():
        fn()
        return True
    try:
        loop.call_soon_threadsafe(fn)
    except RuntimeError:  # the loop is closed: nothing left to cancel there
        return False
    return True

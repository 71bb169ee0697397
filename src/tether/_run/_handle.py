"""One run's shared state: identity, status, and the thread-safe ways to stop it.

Two kinds of stop meet here. An *interrupt* cancels the run's anyio ``CancelScope`` (on the run's
own loop), so whatever the run awaits is interrupted. A *graceful* stop (``mode="after_turn"``)
only marks the run: it ends before its next model request. ``grace`` escalates a graceful stop
to an interrupt after that many seconds; a deadline (``timeout``) is an interrupt on a timer.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Literal

import anyio

from ..exceptions import ConfigurationError
from ._events import CancelSource, RunStatus
from ._output import RunOutput

CancelMode = Literal["immediate", "after_turn"]
MODES = ("immediate", "after_turn")


class RunHandle:
    """The registry's view of one run.

    ``request_cancel`` may be called from any thread at any time; everything else belongs to the
    run's event loop. The first cancel request wins: its reason and source are the ones recorded;
    a later one can only make the stop harder (graceful to immediate).
    """

    __slots__ = (
        "_grace",
        "_lock",
        "_loop",
        "_loop_thread",
        "_scope",
        "_timers",
        "agent_id",
        "agent_name",
        "cancel_reason",
        "cancel_requested",
        "cancel_source",
        "children",
        "done",
        "ended",
        "interrupting",
        "parent_run_id",
        "run_id",
        "session_id",
        "snapshot",
        "status",
        "task",
        "timeout",
        "user_id",
    )

    def __init__(
        self,
        run_id: str,
        agent_id: str,
        agent_name: str | None,
        session_id: str | None,
        *,
        parent_run_id: str | None = None,
        timeout: float | None = None,
        user_id: str | None = None,
    ) -> None:
        self.run_id = run_id
        self.agent_id = agent_id
        self.agent_name = agent_name
        self.session_id = session_id
        self.parent_run_id = parent_run_id
        self.user_id = user_id
        self.timeout = timeout
        self.snapshot: Callable[[], RunOutput] | None = None  # the live output, once the run started
        self.status = RunStatus.pending
        self.cancel_requested = False
        self.interrupting = False
        self.cancel_reason: str | None = None
        self.cancel_source: CancelSource | None = None
        self.children: list[RunHandle] = []
        self.task: asyncio.Task[None] | None = None
        self.done: anyio.Event | None = None  # made when first waited on: most runs never are
        self.ended = False
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._scope: anyio.CancelScope | None = None
        self._grace: float | None = None
        self._timers: list[asyncio.TimerHandle] = []

    def done_event(self) -> anyio.Event:
        """Set once the run has ended (at once if it has). Wait on it only in the run's own event loop."""
        if self.done is None:
            self.done = anyio.Event()
            if self.ended:
                self.done.set()
        return self.done

    def mark_ended(self) -> None:
        """The run is over: its outcome is stored and its terminal event sent (or it never started)."""
        self.ended = True
        if self.done is not None:
            self.done.set()

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the run's task lives on (None until it starts)."""
        return self._loop

    @property
    def is_active(self) -> bool:
        """True until the run's outcome is decided."""
        return self.status.is_active

    def request_cancel(
        self,
        reason: str | None,
        source: CancelSource,
        *,
        mode: CancelMode = "immediate",
        grace: float | None = None,
    ) -> bool:
        """Ask the run to stop; True iff it was still active. Thread-safe and idempotent.

        Live child runs are stopped first, with ``source="parent"``.
        """
        check_mode(mode, grace)
        with self._lock:
            if not self.status.is_active:
                return False
            if not self.cancel_requested:
                self.cancel_requested = True
                self.cancel_reason = reason
                self.cancel_source = source
            interrupt = mode == "immediate" and not self.interrupting
            if interrupt:
                self.interrupting = True
            elif mode == "after_turn" and grace is not None and not self.interrupting:
                self._grace = grace if self._grace is None else min(self._grace, grace)
            children = list(self.children)
            loop, thread = self._loop, self._loop_thread
        for child in children:
            child.request_cancel(self.cancel_reason, "parent", mode=mode, grace=grace)
        if loop is not None:
            if interrupt:
                _call_in_loop(loop, thread, self._interrupt)
            elif grace is not None:
                _call_in_loop(loop, thread, lambda: self._arm(grace, self._escalate))
        return True

    def attach(self, scope: anyio.CancelScope) -> None:
        """Bind the run to its task's cancel scope; applies what was requested before it started."""
        with self._lock:
            self._loop = asyncio.get_running_loop()
            self._loop_thread = threading.get_ident()
            self._scope = scope
            self.status = RunStatus.running
            interrupt, grace = self.interrupting, self._grace
        if interrupt:
            scope.cancel()
        elif grace is not None:
            self._arm(grace, self._escalate)
        if self.timeout is not None:
            self._arm(self.timeout, lambda: self.request_cancel("timeout", "timeout"))

    def add_child(self, child: RunHandle) -> None:
        """Link a sub-agent run; it is stopped at once if this run is already stopping."""
        with self._lock:
            self.children.append(child)
            stopping, reason = self.cancel_requested, self.cancel_reason
            mode: CancelMode = "immediate" if self.interrupting else "after_turn"
        if stopping:
            child.request_cancel(reason, "parent", mode=mode)

    def remove_child(self, child: RunHandle) -> None:
        with self._lock:
            if child in self.children:
                self.children.remove(child)

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
            timers, self._timers = self._timers, []
        for timer in timers:
            timer.cancel()
        return self.status

    def call_soon(self, fn: Callable[[], object]) -> bool:
        """Run ``fn`` on the run's loop (now if this is that loop's thread); False if it is gone."""
        with self._lock:
            loop, thread = self._loop, self._loop_thread
        if loop is None:
            return False
        return _call_in_loop(loop, thread, fn)

    # -- on the run's loop ---------------------------------------------------------------------

    def _interrupt(self) -> None:
        scope = self._scope
        if scope is not None:
            scope.cancel()

    def _escalate(self) -> None:
        with self._lock:
            if not self.status.is_active or self.interrupting:
                return
            self.interrupting = True
        self._interrupt()

    def _arm(self, delay: float, callback: Callable[[], object]) -> None:
        if self._loop is not None and self.status.is_active:
            self._timers.append(self._loop.call_later(delay, callback))


def check_mode(mode: str, grace: float | None) -> None:
    if mode not in MODES:
        raise ConfigurationError(f"invalid cancel mode {mode!r}: use 'immediate' or 'after_turn'")
    if grace is not None and not grace >= 0:
        raise ConfigurationError(f"grace must be a number of seconds >= 0 (got {grace!r})")


def _call_in_loop(loop: asyncio.AbstractEventLoop, thread: int | None, fn: Callable[[], object]) -> bool:
    if thread == threading.get_ident():
        fn()
        return True
    try:
        loop.call_soon_threadsafe(fn)
    except RuntimeError:  # the loop is closed: nothing left to cancel there
        return False
    return True

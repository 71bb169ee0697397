"""A run's lifecycle: its phase, status and cancel level, and every transition between them.

::

    phase     PENDING ──start──▶ RUNNING ──decide──▶ ENDING ──end──▶ ENDED
                 │                                     ▲
                 └──────────────abandon────────────────┘ (a stream dropped before it was read)

    status    PENDING       RUNNING       COMPLETED | CANCELLED | ERROR (fixed by ``decide``)

    cancel    NONE < AFTER_TURN < IMMEDIATE   (a request only escalates; the first one's
                                               reason and source are the ones recorded)

- PENDING: registered (so it can be cancelled by id before its first event), task not started.
- RUNNING: inside its anyio ``CancelScope``; an IMMEDIATE request cancels that scope (on the run's
  own loop), AFTER_TURN only marks the run, which then ends before its next model request.
- ENDING: the outcome is decided; the final write and the terminal event are under way. The run is
  still findable and a cancel gets an exact answer (stopping or stopped / ended before any cancel).
- ENDED: the terminal event is out.

How the outcome is decided: an error that happened while no immediate cancel was requested is
reported (``ERROR``), even after a graceful (``after_turn``) request; otherwise a requested cancel
wins (``CANCELLED``); otherwise ``COMPLETED``.

``request`` may be called from any thread; the lock guards only these few fields and is never held
while calling out. Everything else runs on the run's event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from enum import Enum, IntEnum
from typing import Literal

import anyio

from ..exceptions import ConfigurationError
from ._events import CancelSource, RunStatus

CancelMode = Literal["immediate", "after_turn"]
MODES = ("immediate", "after_turn")


class Phase(IntEnum):
    PENDING = 0
    RUNNING = 1
    ENDING = 2
    ENDED = 3


class CancelLevel(IntEnum):
    NONE = 0
    AFTER_TURN = 1
    IMMEDIATE = 2


class CancelAnswer(Enum):
    """What a cancel request found."""

    STOPPING = "stopping"  # the run was active: it stops (or was already stopping)
    CANCELLED = "cancelled"  # the run has already been stopped by a cancel (ending or ended)
    ENDED = "ended"  # the run ended (completed or failed) before any cancel


class Lifecycle:
    """The one state machine of a run (see the module docstring)."""

    __slots__ = (
        "_done",
        "_grace",
        "_lock",
        "_loop",
        "_scope",
        "_thread",
        "_timers",
        "escalate_to",
        "failure",
        "level",
        "phase",
        "reason",
        "source",
        "status",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.phase = Phase.PENDING
        self.status = RunStatus.pending
        self.level = CancelLevel.NONE
        self.reason: str | None = None
        self.source: CancelSource | None = None
        self.failure: BaseException | None = None  # an error that happened (not caused by a cancel)
        self._scope: anyio.CancelScope | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        self._grace: float | None = None
        self._timers: list[asyncio.TimerHandle] | None = None  # made when needed: most runs have none
        self._done: anyio.Event | None = None
        self.escalate_to: Callable[[], object] | None = None  # what an expired grace does (the handle's)

    # -- reading -------------------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop of the run's task (None until it starts)."""
        return self._loop

    @property
    def active(self) -> bool:
        """PENDING or RUNNING: the outcome is not decided yet."""
        return self.phase < Phase.ENDING

    @property
    def interrupting(self) -> bool:
        return self.level is CancelLevel.IMMEDIATE

    def done_event(self) -> anyio.Event:
        """Set once the run has ENDED (at once if it has). Wait on it only in the run's own loop."""
        if self._done is None:
            self._done = anyio.Event()
            if self.phase is Phase.ENDED:
                self._done.set()
        return self._done

    # -- transitions ---------------------------------------------------------------------------

    def request(
        self, reason: str | None, source: CancelSource, mode: CancelMode, grace: float | None
    ) -> CancelAnswer:
        """Ask the run to stop (thread-safe, idempotent; a request only escalates)."""
        with self._lock:
            if self.phase >= Phase.ENDING:
                cancelled = self.status is RunStatus.cancelled
                return CancelAnswer.CANCELLED if cancelled else CancelAnswer.ENDED
            if self.failure is not None:
                return CancelAnswer.ENDED  # it failed before this request: it ends in ERROR, not stopped
            if self.level is CancelLevel.NONE:
                self.reason, self.source = reason, source
            wanted = CancelLevel.IMMEDIATE if mode == "immediate" else CancelLevel.AFTER_TURN
            interrupt = wanted > self.level and wanted is CancelLevel.IMMEDIATE
            self.level = max(self.level, wanted)
            arm_grace = wanted is CancelLevel.AFTER_TURN and grace is not None and not self.interrupting
            if grace is not None and arm_grace:
                self._grace = grace if self._grace is None else min(self._grace, grace)
            loop, thread = self._loop, self._thread
        if loop is not None:
            if interrupt:
                call_in_loop(loop, thread, self._interrupt)
            elif arm_grace and grace is not None:
                call_in_loop(loop, thread, lambda: self._arm(grace, self._escalate))
        return CancelAnswer.STOPPING

    def start(
        self, scope: anyio.CancelScope, timeout: float | None, on_deadline: Callable[[], object]
    ) -> None:
        """PENDING → RUNNING, on the run's loop: applies what was requested before it started."""
        with self._lock:
            self._loop = asyncio.get_running_loop()
            self._thread = threading.get_ident()
            self._scope = scope
            self.phase, self.status = Phase.RUNNING, RunStatus.running
            interrupt, grace = self.interrupting, self._grace
        if interrupt:
            scope.cancel()
        elif grace is not None:
            self._arm(grace, self._escalate)
        if timeout is not None:
            self._arm(timeout, on_deadline)

    def note_failure(self, exc: BaseException) -> None:
        """An exception ended the run's work; it is its outcome unless an immediate cancel came first."""
        with self._lock:
            if not self.interrupting:
                self.failure = exc

    def decide(self) -> RunStatus:
        """RUNNING → ENDING: fix the outcome (see the module docstring)."""
        with self._lock:
            if self.failure is not None:
                self.status = RunStatus.error
            elif self.level is not CancelLevel.NONE:
                self.status = RunStatus.cancelled
            else:
                self.status = RunStatus.completed
            self.phase = Phase.ENDING
            self._scope = None
            timers, self._timers = self._timers or [], None
        for timer in timers:
            timer.cancel()
        return self.status

    def abandon(self, source: CancelSource) -> bool:
        """PENDING → ENDED as CANCELLED: a run whose task never started. False if it had started."""
        with self._lock:
            if self.phase is not Phase.PENDING:
                return False
            if self.level is CancelLevel.NONE:
                self.reason, self.source = None, source
            self.level = CancelLevel.IMMEDIATE
            self.phase, self.status = Phase.ENDED, RunStatus.cancelled
        self.escalate_to = None  # (the handle's method: no cycle left for the GC to find)
        if self._done is not None:
            self._done.set()
        return True

    def end(self) -> None:
        """ENDING → ENDED: the terminal event is out."""
        self.phase = Phase.ENDED
        self.escalate_to = None  # (the handle's method: no cycle left for the GC to find)
        if self._done is not None:
            self._done.set()

    # -- on the run's loop ---------------------------------------------------------------------

    def call_soon(self, fn: Callable[[], object]) -> bool:
        """Run ``fn`` on the run's loop (now if this is that loop's thread); False if there is none."""
        loop, thread = self._loop, self._thread
        return loop is not None and call_in_loop(loop, thread, fn)

    def _interrupt(self) -> None:
        scope = self._scope
        if scope is not None:
            scope.cancel()

    def _escalate(self) -> None:
        with self._lock:
            if self.phase >= Phase.ENDING or self.interrupting:
                return
            if self.escalate_to is None:
                self.level = CancelLevel.IMMEDIATE
        if self.escalate_to is not None:
            self.escalate_to()  # an immediate request: escalates, interrupts, stops sub-agents
        else:
            self._interrupt()

    def _arm(self, delay: float, callback: Callable[[], object]) -> None:
        if self._loop is not None and self.phase is Phase.RUNNING:
            self._timers = [*(self._timers or ()), self._loop.call_later(delay, callback)]


def check_mode(mode: str, grace: float | None) -> None:
    if mode not in MODES:
        raise ConfigurationError(f"invalid cancel mode {mode!r}: use 'immediate' or 'after_turn'")
    if grace is not None and not grace >= 0:
        raise ConfigurationError(f"grace must be a number of seconds >= 0 (got {grace!r})")


def call_in_loop(loop: asyncio.AbstractEventLoop, thread: int | None, fn: Callable[[], object]) -> bool:
    """Call ``fn`` on ``loop``: now when already on its thread, else scheduled. False if it is closed."""
    if thread == threading.get_ident():
        fn()
        return True
    try:
        loop.call_soon_threadsafe(fn)
    except RuntimeError:  # the loop is closed: nothing left to do there
        return False
    return True

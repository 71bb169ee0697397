"""RunHandle: the registry's view of one run — who it is, its lifecycle, and its links.

Two kinds of stop meet here. An *interrupt* cancels the run's anyio ``CancelScope`` (on the run's
own loop), so whatever the run awaits is interrupted. A *graceful* stop (``mode="after_turn"``)
only marks the run: it ends before its next model request. ``grace`` escalates a graceful stop
to an interrupt after that many seconds; a deadline (``timeout``) is an interrupt on a timer.
The state itself (phase, status, cancel level) lives in :class:`~._lifecycle.Lifecycle`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import anyio

from .._text import scrub
from ._events import CancelSource, RunStatus
from ._lifecycle import CancelAnswer, CancelMode, Lifecycle, check_mode
from ._log import DEFAULT_CAPACITY, EventLog
from ._output import RunOutput


class RunHandle:
    """One run as the registry sees it. ``request_cancel`` is thread-safe; the rest is the run's loop's."""

    __slots__ = (
        "agent_id",
        "agent_name",
        "children",
        "life",
        "log",
        "parent_run_id",
        "run_id",
        "session_id",
        "snapshot",
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
        event_buffer: int = DEFAULT_CAPACITY,
        keep_events: bool = False,
    ) -> None:
        self.run_id = run_id
        self.agent_id = agent_id
        self.agent_name = agent_name
        self.session_id = session_id
        self.parent_run_id = parent_run_id
        self.user_id = user_id
        self.timeout = timeout
        self.life = Lifecycle()
        self.life.escalate_to = self._escalate
        self.snapshot: Callable[[], RunOutput] | None = None  # the live output, once the run started
        self.children: list[RunHandle] = []
        self.task: asyncio.Task[None] | None = None
        # What other readers than the run's consumer read; every event when the run will be stored.
        self.log = EventLog(event_buffer, keep_all=keep_events)

    # -- the lifecycle, read ---------------------------------------------------------------------

    @property
    def status(self) -> RunStatus:
        return self.life.status

    @property
    def is_active(self) -> bool:
        """True until the run's outcome is decided."""
        return self.life.active

    @property
    def cancel_requested(self) -> bool:
        return bool(self.life.level)

    @property
    def interrupting(self) -> bool:
        return self.life.interrupting

    @property
    def cancel_reason(self) -> str | None:
        return self.life.reason

    @property
    def cancel_source(self) -> CancelSource | None:
        return self.life.source

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self.life.loop

    def done_event(self) -> anyio.Event:
        """Set once the run has ended (at once if it has). Wait on it only in the run's own loop."""
        return self.life.done_event()

    # -- stopping --------------------------------------------------------------------------------

    def request_cancel(
        self,
        reason: str | None,
        source: CancelSource,
        *,
        mode: CancelMode = "immediate",
        grace: float | None = None,
    ) -> bool:
        """Ask the run to stop; True iff it is stopping or already stopped by a cancel.

        Thread-safe and idempotent; the first request's reason and source are kept. Live child runs
        are stopped first, with ``source="parent"``. See :meth:`answer_cancel` for the exact answer.
        """
        return self.answer_cancel(reason, source, mode=mode, grace=grace) is not CancelAnswer.ENDED

    def answer_cancel(
        self,
        reason: str | None,
        source: CancelSource,
        *,
        mode: CancelMode = "immediate",
        grace: float | None = None,
    ) -> CancelAnswer:
        """:meth:`request_cancel` with the three-way answer (stopping / already cancelled / ended)."""
        check_mode(mode, grace)
        answer = self.life.request(None if reason is None else scrub(reason), source, mode, grace)
        if answer is CancelAnswer.STOPPING and mode == "immediate":
            # A graceful stop lets the current turn's tool calls finish, sub-agents included; an
            # immediate one (or a graceful one escalated by its grace) stops them first.
            for child in list(self.children):
                child.request_cancel(self.life.reason, "parent")
        return answer

    def _escalate(self) -> None:
        """A graceful stop's grace is over: stop now, sub-agents first (on the run's loop)."""
        self.request_cancel(self.life.reason, self.life.source or "user")

    def start(self, scope: anyio.CancelScope) -> None:
        """The run's task entered its cancel scope (PENDING → RUNNING)."""
        self.life.start(scope, self.timeout, lambda: self.request_cancel("timeout", "timeout"))

    def call_soon(self, fn: Callable[[], object]) -> bool:
        """Run ``fn`` on the run's loop (now if this is that loop's thread); False if it is gone."""
        return self.life.call_soon(fn)

    # -- sub-agent runs --------------------------------------------------------------------------

    def add_child(self, child: RunHandle) -> None:
        """Link a sub-agent run; it is stopped at once if this run is already being interrupted."""
        self.children.append(child)
        if self.interrupting:
            child.request_cancel(self.life.reason, "parent")

    def remove_child(self, child: RunHandle) -> None:
        with contextlib.suppress(ValueError):  # already gone
            self.children.remove(child)

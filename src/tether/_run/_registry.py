"""The process-wide registry of runs: active ones, and ended ones whose final write is still under way."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

import anyio

from ..exceptions import ConfigurationError
from ._early import EarlyCancel, EarlyCancels
from ._events import CancelSource, RunStatus
from ._handle import RunHandle
from ._lifecycle import CancelAnswer, CancelMode, check_mode
from ._output import RunOutput

if TYPE_CHECKING:
    from ._remote import Remote

DEFAULT_CANCEL_MEMORY = 60.0
"""Seconds a cancel for a run id not known yet is remembered (see :attr:`RunRegistry.cancel_memory`)."""


class RunRegistry:
    """Runs by id. Thread-safe; a run is in it from creation until its terminal event goes out.

    A run whose final write has not landed yet stays findable through :meth:`ended_output` until it
    lands. A stream dropped before it was read is reported through :meth:`dropped` (from a finalizer:
    no lock taken there) and removed at the registry's next use.

    A user's cancel for a run id it does not know (a cancel that overtook the start, see ``_early``) is
    remembered for :attr:`cancel_memory` seconds: the run that registers with that id starts cancelled.
    """

    def __init__(self) -> None:
        self._runs: dict[str, RunHandle] = {}
        self._ended: dict[str, RunOutput] = {}
        self._dropped: deque[RunHandle] = deque()
        self._early = EarlyCancels()
        self._lock = threading.Lock()
        self._cancel_memory = DEFAULT_CANCEL_MEMORY
        self.remote: Remote | None = None  # cross-process cancellation, when attached

    @property
    def cancel_memory(self) -> float:
        """Seconds a user's cancel for an unknown run id is kept for the run that registers with that id
        (default 60; 0 keeps none). The remote canceller keeps it as long, unless told otherwise.

        Example::

            from tether._run import registry
            registry.cancel_memory = 10.0   # or create_app(..., cancel_memory=10.0)
        """
        return self._cancel_memory

    @cancel_memory.setter
    def cancel_memory(self, seconds: float) -> None:
        self._cancel_memory = check_memory(seconds)
        if not seconds:
            self.forget_early_cancels()

    def forget_early_cancels(self) -> None:
        """Forget every remembered cancel (and recently ended id); for tests, and ``cancel_memory = 0``."""
        with self._lock:
            self._early.clear()

    def register(self, handle: RunHandle) -> None:
        """Add a run (PENDING); a cancel remembered for its id and agent is applied to it at once."""
        self._sweep()
        with self._lock:
            if handle.run_id in self._runs:
                raise ConfigurationError(f"run id {handle.run_id!r} is already in use by an active run")
            self._runs[handle.run_id] = handle
            parent = self._runs.get(handle.parent_run_id) if handle.parent_run_id else None
            early = self._early.take(handle.run_id, handle.agent_id, time.monotonic())
        if early is not None:
            handle.request_cancel(early.reason, "user", mode=early.mode, grace=early.grace)
        if parent is not None:
            parent.add_child(handle)
        if self.remote is not None:
            self.remote.run_registered(handle)

    async def started(self, handle: RunHandle) -> None:
        """A registered run is starting: publish it to the remote canceller, if one is attached."""
        if self.remote is not None:
            await self.remote.run_started(handle)

    def unregister(self, handle: RunHandle) -> None:
        with self._lock:
            if self._runs.get(handle.run_id) is handle:
                del self._runs[handle.run_id]
                if self._cancel_memory:
                    self._early.ended(handle.run_id, time.monotonic(), self._cancel_memory)
            parent = self._runs.get(handle.parent_run_id) if handle.parent_run_id else None
        if parent is not None:
            parent.remove_child(handle)
        if self.remote is not None:
            self.remote.run_unregistered(handle)

    def dropped(self, handle: RunHandle) -> None:
        """A never-read stream was garbage-collected: forget its run at the next use (no lock here)."""
        self._dropped.append(handle)

    def _sweep(self) -> None:
        while self._dropped:
            try:
                handle = self._dropped.popleft()
            except IndexError:
                return
            if handle.life.abandon("consumer"):
                self.unregister(handle)

    def get(self, run_id: str) -> RunHandle | None:
        self._sweep()
        with self._lock:
            return self._runs.get(run_id)

    def active(self) -> list[str]:
        self._sweep()
        with self._lock:
            return list(self._runs)

    def handles(self) -> list[RunHandle]:
        self._sweep()
        with self._lock:
            return list(self._runs.values())

    # -- ended runs whose final write is under way ----------------------------------------------

    def keep_ended(self, output: RunOutput) -> None:
        with self._lock:
            self._ended[output.run_id] = output

    def forget_ended(self, run_id: str) -> None:
        with self._lock:
            self._ended.pop(run_id, None)

    def ended_output(self, run_id: str) -> RunOutput | None:
        """The final output of a run that has ended but is not stored yet (else None)."""
        with self._lock:
            return self._ended.get(run_id)

    # -- cancelling ------------------------------------------------------------------------------

    def answer_cancel(
        self,
        run_id: str,
        *,
        reason: str | None = None,
        source: CancelSource = "user",
        agent_id: str | None = None,
        mode: CancelMode = "immediate",
        grace: float | None = None,
    ) -> CancelAnswer | None:
        """Cancel a run of this process; its answer, or None if no such run (of ``agent_id``) is here.

        A user's cancel (``source="user"``) for a well-formed id that no run here has, live or just ended,
        is remembered for :attr:`cancel_memory` seconds: the run that registers with that id (for
        ``agent_id``, or any agent when None) starts cancelled. The answer is None all the same.
        """
        check_mode(mode, grace)
        self._sweep()
        with self._lock:
            handle = self._runs.get(run_id)
            ended = self._ended.get(run_id)
            if handle is None and ended is None and source == "user" and self._cancel_memory:
                now = time.monotonic()
                kept = EarlyCancel(reason, agent_id, mode, grace, now + self._cancel_memory)
                self._early.remember(run_id, kept, now)
        if handle is not None and (agent_id is None or handle.agent_id == agent_id):
            return handle.answer_cancel(reason, source, mode=mode, grace=grace)
        if ended is not None and (agent_id is None or ended.agent_id == agent_id):
            return CancelAnswer.CANCELLED if ended.status is RunStatus.cancelled else CancelAnswer.ENDED
        return None

    def cancel(
        self,
        run_id: str,
        *,
        reason: str | None = None,
        source: CancelSource = "user",
        agent_id: str | None = None,
        mode: CancelMode = "immediate",
        grace: float | None = None,
    ) -> bool:
        """Cancel a run of this process; True iff it is stopping or has just been stopped by a cancel
        (its final write may still be under way)."""
        answer = self.answer_cancel(
            run_id, reason=reason, source=source, agent_id=agent_id, mode=mode, grace=grace
        )
        return answer is CancelAnswer.STOPPING or answer is CancelAnswer.CANCELLED


def check_memory(seconds: float) -> float:
    """``seconds`` if it is a valid ``cancel_memory`` (a finite number >= 0), else a ConfigurationError."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds < math.inf:
        raise ConfigurationError(f"cancel_memory must be a number of seconds >= 0 (got {seconds!r})")
    return float(seconds)


registry = RunRegistry()
"""The one registry of this process."""


async def stop_runs(handles: list[RunHandle], reason: str, source: CancelSource, wait: float) -> None:
    """Cancel ``handles``; wait (shielded, ``wait`` seconds in all) for those running on this loop.

    A run's done event is waited on in its own loop only; a run that never started ends as it is
    cancelled, so there is nothing to wait for.
    """
    for handle in handles:
        handle.request_cancel(reason, source)
    loop = asyncio.get_running_loop()
    with anyio.move_on_after(wait, shield=True):
        for handle in handles:
            if handle.task is not None and handle.task.get_loop() is loop:
                await handle.done_event().wait()


def active_runs() -> list[str]:
    """Ids of the runs active (pending or running) in this process."""
    return registry.active()

"""The process-wide registry of active runs."""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING

import anyio

from ..exceptions import ConfigurationError
from ._events import CancelSource
from ._handle import CancelMode, RunHandle, check_mode

if TYPE_CHECKING:
    from ..distributed._protocol import Remote


class RunRegistry:
    """Active runs by id. Thread-safe; a run is in it from creation until its outcome is decided."""

    def __init__(self) -> None:
        self._runs: dict[str, RunHandle] = {}
        self._lock = threading.Lock()
        self.remote: Remote | None = None  # cross-process cancellation, when attached

    def register(self, handle: RunHandle) -> None:
        with self._lock:
            if handle.run_id in self._runs:
                raise ConfigurationError(f"run id {handle.run_id!r} is already in use by an active run")
            self._runs[handle.run_id] = handle
            parent = self._runs.get(handle.parent_run_id) if handle.parent_run_id else None
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
            parent = self._runs.get(handle.parent_run_id) if handle.parent_run_id else None
        if parent is not None:
            parent.remove_child(handle)
        if self.remote is not None:
            self.remote.run_unregistered(handle)

    def get(self, run_id: str) -> RunHandle | None:
        with self._lock:
            return self._runs.get(run_id)

    def active(self) -> list[str]:
        with self._lock:
            return list(self._runs)

    def handles(self) -> list[RunHandle]:
        with self._lock:
            return list(self._runs.values())

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
        """Cancel an active run; True iff it is active (and belongs to ``agent_id`` when given)."""
        check_mode(mode, grace)
        handle = self.get(run_id)
        if handle is None or (agent_id is not None and handle.agent_id != agent_id):
            return False
        return handle.request_cancel(reason, source, mode=mode, grace=grace)


registry = RunRegistry()
"""The one registry of this process."""


def cancel_run(
    run_id: str, reason: str | None = None, *, mode: CancelMode = "immediate", grace: float | None = None
) -> bool:
    """Cancel any agent's active run in this process; True iff it was active.

    Thread-safe, idempotent, and never blocks. ``mode="immediate"`` interrupts whatever the run
    awaits; ``mode="after_turn"`` lets the current model response and its tool calls finish and
    stops before the next model request; ``grace`` escalates that to immediate after so many
    seconds. Either way the run ends with one ``RunCancelled`` event (``source="user"``).
    Also True when the run is already being cancelled.

    Example::

        if tether.cancel_run(run_id, reason="user pressed stop"):
            ...
    """
    return cancel_anywhere(run_id, reason=reason, mode=mode, grace=grace)


def cancel_anywhere(
    run_id: str,
    *,
    reason: str | None,
    mode: CancelMode = "immediate",
    grace: float | None = None,
    agent_id: str | None = None,
) -> bool:
    """Cancel a run here if it lives here, else (blocking, bounded) through the attached remote."""
    decided = _cancel_here(run_id, reason=reason, mode=mode, grace=grace, agent_id=agent_id)
    if decided is not None:
        return decided
    from .._sync import bridge
    from ..distributed._protocol import RemoteOutcome

    remote = registry.remote
    assert remote is not None
    outcome = bridge.call(
        lambda: remote.cancel(run_id, agent_id=agent_id, reason=reason, mode=mode, grace=grace)
    )
    return outcome is RemoteOutcome.cancelled


async def acancel_anywhere(
    run_id: str,
    *,
    reason: str | None,
    mode: CancelMode = "immediate",
    grace: float | None = None,
    agent_id: str | None = None,
) -> bool:
    """:func:`cancel_anywhere` for async code: the remote round trip is awaited, not blocked on."""
    decided = _cancel_here(run_id, reason=reason, mode=mode, grace=grace, agent_id=agent_id)
    if decided is not None:
        return decided
    from ..distributed._protocol import RemoteOutcome

    assert registry.remote is not None
    outcome = await registry.remote.cancel(run_id, agent_id=agent_id, reason=reason, mode=mode, grace=grace)
    return outcome is RemoteOutcome.cancelled


def _cancel_here(
    run_id: str, *, reason: str | None, mode: CancelMode, grace: float | None, agent_id: str | None
) -> bool | None:
    """The answer when this process decides (the run lives here, or there is no remote); else None."""
    check_mode(mode, grace)
    if registry.get(run_id) is not None or registry.remote is None:
        return registry.cancel(run_id, reason=reason, agent_id=agent_id, mode=mode, grace=grace)
    return None


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

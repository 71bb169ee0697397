"""Cancelling a run by id from anywhere: here if it lives in this process, else through the remote.

The engine (``tether._run``) decides for runs of this process; a run owned by another process is
reached through the attached remote canceller (``tether.distributed``), whose I/O runs on the
background loop, so the blocking form works from any thread.
"""

from __future__ import annotations

from ._background_loop import background_loop
from ._run import CancelMode, registry
from ._run._lifecycle import check_mode
from ._run._remote import RemoteOutcome


def cancel_run(
    run_id: str, reason: str | None = None, *, mode: CancelMode = "immediate", grace: float | None = None
) -> bool:
    """Cancel any agent's active run in this process (or, with Redis attached, in any worker).

    True iff the run is stopping (also when it was already being cancelled); False for an unknown
    or ended run. Thread-safe, idempotent, and never blocks for a run of this process.
    ``mode="immediate"`` interrupts whatever the run awaits; ``mode="after_turn"`` lets the current
    model response and its tool calls finish and stops before the next model request; ``grace``
    escalates that to immediate after so many seconds. Either way the run ends with one
    ``RunCancelled`` event (``source="user"``).

    For a run id that no run has yet the answer is False, but the cancel is kept for a short time
    (``cancel_memory``, 60 s by default; in every worker when Redis is attached): a run that starts
    with that id starts cancelled (``RunStarted``, then ``RunCancelled``; the model is never called).

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
    remote = registry.remote
    assert remote is not None
    outcome = background_loop.call(
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
    assert registry.remote is not None
    outcome = await registry.remote.cancel(run_id, agent_id=agent_id, reason=reason, mode=mode, grace=grace)
    return outcome is RemoteOutcome.cancelled


def _cancel_here(
    run_id: str, *, reason: str | None, mode: CancelMode, grace: float | None, agent_id: str | None
) -> bool | None:
    """The answer when this process decides (the run lives here, or there is no remote); else None."""
    check_mode(mode, grace)
    if registry.get(run_id) is not None or registry.remote is None or registry.ended_output(run_id):
        return registry.cancel(run_id, reason=reason, agent_id=agent_id, mode=mode, grace=grace)
    return None

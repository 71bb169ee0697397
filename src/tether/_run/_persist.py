"""Persistence of runs: the RUNNING row at start, session history, and the process heartbeat.

The heartbeat is one task per (storage, event loop) while that loop has live stored runs: every
``heartbeat_interval`` seconds it writes this process's heartbeat (one write for all its runs, never
per chunk) and reconciles runs orphaned by dead processes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import anyio

from .._messages import Message
from ._events import RunStatus
from ._output import RunOutput

if TYPE_CHECKING:
    from ..storage import Storage
    from ._state import RunState

logger = logging.getLogger("tether.storage")

PERSIST_TIMEOUT = 5.0
"""Seconds the final write of a run may take (shielded) before the terminal event goes out anyway."""
HEARTBEAT_INTERVAL = 5.0


def history_from(runs: list[RunOutput], *, keep_interrupted: bool) -> list[Message]:
    """The messages of a session's earlier runs, oldest first, as history for the next run."""
    history: list[Message] = []
    for run in runs:
        if run.status.is_active:
            continue  # still running elsewhere: its messages are not final
        for message in run.messages:
            if message.role == "system" or message.from_history:
                continue
            if message.interrupted and not keep_interrupted:
                continue
            history.append(message.model_copy(update={"from_history": True}))
    return history


async def prepare(state: RunState) -> None:
    """Load the session's history and write the run as RUNNING (inside the run's cancel scope)."""
    from ..storage._base import owner_id
    from ._finish import snapshot

    spec = state.spec
    storage = spec.storage
    if storage is None:
        return
    if spec.continue_session:
        runs = await storage.list_runs(
            agent_id=state.handle.agent_id, session_id=state.handle.session_id, limit=spec.history_runs
        )
        history = history_from(runs, keep_interrupted=spec.keep_interrupted)
        at = len(state.messages) - 1  # just before this run's user message
        state.messages[at:at] = history
    await storage.start_run(snapshot(state, RunStatus.running), owner_id())
    heartbeats.started(storage)
    state.stored = True


async def persist(state: RunState) -> None:
    """The final write: shielded, bounded; a failure is logged and never blocks the terminal event."""
    storage = state.spec.storage
    if storage is None or state.output is None:
        return
    try:
        with anyio.move_on_after(PERSIST_TIMEOUT, shield=True) as scope:
            await storage.finish_run(state.output)
        if scope.cancelled_caught:
            logger.error(
                "run %s: the final write to %r timed out (%s s)",
                state.handle.run_id,
                storage,
                PERSIST_TIMEOUT,
            )
    except Exception as exc:
        logger.error("run %s: the final write to %r failed: %s", state.handle.run_id, storage, exc)
    finally:
        if state.stored:
            heartbeats.ended(storage)


class Heartbeats:
    """Counts live stored runs per (storage, loop) and keeps one heartbeat task for each."""

    def __init__(self) -> None:
        self._live: dict[tuple[int, asyncio.AbstractEventLoop], int] = {}
        self._tasks: dict[tuple[int, asyncio.AbstractEventLoop], asyncio.Task[None]] = {}

    def started(self, storage: Storage) -> None:
        key = (id(storage), asyncio.get_running_loop())
        self._live[key] = self._live.get(key, 0) + 1
        task = self._tasks.get(key)
        if task is None or task.done():
            self._tasks[key] = key[1].create_task(self._beat(storage, key), name="tether-heartbeat")

    def ended(self, storage: Storage) -> None:
        key = (id(storage), asyncio.get_running_loop())
        self._live[key] = self._live.get(key, 1) - 1

    async def _beat(self, storage: Storage, key: tuple[int, asyncio.AbstractEventLoop]) -> None:
        from ..storage._base import owner_id

        interval = float(getattr(storage, "heartbeat_interval", HEARTBEAT_INTERVAL))
        stale_after = float(getattr(storage, "stale_after", 30.0))
        try:
            while self._live.get(key, 0) > 0:
                await anyio.sleep(interval)
                try:
                    await storage.heartbeat(owner_id())
                    await storage.reap(stale_after)
                except Exception as exc:
                    logger.warning("heartbeat to %r failed: %s", storage, exc)
        finally:
            if self._live.get(key, 0) <= 0:
                self._live.pop(key, None)
                self._tasks.pop(key, None)


heartbeats = Heartbeats()

"""Persistence of runs: the RUNNING row at start, the final write, session history, the heartbeat.

The final write never holds up the end of a run for long: the terminal event waits for it at most
``FINAL_WRITE_WAIT`` seconds. A slower write goes on in the background and a failed one is retried
(with back-off) until it lands; meanwhile the run's final output is kept in the registry
(``registry.ended_output``), so it is still findable, and this process's heartbeat stays fresh, so
no reaper takes the run for orphaned. A write that never lands (the process exits first) leaves
the row RUNNING under a dead owner: the next reaper marks it ERROR, so it is never RUNNING forever.

The heartbeat is one task per (storage, event loop) while that loop has live stored runs: every
``heartbeat_interval`` seconds it writes this process's heartbeat (one write for all its runs, never
per chunk) and reconciles runs orphaned by dead processes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from .._messages import Message
from ..exceptions import ConfigurationError
from ._escaped import carried, unwrapped
from ._events import RunStatus
from ._output import RunOutput
from ._registry import registry
from ._store import owner_id

if TYPE_CHECKING:
    from ._state import RunState
    from ._store import Storage

logger = logging.getLogger("tether.storage")
T = TypeVar("T")

FINAL_WRITE_WAIT = 0.04
"""Seconds the terminal event waits for the final write before it goes out anyway."""
PERSIST_TIMEOUT = 5.0
"""Seconds one attempt at a write may take before it is given up (and, for the final write, retried)."""
RETRY_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
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
    """Load the session's history and write the run as RUNNING (inside the run's cancel scope).

    The RUNNING write is a task of its own: a cancel interrupts the wait for it, not the write, and
    the final write starts only after it, so the two can never land in the wrong order.
    """
    from ._finish import snapshot

    spec = state.spec
    storage = spec.storage
    if storage is None:
        return
    if spec.continue_session:
        runs = await _detached(
            storage.list_runs(
                agent_id=state.handle.agent_id, session_id=state.handle.session_id, limit=spec.history_runs
            ),
            f"tether-history-{state.handle.run_id}",
        )
        history = history_from(runs, keep_interrupted=spec.keep_interrupted)
        at = len(state.messages) - 1  # just before this run's user message
        state.messages[at:at] = history
    if spec.refuse_stored:
        name = f"tether-check-{state.handle.run_id}"
        if await _detached(storage.get_run(state.handle.run_id), name) is not None:
            state.refused = True
            raise ConfigurationError(f"run id {state.handle.run_id!r} is already used by a stored run")
    heartbeats.started(storage)
    write = state.start_write = asyncio.get_running_loop().create_task(
        _bounded(storage.start_run(snapshot(state, RunStatus.running), owner_id())),
        name=f"tether-start-write-{state.handle.run_id}",
    )
    await unwrapped(asyncio.shield(write))


async def _detached(read: Awaitable[T], name: str) -> T:
    """Await ``read`` in a task of its own: a cancel interrupts the wait at once, whatever storage does."""
    task = asyncio.get_running_loop().create_task(_bounded_read(read), name=name)
    task.add_done_callback(_retrieve)
    return await unwrapped(asyncio.shield(task))


async def _bounded_read(read: Awaitable[T]) -> T:
    with anyio.fail_after(PERSIST_TIMEOUT):
        return await carried(read)


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # a read whose waiter left: its failure is not worth a warning


async def persist(state: RunState) -> None:
    """The final write: waited for at most ``FINAL_WRITE_WAIT`` s, then finished in the background."""
    storage, output = state.spec.storage, state.output
    if storage is None or output is None or state.refused:
        return
    if state.start_write is None:
        heartbeats.started(storage)  # the run ended before its RUNNING write: still count it
    write = asyncio.get_running_loop().create_task(
        _final_write(storage, output, state.start_write), name=f"tether-final-write-{output.run_id}"
    )
    _writes.add(write)
    write.add_done_callback(_writes.discard)
    with anyio.move_on_after(FINAL_WRITE_WAIT, shield=True):
        await asyncio.shield(write)
    if not write.done():
        registry.keep_ended(output)  # findable until the write lands
        write.add_done_callback(lambda _: registry.forget_ended(output.run_id))


_writes: set[asyncio.Task[None]] = set()  # strong references to final writes under way


async def settle_writes(within: float) -> None:
    """Wait (shielded, at most ``within`` s) for the final writes under way on this loop to land."""
    loop = asyncio.get_running_loop()
    mine = [task for task in _writes if task.get_loop() is loop]
    if mine:
        with anyio.move_on_after(within, shield=True):
            await asyncio.wait(mine)


async def _bounded(write: Awaitable[None]) -> None:
    with anyio.fail_after(PERSIST_TIMEOUT):
        await carried(write)


async def _final_write(storage: Storage, output: RunOutput, started: asyncio.Task[None] | None) -> None:
    if started is not None:
        await asyncio.wait([started])
        if not started.cancelled():
            started.exception()  # retrieved here: its failure was the run's to report
    try:
        for attempt in itertools.count():
            try:
                await _bounded(storage.finish_run(output))
                return
            except Exception as exc:
                delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
                log = logger.error if attempt == 0 else logger.warning
                log(
                    "run %s: the final write to %r failed (%s); retrying in %s s",
                    output.run_id,
                    storage,
                    str(exc) or type(exc).__name__,
                    delay,
                )
                await anyio.sleep(delay)
    finally:
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

        interval = float(getattr(storage, "heartbeat_interval", HEARTBEAT_INTERVAL))
        stale_after = float(getattr(storage, "stale_after", 30.0))
        try:
            while self._live.get(key, 0) > 0:
                await anyio.sleep(interval)
                if self._live.get(key, 0) <= 0:
                    break  # its last run ended meanwhile: its store may be closed by now
                try:
                    with anyio.fail_after(PERSIST_TIMEOUT):
                        await storage.heartbeat(owner_id())
                        await storage.reap(stale_after)
                except asyncio.CancelledError:
                    raise
                except BaseException as exc:  # never let one failure end the heartbeat (or the loop)
                    logger.warning("heartbeat to %r failed: %s", storage, str(exc) or type(exc).__name__)
        finally:
            if self._live.get(key, 0) <= 0:
                self._live.pop(key, None)
                self._tasks.pop(key, None)


heartbeats = Heartbeats()

"""RunReader: the events of a run for any reader other than its own consumer (attach, resume).

A live run is read from its :class:`~tether._run._log.EventLog` (on the run's own event loop: a
reader on another loop or thread hops there for each batch); a run that has ended is replayed from its
output (kept in memory until its final write lands, then from storage). Readers never cancel the run.
"""

from __future__ import annotations

import asyncio
from collections import deque

import anyio

from ..exceptions import RunNotFoundError
from ._events import BaseRunEvent
from ._finish import terminal_event
from ._output import RunOutput
from ._registry import registry
from ._store import Storage

NOT_STARTED_POLL = 0.01
"""Seconds between looks at a run that is registered but not started yet (its loop is not known)."""


class RunReader:
    """The events of run ``run_id`` with ``event_index > after`` (all when None), then the live ones,
    ending with the terminal event. See :meth:`tether.Agent.aattach`.

    Raises :class:`~tether.exceptions.RunNotFoundError` at the first read if the agent has no such run
    live in this process nor stored.
    """

    __slots__ = (
        "_after",
        "_agent_id",
        "_buffer",
        "_done",
        "_handle",
        "_replay",
        "_session_id",
        "_storage",
        "run_id",
    )

    def __init__(self, run_id: str, agent_id: str, storage: Storage | None, after: int | None) -> None:
        self.run_id = run_id
        self._agent_id = agent_id
        self._storage = storage
        self._after = after
        handle = registry.get(run_id)  # a live run is bound at once: it may end before the first read
        self._handle = handle if handle is not None and handle.agent_id == agent_id else None
        self._replay: list[BaseRunEvent] | None = None
        self._session_id: str | None = None  # a replayed run's
        self._buffer: deque[BaseRunEvent] = deque()
        self._done = False

    @property
    def last_event_index(self) -> int | None:
        """The index of the last event read (``after`` before the first)."""
        return self._after

    @property
    def session_id(self) -> str | None:
        """The run's session id, once it was found (after :meth:`locate` or the first read)."""
        return self._handle.session_id if self._handle is not None else self._session_id

    async def locate(self) -> None:
        """Find the run now, without waiting for an event: raises RunNotFoundError as the first read would.

        For a server, which must answer 404 before it sends a stream's headers, and must not hold
        them back until a stalled run's next event.
        """
        if self._handle is None and self._replay is None and not self._done:
            await self._find()

    def __aiter__(self) -> RunReader:
        return self

    async def __anext__(self) -> BaseRunEvent:
        if not self._buffer:
            self._buffer.extend(await self.next_batch())
            if not self._buffer:
                raise StopAsyncIteration
        return self._buffer.popleft()

    async def aclose(self) -> None:
        """Stop reading (the run goes on)."""
        self._done = True
        self._buffer.clear()

    async def next_batch(self) -> list[BaseRunEvent]:
        """The next events (at least one), or [] once the terminal event was read."""
        if self._done:
            return []
        if self._handle is None and self._replay is None:
            await self._find()
        if self._replay is not None:
            after = -1 if self._after is None else self._after
            batch = [event for event in self._replay if event.event_index > after]
            self._replay = []
        else:
            batch = await self._from_log()
        if not batch:
            self._done = True
            return []
        self._after = batch[-1].event_index
        if batch[-1].is_terminal:
            self._done = True
        return batch

    async def _find(self) -> None:
        handle = registry.get(self.run_id)
        if handle is not None and handle.agent_id == self._agent_id:
            self._handle = handle
            return
        output = registry.ended_output(self.run_id)
        if output is None and self._storage is not None:
            output = await self._storage.get_run(self.run_id)
        if output is None or output.agent_id != self._agent_id:
            raise RunNotFoundError(f"agent {self._agent_id!r} has no run {self.run_id!r}, live or stored")
        if output.status.is_active:
            raise RunNotFoundError(
                f"run {self.run_id!r} is active in another process (or was left RUNNING by one that exited)"
            )
        self._session_id = output.session_id
        self._replay = _replay(output)

    async def _from_log(self) -> list[BaseRunEvent]:
        handle = self._handle
        assert handle is not None
        while handle.loop is None:  # registered, not started: it starts on its consumer's first read
            if not handle.is_active:
                return []
            await anyio.sleep(NOT_STARTED_POLL)
        loop = handle.loop
        if loop is asyncio.get_running_loop():
            return await handle.log.wait_after(self._after)
        try:
            future = asyncio.run_coroutine_threadsafe(handle.log.wait_after(self._after), loop)
        except RuntimeError:  # its loop has closed: the run ended with it
            return []
        return await asyncio.wrap_future(future)


def _replay(output: RunOutput) -> list[BaseRunEvent]:
    """A stored run's events; only its terminal event when they were not stored (an older row)."""
    if output.events:
        return list(output.events)
    return [terminal_event(output, 0)]

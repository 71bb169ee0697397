"""This process's runs in Redis: the ``runs`` entries it writes, and the early cancels it reads with them.

A run that registers queues one step of the outbox's next pipeline (it never waits): ``HSET runs <run>``
and ``GETDEL early:<run>``, the durable copy of a user's cancel that reached Redis before any worker had
the run (``_exchange`` writes it). Reading it in the pipeline that writes the entry costs no extra round
trip. A request found there is applied as soon as the replies arrive (on the background loop), so before
the run's first event when they arrive within the time ``started`` waits (``connect_timeout``). Needs
Redis >= 6.2 (GETDEL); an older one answers with an error, which is logged, and the run goes on.

Race-free with the canceller: it writes ``early:<run>`` and then reads ``runs[<run>]``; here the entry is
written and then ``early:<run>`` is read. Either this GETDEL sees the request, or the canceller sees the
entry and delivers the cancel to the run like any other (and removes ``early:<run>``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

import anyio

from .._run._handle import RunHandle
from ._outbox import Outbox, Sent
from ._wire import Entry, Keys, Request, logger, parse


class LocalRuns:
    """The runs living in this process, as Redis knows them. The hooks are thread-safe and never block."""

    def __init__(self, keys: Keys, owner: str) -> None:
        self.keys = keys
        self.owner = owner
        self.live: dict[str, str] = {}  # run id -> agent id (the heartbeat rewrites their entries)
        self.outbox = Outbox()  # run entries to write or remove, from any thread
        self._writes: dict[str, Sent] = {}  # entries of runs not yet started

    def registered(self, handle: RunHandle) -> None:
        """Queue the run's entry (and the read of an early cancel for it)."""
        run_id, agent_id = handle.run_id, handle.agent_id
        self.live[run_id] = agent_id
        runs, early, entry = self.keys.runs, self.keys.early(run_id), Entry.written(self.owner, agent_id)

        def command(pipe: Any) -> None:
            pipe.hset(runs, run_id, entry)
            pipe.getdel(early)

        written = self.outbox.put(command)
        if written is not None:
            # Added before anyone waits on it: the cancel is applied before the run's waiter wakes up.
            written.add_done_callback(lambda sent: _apply_early(handle, sent, early))
            self._writes[run_id] = written

    async def started(self, handle: RunHandle, wait: float) -> None:
        """Wait at most ``wait`` seconds (shielded) until the entry queued by :meth:`registered` is in."""
        written = self._writes.pop(handle.run_id, None)
        if written is None or written.done() or wait <= 0:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(wait):
            # shield(): giving up waiting must not cancel the write itself
            await asyncio.shield(asyncio.wrap_future(written))

    def unregistered(self, handle: RunHandle) -> None:
        """Queue the removal of the run's entry."""
        self.live.pop(handle.run_id, None)
        self._writes.pop(handle.run_id, None)  # a run that never started
        runs, run_id = self.keys.runs, handle.run_id
        self.outbox.put(lambda pipe: pipe.hdel(runs, run_id))


def _apply_early(handle: RunHandle, sent: concurrent.futures.Future[list[Any]], key: str) -> None:
    """Apply the early cancel the pipeline read for ``handle`` (if any); runs on the background loop."""
    try:
        replies = [] if sent.cancelled() else sent.result()
        raw = replies[1] if len(replies) == 2 else None
        if isinstance(raw, Exception):
            logger.warning("reading %s from Redis failed (Redis >= 6.2 is needed): %s", key, raw)
            return
        request = parse(Request, raw, key) if raw is not None else None
        if request is None:
            return
        if request.run_id != handle.run_id:
            logger.warning("skipped an early cancel at %s for another run (%s)", key, request.run_id)
        elif request.agent_id in (None, handle.agent_id):
            handle.request_cancel(request.reason, "user", mode=request.mode, grace=request.grace)
    except Exception:  # a callback's error would only be printed by concurrent.futures
        logger.exception("applying the early cancel at %s failed; skipped", key)

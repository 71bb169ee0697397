"""Running a scenario through the async API and recording what the consumer saw.

Every run is bounded: a scenario that has not ended after ``HANG`` seconds fails as a hang (its
run is then cancelled so the next example starts clean).
"""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

import tether
from tether import BaseRunEvent, RunOutput, RunStream, active_runs
from tether._run._persist import settle_writes
from tether._run._reader import RunReader

from ._scenarios import PROMPT, RUN_ID, Action, Built, Scenario, Trigger

HANG = 10.0
"""Seconds after which a scenario counts as hung (every scripted wait adds up to well under 2 s)."""
DROP_WAIT = 5.0
"""Seconds a dropped stream's run may take to leave the registry after a garbage collection."""


@dataclass
class Issued:
    action: Action
    reason: str | None = None
    returned: bool | None = None  # what a cancel call answered


@dataclass
class Outcome:
    """What happened, as seen from outside the engine."""

    received: list[BaseRunEvent] = field(default_factory=list)
    attached: list[BaseRunEvent] | None = None  # what a reader attached from the start read
    issued: list[Issued] = field(default_factory=list)
    stopped: str | None = None  # "consumer" | "outer": the consumer stopped reading before the end
    dropped: bool = False
    never_read: bool = False
    output: RunOutput | None = None
    stored: RunOutput | None = None
    raised: BaseException | None = None  # what the blocking call raised (sync API)
    active_after: list[str] = field(default_factory=list)
    hung: str | None = None

    def cancelled_by_user(self) -> list[Issued]:
        return [i for i in self.issued if i.action.is_cancel and i.returned]


def cancel(built: Built, outcome: Outcome, action: Action) -> Issued:
    """Issue a cancel action (not from another thread); record its reason and answer."""
    issued = Issued(action, reason=f"r{len(outcome.issued)}")
    outcome.issued.append(issued)
    kwargs: dict[str, Any] = {"mode": action.mode, "grace": action.grace}
    if action.kind == "cancel_any":
        issued.returned = tether.cancel_run(RUN_ID, issued.reason, **kwargs)
    else:
        issued.returned = built.agent.cancel_run(RUN_ID, issued.reason, **kwargs)
    return issued


async def acancel(built: Built, outcome: Outcome, action: Action) -> None:
    if action.kind == "acancel":
        issued = Issued(action, reason=f"r{len(outcome.issued)}")
        outcome.issued.append(issued)
        issued.returned = await built.agent.acancel_run(
            RUN_ID, issued.reason, mode=action.mode, grace=action.grace
        )  # type: ignore[arg-type]
    elif action.kind == "cancel_thread":
        issued = Issued(action, reason=f"r{len(outcome.issued)}")
        outcome.issued.append(issued)

        def call() -> bool:
            return built.agent.cancel_run(RUN_ID, issued.reason, mode=action.mode, grace=action.grace)  # type: ignore[arg-type]

        issued.returned = await anyio.to_thread.run_sync(call)
    else:
        cancel(built, outcome, action)


def hold_lock(path: Path, hold: float) -> None:
    """Another connection takes the database's write lock for ``hold`` seconds."""
    conn = sqlite3.connect(path, timeout=5.0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        time.sleep(hold)
        conn.execute("ROLLBACK")
    finally:
        conn.close()


class AsyncDriver:
    """One scenario, through ``agent.arun`` (streamed or collected), on the current event loop."""

    def __init__(self, scenario: Scenario, built: Built) -> None:
        self.sc = scenario
        self.built = built
        self.out = Outcome()
        self.stream: RunStream | None = None
        self.consumer: asyncio.Task[None] | None = None
        self.attacher: asyncio.Task[None] | None = None
        self.reader: RunReader | None = None

    async def run(self) -> Outcome:
        storage = self.built.storage
        if storage is not None:
            await storage.open()
        try:
            with anyio.fail_after(HANG):
                await self._run()
        except TimeoutError:
            self.out.hung = f"the run did not end within {HANG} s"
        finally:
            await self._clean_up()
        return self.out

    async def _run(self) -> None:
        sc = self.sc
        async with anyio.create_task_group() as group:
            if sc.storage == "locked":
                group.start_soon(self._lock_storage)
            if sc.consumer == "collect":
                self.consumer = asyncio.ensure_future(self._outer(self._collect()))
            else:
                self.stream = self.built.agent.arun(PROMPT, stream=True, run_id=RUN_ID, timeout=sc.timeout)
                self.consumer = asyncio.ensure_future(self._outer(self._read()))
                self.reader = self.built.agent.aattach(RUN_ID)
                self.attacher = asyncio.ensure_future(self._attach(self.reader))
            for trigger in sc.triggers:
                if trigger.after is not None:
                    group.start_soon(self._fire, trigger)
            await asyncio.wait([self.consumer])
            if self.consumer.cancelled():
                self.out.stopped = "outer"
            elif self.consumer.exception() is not None:
                raise self.consumer.exception()  # type: ignore[misc]
            group.cancel_scope.cancel()
        self.out.output = self.stream.output if self.stream is not None else self.out.output
        closed = self.out.stopped == "consumer" and not self.out.dropped  # aclose() returned
        if self.out.received and self.out.received[-1].is_terminal or closed:
            self.out.active_after = active_runs()  # the run has ended: it must have left the registry
        # Whatever the consumer did, it lets go of the stream now (a stream never read stays pending
        # until then): the run must leave the registry.
        await self._drop()
        self.out.active_after += active_runs()
        if self.attacher is not None:
            await asyncio.wait([self.attacher], timeout=DROP_WAIT)
            if not self.attacher.done():
                self.attacher.cancel()
                reader = self.reader
                handle = reader._handle if reader is not None else None
                log = handle.log if handle is not None else None
                self.out.hung = (
                    f"an attached reader did not end with the run: after={reader and reader._after} "
                    f"phase={handle and handle.life.phase} loop={handle and handle.loop} "
                    f"next={log and log.next} ended={log and log.ended} first={log and log.first}"
                )
            elif self.attacher.exception() is not None:
                raise self.attacher.exception()  # type: ignore[misc]

    async def _attach(self, reader: RunReader) -> None:
        """Another reader of the same run, attached before it starts (it never stops the run)."""
        self.out.attached = [event async for event in reader]

    async def _outer(self, body: Any) -> None:
        outer = self.sc.outer
        if outer is None:
            await body
        elif outer[0] == "move_on_after":
            with anyio.move_on_after(outer[1]) as scope:
                await body
            if scope.cancelled_caught:
                self.out.stopped = "outer"
        else:
            try:
                await asyncio.wait_for(body, outer[1])
            except TimeoutError:
                self.out.stopped = "outer"

    async def _collect(self) -> None:
        self.out.output = await self.built.agent.arun(PROMPT, run_id=RUN_ID, timeout=self.sc.timeout)

    async def _read(self) -> None:
        stream = self.stream
        assert stream is not None
        if self.sc.consumer == "async_with":
            async with stream:
                await self._loop(stream)
        else:
            await self._loop(stream)

    async def _loop(self, stream: RunStream) -> None:
        if await self._at(0):
            self.out.never_read = not self.out.received
            return
        async for event in stream:
            self.out.received.append(event)
            if await self._at(len(self.out.received)):
                break

    async def _at(self, count: int) -> bool:
        """Apply the actions due after ``count`` events; True when the consumer stops reading."""
        stop = False
        for trigger in self.sc.triggers:
            if trigger.events == count:
                stop = await self._apply(trigger.action, inside=True) or stop
        return stop

    async def _fire(self, trigger: Trigger) -> None:
        assert trigger.after is not None
        await anyio.sleep(trigger.after)
        await self._apply(trigger.action, inside=False)

    async def _apply(self, action: Action, *, inside: bool) -> bool:
        kind = action.kind
        if action.is_cancel:
            await acancel(self.built, self.out, action)
            return False
        if kind == "task_cancel":
            assert self.consumer is not None
            self.out.issued.append(Issued(action))
            self.consumer.cancel()
            return False
        assert inside and self.stream is not None, f"{kind} is a consumer action"
        self.out.issued.append(Issued(action))
        self.out.stopped = "consumer"
        if kind == "break":
            self.out.dropped = True
            return True
        await self.stream.aclose()
        return kind == "break_aclose"

    async def _lock_storage(self) -> None:
        start, hold = self.sc.lock
        storage = self.built.storage
        assert storage is not None
        await anyio.sleep(start)
        await anyio.to_thread.run_sync(hold_lock, storage.path, hold)

    async def _drop(self) -> None:
        """The consumer drops the stream (after ``break``, it is what stops the run)."""
        self.stream = None
        self.consumer = None
        gc.collect()
        with anyio.move_on_after(DROP_WAIT):
            while active_runs():  # noqa: ASYNC110 (the registry has no event to wait on)
                await anyio.sleep(0.005)

    async def _clean_up(self) -> None:
        for run_id in active_runs():  # only after a failure: leave nothing for the next example
            tether.cancel_run(run_id, "fuzz clean-up")
        with anyio.move_on_after(DROP_WAIT, shield=True):
            while active_runs():  # noqa: ASYNC110 (the registry has no event to wait on)
                await anyio.sleep(0.005)
            storage = self.built.storage
            if storage is not None:
                await settle_writes(DROP_WAIT)  # a final write may outlast the terminal event (40 ms)
                self.out.stored = await storage.get_run(RUN_ID)
                await storage.aclose()


def run_async(scenario: Scenario, built: Built) -> Outcome:
    """Drive ``scenario`` on a fresh event loop (so nothing leaks from one example to the next)."""
    return anyio.run(AsyncDriver(scenario, built).run)


def wait_until_idle(limit: float = DROP_WAIT) -> None:
    """Block until the registry is empty (a run on the bridge loop may still be finishing)."""
    deadline = time.monotonic() + limit
    while active_runs() and time.monotonic() < deadline:
        time.sleep(0.005)


def join_or_hang(thread: threading.Thread, outcome: Outcome, limit: float = HANG) -> None:
    thread.join(limit)
    if thread.is_alive():
        outcome.hung = f"the blocking call did not return within {limit} s"
        for run_id in active_runs():
            tether.cancel_run(run_id, "fuzz clean-up")
        thread.join(limit)

"""Slow or locked storage never delays the Stop (issue 12 item 5), and a run is findable, with an exact cancel
answer, while its final write is still under way (issue 18 item 1)."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import anyio
import pytest

from tether import Agent, RunEvent, RunOutput, RunStatus, active_runs
from tether._run import CancelAnswer, registry
from tether.storage import SqliteStorage
from tether.testing import ScriptedModel

pytestmark = pytest.mark.anyio


def hold_write_lock(path: Path, seconds: float, locked: threading.Event) -> threading.Thread:
    """Another connection takes SQLite's write lock and holds it for ``seconds``."""

    def hold() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN IMMEDIATE")
        locked.set()
        time.sleep(seconds)
        conn.execute("ROLLBACK")
        conn.close()

    thread = threading.Thread(target=hold)
    thread.start()
    return thread


async def wait_for_row(path: Path, run_id: str, status: RunStatus, within: float) -> RunOutput:
    reader = SqliteStorage(path)
    try:
        with anyio.fail_after(within):
            while True:
                row = await reader.get_run(run_id)
                if row is not None and row.status is status:
                    return row
                await anyio.sleep(0.05)
    finally:
        await reader.aclose()


@pytest.mark.parametrize("session", [False, True], ids=["new-session", "with-history"])
async def test_a_cancel_ends_a_run_promptly_while_another_connection_holds_the_write_lock(
    tmp_path: Path, session: bool
) -> None:
    db = tmp_path / "runs.db"
    await SqliteStorage(db).open()  # the schema exists; now lock the file for 3 s
    locked = threading.Event()
    holder = hold_write_lock(db, 3.0, locked)
    assert await anyio.to_thread.run_sync(locked.wait, 5)
    storage = SqliteStorage(db)
    agent = Agent(name="locked", model=ScriptedModel(["never"], stall=30), storage=storage)
    stream = agent.arun("go", stream=True, run_id="lock-1", session_id="s-1" if session else None)
    events = []
    async for event in stream:
        events.append(event)
        if event.event == RunEvent.run_started:
            await anyio.sleep(0.5)  # the run is stuck writing its RUNNING row
            cancelled_at = time.monotonic()
            assert agent.cancel_run("lock-1", reason="stop") is True
    took = time.monotonic() - cancelled_at
    assert took < 1.0, f"RunCancelled came {took:.2f} s after the cancel"
    assert [e.event for e in events] == [RunEvent.run_started, RunEvent.run_cancelled]
    assert active_runs() == []
    found = await agent.aget_run("lock-1")  # findable (from memory) before the write lands
    assert found is not None and (found.status, found.cancel_reason) == (RunStatus.cancelled, "stop")
    await anyio.to_thread.run_sync(holder.join)
    stored = await wait_for_row(db, "lock-1", RunStatus.cancelled, within=15)
    assert stored == stream.output
    assert registry.ended_output("lock-1") is None, "forgotten once stored"
    await storage.aclose()


class SlowFinalWrites(SqliteStorage):
    """A real SQLite store on a slow disk: every final write takes half a second."""

    async def finish_run(self, output: RunOutput) -> None:
        await anyio.sleep(0.5)
        await super().finish_run(output)


async def test_repeated_cancels_during_a_slow_final_write_all_find_the_run(tmp_path: Path) -> None:
    storage = SlowFinalWrites(tmp_path / "runs.db")
    agent = Agent(
        name="slow", model=ScriptedModel([f"w{k} " for k in range(100)], delay=0.01), storage=storage
    )
    stream = agent.arun("go", stream=True, run_id="slow-1")
    answers: list[CancelAnswer | None] = []
    terminals = []
    async for event in stream:
        if event.event == RunEvent.run_content and event.content == "w3 ":
            answers.append(registry.answer_cancel("slow-1", reason="first"))
        if event.is_terminal:
            terminals.append(event)
            for reason in ("second", "third"):
                await anyio.sleep(0.1)
                answers.append(registry.answer_cancel("slow-1", reason=reason))
    assert answers == [CancelAnswer.STOPPING, CancelAnswer.CANCELLED, CancelAnswer.CANCELLED]
    assert len(terminals) == 1 and terminals[0].reason == "first"  # type: ignore[attr-defined]
    stored = await wait_for_row(tmp_path / "runs.db", "slow-1", RunStatus.cancelled, within=5)
    assert stored.cancel_reason == "first" and stored.content == terminals[0].content
    assert registry.answer_cancel("slow-1") is None, "stored and forgotten: storage answers from here on"
    await storage.aclose()


async def test_cancel_run_answers_true_for_a_run_just_stopped_by_a_cancel(tmp_path: Path) -> None:
    storage = SlowFinalWrites(tmp_path / "runs.db")
    agent = Agent(model=ScriptedModel([f"w{i} " for i in range(100)], delay=0.01), storage=storage)
    stream = agent.arun("go", stream=True)
    answers = []
    async for event in stream:
        if event.event == RunEvent.run_content and not answers:
            answers.append(agent.cancel_run(stream.run_id, "first"))
        elif event.event == RunEvent.run_cancelled:
            # The run's final write is still under way (the server answers 200 CANCELLED for it now).
            answers.append(agent.cancel_run(stream.run_id, "second"))
    await storage.aclose()
    assert answers == [True, True]

"""Runs persisted whatever ends them; stored content equals streamed content; sessions; bad files."""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from tether import Agent, ConfigurationError, RunEvent, RunStatus, StorageError
from tether.models.openai import OpenAIChat
from tether.storage import SqliteStorage
from tether.testing import LoopbackServer, Reply, ScriptedModel, ScriptedToolCall

pytestmark = pytest.mark.anyio

WORDS = [f"w{i} " for i in range(30)]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "runs.db"


def content_of(events: list) -> str:  # type: ignore[type-arg]
    return "".join(e.content for e in events if e.event == RunEvent.run_content)


async def test_running_row_is_visible_to_another_store_then_finalised(db: Path) -> None:
    agent = Agent(name="a", model=ScriptedModel(WORDS, stall=5, stall_at=2), storage=SqliteStorage(db))
    other_process = SqliteStorage(db)
    stream = agent.arun("go", stream=True, run_id="visible-1")
    events = []
    async for event in stream:
        events.append(event)
        if event.event == RunEvent.run_content and event.content == "w1 ":
            running = await other_process.get_run("visible-1")
            assert running is not None and running.status is RunStatus.running
            assert [m.content for m in running.messages] == ["go"]
            agent.cancel_run("visible-1", reason="stop")
    stored = await other_process.get_run("visible-1")
    assert stored is not None and stored == stream.output
    assert stored.content == content_of(events) == "w0 w1 "
    assert (stored.status, stored.cancel_reason, stored.cancel_source) == (
        RunStatus.cancelled,
        "stop",
        "user",
    )
    assert stored.messages[-1].interrupted is True
    await other_process.aclose()
    await agent.storage.aclose()  # type: ignore[union-attr]


@pytest.mark.parametrize("ending", ["completed", "user", "timeout", "consumer", "outer", "error"])
async def test_every_ending_is_stored_exactly(db: Path, ending: str) -> None:
    model = (
        ScriptedModel(WORDS[:5], error=RuntimeError("model blew up"), error_at=3)
        if ending == "error"
        else ScriptedModel(WORDS[:5], delay=0.02 if ending != "completed" else 0.0)
    )
    storage = SqliteStorage(db)
    agent = Agent(name="a", model=model, storage=storage)
    stream = agent.arun("go", stream=True, run_id="end-1", timeout=0.05 if ending == "timeout" else None)
    events = []
    with anyio.move_on_after(0.05 if ending == "outer" else 10):
        async for event in stream:
            events.append(event)
            if event.event == RunEvent.run_content and ending in ("user", "consumer"):
                if ending == "user":
                    agent.cancel_run("end-1", reason="enough")
                else:
                    await stream.aclose()
                    break
    stored = await agent.aget_run("end-1")
    assert stored is not None and stored == stream.output
    expected = {
        "completed": (RunStatus.completed, None),
        "user": (RunStatus.cancelled, "user"),
        "timeout": (RunStatus.cancelled, "timeout"),
        "consumer": (RunStatus.cancelled, "consumer"),
        "outer": (RunStatus.cancelled, "outer"),
        "error": (RunStatus.error, None),
    }[ending]
    assert (stored.status, stored.cancel_source) == expected
    assert stored.content == content_of(events)
    if ending == "error":
        assert stored.error == "RuntimeError: model blew up" and stored.content == "w0 w1 w2 "
    await storage.aclose()


async def test_reading_stored_runs(db: Path) -> None:
    storage = SqliteStorage(db)
    agent = Agent(name="reader", model=ScriptedModel(["ok"]), storage=storage)
    other = Agent(name="other", model=ScriptedModel(["no"]), storage=storage)
    for index in range(3):
        await agent.arun(f"q{index}", session_id="sess-1", run_id=f"read-{index}")
    await other.arun("x", session_id="sess-1", run_id="other-1")
    runs = await agent.aget_session_runs("sess-1")
    assert [r.run_id for r in runs] == ["read-0", "read-1", "read-2"]
    assert await agent.aget_run("other-1") is None, "another agent's run"
    assert await agent.aget_run("missing") is None
    assert (await other.aget_run("other-1")) is not None
    with pytest.raises(ConfigurationError, match="has no storage"):
        await Agent(model=ScriptedModel()).aget_run("x")
    await storage.aclose()


def test_reading_stored_runs_from_sync_code(db: Path) -> None:
    agent = Agent(name="sync", model=ScriptedModel(["ok"]), storage=SqliteStorage(db))
    out = agent.run("q", session_id="sync-s", run_id="sync-1")
    assert agent.get_run("sync-1") == out
    assert [r.run_id for r in agent.get_session_runs("sync-s")] == ["sync-1"]


async def test_a_session_continues_with_earlier_runs_as_history(db: Path) -> None:
    model = ScriptedModel(
        turns=[Reply(chunks=["Hello ", "Ann."]), Reply(chunks=WORDS, pace=0.01), Reply(chunks=["Yes."])]
    )
    agent = Agent(name="chat", model=model, storage=SqliteStorage(db), instructions="Be kind.")
    await agent.arun("I am Ann.", session_id="conv")
    stream = agent.arun("Tell a story", stream=True, session_id="conv")
    async for event in stream:
        if event.event == RunEvent.run_content and event.content == "w2 ":
            agent.cancel_run(stream.run_id)
    third = await agent.arun("Do you remember me?", session_id="conv")
    sent = [(m.role, m.content, m.interrupted) for m in model.calls[2]]
    assert sent == [
        ("system", "Be kind.", False),
        ("user", "I am Ann.", False),
        ("assistant", "Hello Ann.", False),
        ("user", "Tell a story", False),
        ("assistant", "w0 w1 w2 ", True),
        ("user", "Do you remember me?", False),
    ]
    assert [m.from_history for m in third.messages] == [False, True, True, True, True, False, False]
    stored = await agent.aget_session_runs("conv")
    assert [r.status for r in stored] == [RunStatus.completed, RunStatus.cancelled, RunStatus.completed]
    assert agent.storage is not None
    await agent.storage.aclose()


async def test_keep_interrupted_false_leaves_partial_answers_out(db: Path) -> None:
    model = ScriptedModel(turns=[Reply(chunks=WORDS, pace=0.01), Reply(chunks=["ok"])])
    agent = Agent(model=model, storage=SqliteStorage(db), keep_interrupted=False)
    stream = agent.arun("one", stream=True, session_id="k")
    async for event in stream:
        if event.event == RunEvent.run_content:
            agent.cancel_run(stream.run_id)
    await agent.arun("two", session_id="k")
    assert [(m.role, m.content) for m in model.calls[1]] == [("user", "one"), ("user", "two")]


async def test_session_history_with_a_cancelled_tool_call_is_accepted_by_the_server(
    db: Path, loopback_server: LoopbackServer, openai_model: OpenAIChat
) -> None:
    async def lookup() -> str:
        await anyio.sleep(5)
        return "never"

    loopback_server.push(
        Reply(chunks=["Let me look. "], tool_calls=[ScriptedToolCall("lookup", "{}", id="call_x")]),
        Reply(chunks=["Sure, ", "stopped."]),
    )
    agent = Agent(model=openai_model, tools=[lookup], storage=SqliteStorage(db))
    stream = agent.arun("find it", stream=True, session_id="srv")
    async for event in stream:
        if event.event == RunEvent.tool_call_started:
            agent.cancel_run(stream.run_id, reason="stop")
    second = await agent.arun("ok?", session_id="srv")
    assert second.status is RunStatus.completed and second.content == "Sure, stopped."
    roles = [m["role"] for m in loopback_server.requests[-1].body["messages"]]
    assert roles == ["user", "assistant", "tool", "user"]


async def test_a_failed_final_write_still_delivers_the_terminal_event(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage = SqliteStorage(db)
    agent = Agent(name="a", model=ScriptedModel(WORDS, stall=5, stall_at=1), storage=storage)
    stream = agent.arun("go", stream=True)
    events = []
    async for event in stream:
        events.append(event)
        if event.event == RunEvent.run_content:
            with sqlite3.connect(db) as saboteur:  # another process breaks the store mid-run
                saboteur.execute("DROP TABLE tether_runs")
            agent.cancel_run(stream.run_id)
    assert events[-1].event == RunEvent.run_cancelled and events[-1].content == "w0 "
    assert (
        f"run {stream.run_id}: the final write" in caplog.text and "no such table: tether_runs" in caplog.text
    )
    await storage.aclose()


def test_a_corrupt_file_is_a_clear_error_at_once(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a database at all, just some text" * 10)
    with pytest.raises(StorageError, match="is not a SQLite database"):
        SqliteStorage(corrupt)
    with pytest.raises(StorageError, match="is a directory"):
        SqliteStorage(tmp_path)
    with pytest.raises(StorageError, match="does not exist"):
        SqliteStorage(tmp_path / "missing" / "runs.db")


@pytest.fixture
def immutable(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "frozen.db"
    sqlite3.connect(path).close()
    path.write_bytes(path.read_bytes())
    subprocess.run(["chattr", "+i", str(path)], check=True)
    yield path
    subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_read_only_file_is_a_clear_error_at_once(immutable: Path) -> None:
    with pytest.raises(StorageError, match="is read-only"):
        SqliteStorage(immutable)


async def test_a_store_failing_at_start_ends_the_run_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "later.db"
    storage = SqliteStorage(path)
    path.write_text("garbage appeared after construction")
    out = await Agent(model=ScriptedModel(), storage=storage).arun("go")
    assert out.status is RunStatus.error and out.error_type == "StorageError"
    assert "is not a SQLite database" in (out.error or "")


async def test_a_version_1_file_is_migrated_and_keeps_its_runs(tmp_path: Path) -> None:
    from tether.storage._base import SCHEMA_VERSION
    from tether.storage._sqlite import _MIGRATIONS

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        old.execute("CREATE TABLE tether_schema (version INTEGER NOT NULL)")
        old.execute("INSERT INTO tether_schema VALUES (1)")
        for statement in _MIGRATIONS[1]:
            old.execute(statement)
        old.execute(
            "INSERT INTO tether_runs (run_id, agent_id, status, content, messages, metrics, created_at, "
            "updated_at) VALUES ('old-run', 'a', 'COMPLETED', 'kept', '[]', '{}', 1700000000, 0)"
        )
    storage = SqliteStorage(path)
    run = await storage.get_run("old-run")
    assert run is not None and (run.content, run.user_id, run.status) == ("kept", None, RunStatus.completed)
    agent = Agent(name="a", model=ScriptedModel(["new"]), storage=storage)
    out = await agent.arun("hi", user_id="ann", run_id="new-run")
    assert (await agent.aget_run("new-run")) == out and out.user_id == "ann"
    with sqlite3.connect(path) as check:
        assert check.execute("SELECT version FROM tether_schema").fetchall() == [(SCHEMA_VERSION,)]
    await storage.aclose()

"""A run's events (``RunOutput.events``) stored with it, on every backend (the ``storage`` fixture):
the compact stored form, exact round trips, listings without them, unreadable ones, schema 2 → 3."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tether import Agent, RunOutput, RunStatus, StorageError
from tether._run._events import (
    RunCancelledEvent,
    RunContentEvent,
    RunOutputEvent,
    RunStartedEvent,
    ToolCallCompletedEvent,
    ToolCallStartedEvent,
)
from tether._run._record import EventRecord
from tether.storage import PostgresStorage, SqliteStorage, Storage
from tether.storage._base import SCHEMA_VERSION
from tether.testing import Reply, ScriptedModel, ScriptedToolCall

from .conftest import POSTGRES_DSN, drop_schema, postgres_schema
from .test_conformance import finished, output

pytestmark = pytest.mark.anyio

SHARED = {"agent_id": "agent-a", "agent_name": "Agent A", "session_id": "s-1", "created_at": 1_700_000_000}
RUNNING, CANCELLED = RunStatus.running, RunStatus.cancelled


def events_of(run_id: str, text: str = "✓", **changes: Any) -> list[RunOutputEvent]:
    """Every kind of event a cancelled run with one (failed) tool call emits, event_index 0..5."""
    common: dict[str, Any] = {"run_id": run_id, **SHARED, **changes}
    tool = {"tool_call_id": "call_1", "tool_name": "lookup"}
    return [
        RunStartedEvent(event_index=0, status=RUNNING, model="m", **common),
        RunContentEvent(event_index=1, status=RUNNING, content=f"Partial {text}", **common),
        ToolCallStartedEvent(
            event_index=2,
            status=RUNNING,
            tool_args={"q": text, "n": [1, 2.5, None], "d": {"k": True}},
            **tool,
            **common,
        ),
        ToolCallCompletedEvent(
            event_index=3, status=RUNNING, content=text, error=f"boom {text}", duration=0.25, **tool, **common
        ),
        RunContentEvent(event_index=4, status=RUNNING, content=" answer", **common),
        RunCancelledEvent(
            event_index=5,
            status=CANCELLED,
            content=f"Partial {text} answer",
            reason=text,
            source="user",
            **common,
        ),
    ]


def with_events(run_id: str, text: str = "✓", **changes: Any) -> RunOutput:
    return finished(run_id, events=events_of(run_id, text), **changes)


async def sql(store: Storage, query: str, *args: Any) -> list[tuple[Any, ...]]:
    """``query`` on the store's database, from another connection (``{runs}``: its runs table)."""
    if isinstance(store, SqliteStorage):
        with sqlite3.connect(store.path) as conn:
            return conn.execute(query.format(runs="tether_runs").replace("$1", "?"), args).fetchall()
    assert isinstance(store, PostgresStorage)
    conn = await asyncpg.connect(POSTGRES_DSN, timeout=5)
    try:
        rows = await conn.fetch(query.format(runs=f'"{store.schema}".tether_runs'), *args)
        return [tuple(row) for row in rows]
    finally:
        await conn.close()


# -- round trips -----------------------------------------------------------------------------------


async def test_events_round_trip_exactly_and_only_get_run_returns_them(storage: Storage) -> None:
    written = with_events("r1")
    assert written != finished("r1"), "RunOutput equality compares events too"
    await storage.finish_run(written)
    read = await storage.get_run("r1")
    assert read == written
    assert read is not None and read.events == events_of("r1")
    assert [type(e) for e in read.events] == [type(e) for e in events_of("r1")]
    assert await storage.list_runs() == [finished("r1")], "listings leave events out"
    assert await storage.list_runs(session_id="s-1", limit=1) == [finished("r1")]


async def test_no_events_stay_none_and_an_empty_list_stays_empty(storage: Storage) -> None:
    await storage.finish_run(finished("none"))
    await storage.finish_run(finished("empty", events=[]))
    assert await sql(storage, "SELECT run_id, events FROM {runs} ORDER BY run_id") == [
        ("empty", "[]"),
        ("none", None),
    ]
    none, empty = await storage.get_run("none"), await storage.get_run("empty")
    assert none is not None and none.events is None and none == finished("none")
    assert empty is not None and empty.events == [] and empty == finished("empty", events=[])


async def test_a_running_write_then_a_final_write_with_events(storage: Storage) -> None:
    await storage.start_run(output("r1"), owner="o")
    running = await storage.get_run("r1")
    assert running == output("r1") and running is not None and running.events is None
    await storage.finish_run(with_events("r1"))
    assert await storage.get_run("r1") == with_events("r1")
    await storage.finish_run(with_events("r1", text="again"))  # the final write is idempotent
    assert await storage.get_run("r1") == with_events("r1", text="again")


async def test_events_are_stored_as_compact_json_text_without_the_fields_of_the_row(
    storage: Storage,
) -> None:
    common: dict[str, Any] = {"run_id": "r1", **SHARED, "created_at": 5}
    events: list[RunOutputEvent] = [
        RunStartedEvent(event_index=0, status=RUNNING, model="m", **common),
        RunContentEvent(event_index=1, status=RUNNING, content="NUL \x00 ✓", **common),
        RunContentEvent(event_index=2, status=RUNNING, content="", **common),
        RunContentEvent(event_index=3, status=RUNNING, content="x", **{**common, "session_id": "other"}),
        RunContentEvent(event_index=4, status=RUNNING, content="y", **common),
        RunContentEvent(event_index=5, status=RUNNING, content="z", **{**common, "created_at": 6}),
        RunContentEvent(event_index=7, status=RUNNING, content="gap", **{**common, "created_at": 6}),
    ]
    await storage.finish_run(finished("r1", events=events))
    assert await sql(storage, "SELECT events FROM {runs}") == [
        (
            '[{"event":"RunStarted","event_index":0,"created_at":5,"status":"RUNNING","content":null,'
            '"model":"m"},[1,5,"NUL \\u0000 ✓",""],{"event":"RunContent","event_index":3,'
            '"session_id":"other","created_at":5,"status":"RUNNING","content":"x"},[4,5,"y"],[5,6,"z"],[7,6,"gap"]]',
        )
    ]
    read = await storage.get_run("r1")
    assert read is not None and read.events == events, "a field that differs from the row's is kept"


TRICKY = "NUL \x00, escape look-alikes \x01\x02 \x01\x00\x01 \\u0000, separators \u2028\u2029, emoji 😀👩‍👩‍👧"


@pytest.mark.parametrize("nul_in_row", [False, True], ids=["events-only", "row-escaped-too"])
async def test_nul_line_separators_and_emoji_in_events_round_trip(storage: Storage, nul_in_row: bool) -> None:
    row_text = (
        TRICKY if nul_in_row else "plain"
    )  # a NUL in the row's free text escapes that row in PostgreSQL
    name = f"A {row_text}"  # the events share the row's agent_name: restored from the row, unescaped
    events = events_of("r1", TRICKY, agent_name=name)
    written = finished("r1", content=row_text, error=row_text, agent_name=name, events=events)
    await storage.start_run(output("r1"), owner="o")
    await storage.finish_run(written)
    assert await storage.get_run("r1") == written
    [(stored,)] = await sql(storage, "SELECT events FROM {runs}")
    assert "\x00" not in stored and "\\u0000" in stored and '"agent_name"' not in stored
    assert await storage.list_runs() == [written.model_copy(update={"events": None})]


LONE = "half an emoji \ud83d"


@pytest.mark.parametrize(
    "event",
    [
        RunContentEvent(run_id="r1", agent_id="agent-a", status=RUNNING, content=LONE),
        ToolCallStartedEvent(
            run_id="r1",
            agent_id="agent-a",
            status=RUNNING,
            tool_call_id="c",
            tool_name="t",
            tool_args={"q": LONE},
        ),
        RunCancelledEvent(run_id="r1", agent_id="agent-a", status=CANCELLED, reason=LONE),
    ],
    ids=["content", "tool_args", "reason"],
)
async def test_a_lone_surrogate_in_an_event_is_a_storage_error_and_nothing_is_written(
    storage: Storage, event: RunOutputEvent
) -> None:
    await storage.start_run(output("r1"), owner="o")
    with pytest.raises(
        StorageError,
        match=r"^run 'r1' cannot be stored: its events holds a lone surrogate \('\\ud83d' at index",
    ):
        await storage.finish_run(finished("r1", events=[event]))
    assert await storage.get_run("r1") == output("r1")


async def test_a_run_stores_what_its_consumer_received_contents_as_arrays(storage: Storage) -> None:
    """A run of this process: ``output.events`` (an EventRecord, no object per chunk) equals what the
    consumer received, is stored with its RunContent events as arrays, and reads back equal."""

    def lookup(city: str) -> str:
        """Look a city up."""
        return f"sunny in {city}"

    model = ScriptedModel(
        turns=[
            Reply(chunks=["Let ", "me ", "look."], tool_calls=[ScriptedToolCall("lookup", '{"city": "X"}')]),
            Reply(chunks=["It ", "is ", TRICKY]),
        ]
    )
    agent = Agent(name="Rec", model=model, tools=[lookup], storage=storage)
    stream = agent.arun("weather?", stream=True, run_id="rec-1", session_id="s-rec")
    received = [event async for event in stream]
    assert stream.output is not None and isinstance(stream.output.events, EventRecord)
    assert [type(e) for e in stream.output.events] == [type(e) for e in received]
    assert stream.output.events == received and received == stream.output.events
    assert len(stream.output.events) == 10 and stream.output.events[1:3] == received[1:3]
    [(text,)] = await sql(storage, "SELECT events FROM {runs}")
    stored = json.loads(text)
    runs = [item for item in stored if isinstance(item, list)]
    assert [item["event"] for item in stored if isinstance(item, dict)] == [
        "RunStarted", "ToolCallStarted", "ToolCallCompleted", "RunCompleted"
    ]  # fmt: skip
    assert [text for run in runs for text in run[2:]] == ["Let ", "me ", "look.", "It ", "is ", TRICKY]
    for first, second, *texts in runs:  # consecutive texts of one second
        assert [(e.event_index, e.created_at) for e in received if e.content in texts] == [
            (first + offset, second) for offset in range(len(texts))
        ]
    read = await storage.get_run("rec-1")
    assert read is not None and read.events == received


async def test_a_buffer_smaller_than_the_run_still_stores_and_replays_every_event(storage: Storage) -> None:
    """``event_buffer`` bounds what a live run serves one by one, not what it stores: with a buffer of
    one event, ``output.events``, the stored events and a replay after the end are still every event
    its consumer received (RunStarted and the tool calls included)."""

    def lookup(city: str) -> str:
        """Look a city up."""
        return f"sunny in {city}"

    model = ScriptedModel(
        turns=[
            Reply(chunks=["Let ", "me ", "look."], tool_calls=[ScriptedToolCall("lookup", '{"city": "X"}')]),
            Reply(chunks=["It ", "is ", "sunny."]),
        ]
    )
    agent = Agent(name="Tiny", model=model, tools=[lookup], storage=storage, event_buffer=1)
    stream = agent.arun("weather?", stream=True, run_id="tiny-1")
    received = [event async for event in stream]
    assert [e.event_index for e in received] == list(range(10))
    assert stream.output is not None and stream.output.events == received
    read = await storage.get_run("tiny-1")
    assert read is not None and read.events == received
    assert [event async for event in agent.aattach("tiny-1")] == received
    assert [event async for event in agent.aattach("tiny-1", after=3)] == received[4:]


# -- unreadable stored events: the run stays readable ----------------------------------------------

NEITHER = "is neither an event object nor [event_index, created_at, content, ...]: "
GARBAGE = [
    ("not json", "Expecting value: line 1 column 1 (char 0)"),
    ('{"event": "RunStarted"}', """not a JSON list: '{"event": "RunStarted"}'"""),
    ("[1, 2]", f"item 0 {NEITHER}1"),
    (
        '[{"event": "RunContent"}]',
        "event 0: 1 validation error(s), the first at RunContent.status: Field required",
    ),
    (
        '[[1, 5, "a"], {"event": "RunContent", "status": "RUNNING", "bogus": 1}]',
        "event 1: 1 validation error(s), the first at RunContent.bogus: Extra inputs are not permitted",
    ),
    ("[[1, 5]]", f"item 0 {NEITHER}[1, 5]"),
    ('[[1, 5, "a", 2]]', f"item 0 {NEITHER}[1, 5, 'a', 2]"),
    ('[[true, 5, "a"]]', f"item 0 {NEITHER}[True, 5, 'a']"),
    ('[[1, 5.5, "a"]]', f"item 0 {NEITHER}[1, 5.5, 'a']"),
    ("[[1, 5, null]]", f"item 0 {NEITHER}[1, 5, None]"),
    (
        '[{"event": "RunContent", "event_index": true, "created_at": 5, "status": "RUNNING"}]',
        "event 0: 1 validation error(s), the first at RunContent.event_index: "
        "Input should be a valid integer",
    ),
    (
        '[{"event": "RunContent", "event_index": 1, "created_at": "5", "status": "RUNNING"}]',
        "event 0: 1 validation error(s), the first at RunContent.created_at: Input should be a valid integer",
    ),
    (
        '[{"event": "RunCompleted", "event_index": 1, "status": "COMPLETED", "content": "x"}]',
        "event 0: created_at is missing",
    ),
]


@pytest.mark.parametrize(
    ("text", "reason"),
    GARBAGE,
    ids=[
        *["bad-json", "object", "numbers", "missing", "extra", "short", "long", "bool", "float", "null"],
        *["object-bool", "object-string", "object-default"],  # read as they are, not coerced nor defaulted
    ],
)
async def test_unreadable_events_are_none_with_a_warning_naming_the_run(
    storage: Storage, caplog: pytest.LogCaptureFixture, text: str, reason: str
) -> None:
    await storage.finish_run(with_events("r1"))
    await sql(storage, "UPDATE {runs} SET events = $1", text)
    with caplog.at_level(logging.WARNING, logger="tether.storage"):
        assert await storage.get_run("r1") == finished("r1")
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            "tether.storage",
            logging.WARNING,
            f"run 'r1': its stored events are unreadable, read as None: {reason}",
        )
    ]
    caplog.clear()
    assert await storage.list_runs() == [finished("r1")]
    assert caplog.records == [], "listings do not read the events"


# -- a store created at schema version 2 ------------------------------------------------------------

SQLITE_V2 = [
    """CREATE TABLE tether_runs (
        run_id TEXT PRIMARY KEY, agent_id TEXT NOT NULL, agent_name TEXT, session_id TEXT,
        parent_run_id TEXT, model TEXT, status TEXT NOT NULL, content TEXT NOT NULL DEFAULT '',
        messages TEXT NOT NULL, cancel_reason TEXT, cancel_source TEXT, error TEXT, error_type TEXT,
        metrics TEXT NOT NULL, created_at INTEGER NOT NULL, owner TEXT, updated_at REAL NOT NULL,
        user_id TEXT)""",
    "CREATE TABLE tether_owners (owner TEXT PRIMARY KEY, heartbeat_at REAL NOT NULL)",
    "CREATE TABLE tether_schema (version INTEGER NOT NULL)",
    "INSERT INTO tether_schema VALUES (2)",
]
POSTGRES_V2 = [
    """CREATE TABLE {s}.tether_runs (
        run_id TEXT PRIMARY KEY, seq BIGSERIAL NOT NULL, agent_id TEXT NOT NULL,
        agent_name TEXT, session_id TEXT, parent_run_id TEXT, model TEXT, status TEXT NOT NULL,
        content TEXT NOT NULL DEFAULT '', messages JSONB NOT NULL, cancel_reason TEXT,
        cancel_source TEXT, error TEXT, error_type TEXT, metrics JSONB NOT NULL,
        created_at BIGINT NOT NULL, owner TEXT, updated_at DOUBLE PRECISION NOT NULL, user_id TEXT)""",
    "CREATE TABLE {s}.tether_owners (owner TEXT PRIMARY KEY, heartbeat_at DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE {s}.tether_schema (version INTEGER NOT NULL)",
    "INSERT INTO {s}.tether_schema VALUES (2)",
]
OLD_ROW = (
    "INSERT INTO {s}tether_runs (run_id, agent_id, status, content, messages, metrics, created_at, "
    """updated_at, user_id) VALUES ('old', 'agent-a', 'COMPLETED', 'kept', '[]', '{{"total_tokens": 3}}', """
    "1700000000, 0, 'ann')"
)
OLD = RunOutput(
    run_id="old",
    agent_id="agent-a",
    user_id="ann",
    status=RunStatus.completed,
    content="kept",
    metrics={"total_tokens": 3},
    created_at=1_700_000_000,
)


async def check_migrated(store: Storage) -> None:
    """The old row is kept (no events), and events are stored afterwards."""
    assert await store.get_run("old") == OLD
    await store.finish_run(with_events("new"))
    assert await store.get_run("new") == with_events("new")
    await store.finish_run(OLD.model_copy(update={"events": events_of("old")}))
    assert await store.get_run("old") == OLD.model_copy(update={"events": events_of("old")})
    assert await store.list_runs() == [OLD, finished("new")]


async def test_a_version_2_sqlite_file_is_migrated_and_keeps_its_runs(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    with sqlite3.connect(path) as old:
        for statement in [*SQLITE_V2, OLD_ROW.format(s="")]:
            old.execute(statement)
    store = SqliteStorage(path)
    try:
        await check_migrated(store)
    finally:
        await store.aclose()
    assert await sql(store, "SELECT version FROM tether_schema") == [(SCHEMA_VERSION,)] == [(3,)]


async def test_a_version_2_postgres_schema_is_migrated_and_keeps_its_runs() -> None:
    schema = await postgres_schema()
    store = PostgresStorage(POSTGRES_DSN, schema=schema)
    try:
        conn = await asyncpg.connect(POSTGRES_DSN, timeout=5)
        try:
            for statement in POSTGRES_V2:
                await conn.execute(statement.format(s=f'"{schema}"'))
            await conn.execute(OLD_ROW.format(s=f'"{schema}".'))
        finally:
            await conn.close()
        await check_migrated(store)
        version = await sql(store, f'SELECT version FROM "{schema}".tether_schema')
        assert version == [(SCHEMA_VERSION,)] == [(3,)]
    finally:
        await store.aclose()
        await drop_schema(schema)

"""PostgresStorage under real faults: connections killed under an operation (``pg_terminate_backend``),
every pooled connection killed (as by a server restart), the server going away and coming back,
text PostgreSQL cannot hold."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import asyncpg
import pytest

from tether import Message, RunOutput, RunStatus, StorageError
from tether.storage import PostgresStorage

from .conftest import POSTGRES_DSN, drop_schema, postgres_schema, writes_locked

pytestmark = pytest.mark.anyio


def run(run_id: str, status: RunStatus = RunStatus.completed, **changes: Any) -> RunOutput:
    return RunOutput(run_id=run_id, agent_id="agent", status=status, created_at=1_700_000_000, **changes)


@pytest.fixture
async def store() -> AsyncIterator[PostgresStorage]:
    schema = await postgres_schema()
    storage = PostgresStorage(POSTGRES_DSN, schema=schema)
    await storage.open()
    try:
        yield storage
    finally:
        await storage.aclose()
        await drop_schema(schema)


async def backends(store: PostgresStorage, *, waiting: bool) -> list[int]:
    """Server pids of the store's connections (its application_name names its schema)."""
    conn = await asyncpg.connect(POSTGRES_DSN, timeout=5)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 "
            "AND (NOT $2 OR wait_event_type = 'Lock')",
            f"tether {store.schema}",
            waiting,
        )
    finally:
        await conn.close()
    return [row["pid"] for row in rows]


async def kill(pids: list[int]) -> None:
    conn = await asyncpg.connect(POSTGRES_DSN, timeout=5)
    try:
        await conn.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", pids)
    finally:
        await conn.close()


async def waiting_write(store: PostgresStorage) -> list[int]:
    """Once one of the store's statements waits for a lock: the server pids of those that wait."""
    with anyio.fail_after(5):
        while not (pids := await backends(store, waiting=True)):  # noqa: ASYNC110 (a server state)
            await anyio.sleep(0.02)
    return pids


async def kill_the_waiting_write(store: PostgresStorage) -> None:
    await kill(await waiting_write(store))


async def test_a_connection_killed_under_a_write_is_replaced_and_the_write_lands(
    store: PostgresStorage, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="tether.storage"):
        async with anyio.create_task_group() as group, writes_locked(store):
            group.start_soon(store.finish_run, run("r1"))
            await kill_the_waiting_write(store)
    assert await store.get_run("r1") == run("r1")
    [message] = [r.getMessage() for r in caplog.records]
    assert message.startswith(f"{store!r}: connection lost (connection was closed in the middle of operation")
    assert message.endswith("trying once more on a new one")


async def test_a_connection_killed_twice_is_a_clear_error_and_the_store_works_after(
    store: PostgresStorage,
) -> None:
    async with writes_locked(store), anyio.create_task_group() as group:

        async def write() -> None:
            with pytest.raises(StorageError) as failure:
                await store.finish_run(run("r1"))
            assert str(failure.value) == (
                "could not write run r1 to PostgreSQL at 127.0.0.1:5432/test: connection was closed "
                "in the middle of operation: terminating connection due to administrator command"
            )

        group.start_soon(write)
        await kill_the_waiting_write(store)
        await kill_the_waiting_write(store)  # the second attempt, on a new connection
    assert await store.get_run("r1") is None
    await store.finish_run(run("r1"))
    assert await store.get_run("r1") == run("r1")


async def test_every_pooled_connection_killed_as_by_a_restart_costs_no_operation(
    store: PostgresStorage,
) -> None:
    async with anyio.create_task_group() as group:  # fill the pool with several idle connections
        for index in range(5):
            group.start_soon(store.finish_run, run(f"r{index}"))
    pids = await backends(store, waiting=False)
    assert pids
    await kill(pids)
    for index in range(5, 10):  # each would otherwise meet a dead connection
        await store.finish_run(run(f"r{index}"))
    assert sorted(r.run_id for r in await store.list_runs()) == [f"r{index}" for index in range(10)]


@pytest.mark.parametrize(
    ("column", "changes"),
    [
        ("content", {"content": "a\x00b"}),
        ("error", {"error": "\x00"}),
        ("messages", {"messages": [Message(role="user", content="nul \x00 inside")]}),
    ],
)
async def test_a_nul_character_is_a_storage_error_naming_the_run_and_nothing_is_written(
    store: PostgresStorage, column: str, changes: dict[str, Any]
) -> None:
    with pytest.raises(StorageError) as failure:
        await store.finish_run(run("r1", **changes))
    assert str(failure.value) == (
        f"run 'r1' cannot be stored in PostgreSQL: its {column} holds a NUL character (U+0000), "
        "which PostgreSQL text and jsonb cannot hold"
    )
    assert await store.get_run("r1") is None
    literal = run(
        "r1", content="\\u0000 is six characters", messages=[Message(role="user", content="\\u0000")]
    )
    await store.finish_run(literal)  # a backslash-u0000 typed as text is not a NUL
    assert await store.get_run("r1") == literal


async def test_an_operation_in_flight_does_not_hold_aclose_past_its_bound(store: PostgresStorage) -> None:
    async with anyio.create_task_group() as group, writes_locked(store):

        async def write() -> None:
            with pytest.raises(StorageError, match="could not write run r1 to PostgreSQL"):
                await store.finish_run(run("r1"))

        group.start_soon(write)
        await waiting_write(store)
        started = time.monotonic()
        await store.aclose()
        assert time.monotonic() - started < 7  # CLOSE_TIMEOUT (5 s), then the pool is terminated
    await store.finish_run(run("r2"))
    assert [r.run_id for r in await store.list_runs()] == ["r2"]

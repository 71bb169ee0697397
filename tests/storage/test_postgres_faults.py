"""PostgresStorage under real faults: connections killed under an operation (``pg_terminate_backend``),
every pooled connection killed (as by a server restart), the server going away and coming back,
NUL characters (which PostgreSQL text cannot hold), aclose with an operation in flight."""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

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


async def sql(query: str) -> list[Any]:
    conn = await asyncpg.connect(POSTGRES_DSN, timeout=5)
    try:
        return list(await conn.fetch(query))
    finally:
        await conn.close()


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
            # asyncpg's own words after ours differ between its versions (0.29 stops at "operation")
            assert str(failure.value).startswith(
                "could not write run r1 to PostgreSQL at 127.0.0.1:5432/test: connection was closed "
                "in the middle of operation"
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


@pytest.mark.parametrize("column", ["run_id", "agent_id", "session_id", "user_id", "parent_run_id"])
async def test_a_nul_in_an_id_is_a_storage_error_naming_the_run_and_nothing_is_written(
    store: PostgresStorage, column: str
) -> None:
    with pytest.raises(StorageError) as failure:
        await store.finish_run(run("r1").model_copy(update={column: "a\x00b"}))
    run_id = "a\x00b" if column == "run_id" else "r1"
    assert str(failure.value) == (
        f"run {run_id!r} cannot be stored in PostgreSQL: its {column} holds a NUL character (U+0000), "
        "which PostgreSQL keeps only in free text (content, messages, errors)"
    )
    assert await store.list_runs() == []


async def test_free_text_with_nul_is_stored_escaped_and_read_back_as_written(store: PostgresStorage) -> None:
    text = "\x00\x01\x02 \x01\x00 \x01\x01\x02 \\u0000"
    written = run("r1", content=text, error=text, messages=[Message(role="user", content=text, name=text)])
    await store.finish_run(written)
    [row] = await sql(f'SELECT content, messages FROM "{store.schema}".tether_runs')
    assert row["content"] == "\x01\x02\x01\x01\x02 \x01\x01\x01\x02 \x01\x01\x01\x01\x02 \\u0000"
    assert await store.get_run("r1") == written
    plain = run("r2", content="\x01\x02 stays as it is")  # no NUL: stored as it is
    await store.finish_run(plain)
    assert await store.list_runs() == [written, plain]


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


@asynccontextmanager
async def tcp_proxy(port: int) -> AsyncIterator[None]:
    """A TCP proxy from 127.0.0.1:``port`` to the test server: the server "goes away" when it ends
    (every connection through it is cut and the port refuses)."""
    target = urlsplit(POSTGRES_DSN)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port)

    async def pipe(source: anyio.abc.ByteStream, sink: anyio.abc.ByteStream) -> None:
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            async for chunk in source:
                await sink.send(chunk)
        await sink.aclose()

    async def serve(client: anyio.abc.SocketStream) -> None:
        server = await anyio.connect_tcp(target.hostname or "127.0.0.1", target.port or 5432)
        async with client, server, anyio.create_task_group() as group:
            group.start_soon(pipe, client, server)
            group.start_soon(pipe, server, client)

    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, serve)
        try:
            yield
        finally:
            group.cancel_scope.cancel()


async def test_a_server_gone_away_is_a_clear_error_within_the_connect_timeout_and_used_when_back() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    schema = await postgres_schema()
    target = urlsplit(POSTGRES_DSN)
    dsn = target._replace(netloc=f"{target.username or 'postgres'}@127.0.0.1:{port}").geturl()
    store = PostgresStorage(dsn, schema=schema, connect_timeout=1)
    try:
        async with tcp_proxy(port):
            await store.finish_run(run("r1"))
        started = time.monotonic()
        with pytest.raises(
            StorageError, match=rf"^could not read run r1 from PostgreSQL at 127.0.0.1:{port}/"
        ) as e:
            await store.get_run("r1")
        assert time.monotonic() - started < 3  # two connection attempts, each refused at once
        assert isinstance(e.value.__cause__, OSError)
        async with tcp_proxy(port):
            assert await store.get_run("r1") == run("r1")
            await store.aclose()
    finally:
        await store.aclose()
        await drop_schema(schema)

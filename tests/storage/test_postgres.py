"""PostgreSQL-specific behaviour of PostgresStorage, against the real server (the shared suite is in
test_conformance.py): connection failures, schema versions, pools per event loop, several processes."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import asyncpg
import pytest

from tether import RunOutput, RunStatus
from tether.exceptions import ConfigurationError, StorageError
from tether.storage import PostgresStorage, Storage, _postgres
from tether.storage._base import CRASHED_ERROR, CRASHED_TYPE, SCHEMA_VERSION

from .conftest import POSTGRES_DSN, drop_schema, postgres_schema


def run(run_id: str, status: RunStatus = RunStatus.running, **changes: Any) -> RunOutput:
    return RunOutput(run_id=run_id, agent_id="agent", status=status, created_at=1_700_000_000, **changes)


async def sql(query: str, *args: Any) -> list[Any]:
    conn = await asyncpg.connect(POSTGRES_DSN, timeout=5)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    name = await postgres_schema()
    yield name
    await drop_schema(name)


@pytest.fixture
async def store(schema: str) -> AsyncIterator[PostgresStorage]:
    storage = PostgresStorage(POSTGRES_DSN, schema=schema)
    yield storage
    await storage.aclose()


WORKER = """
import sys, warnings
from tether import Agent
from tether.storage import PostgresStorage
from tether.testing import ScriptedModel

warnings.simplefilter("error")
dsn, schema, mode = sys.argv[1:]
storage = PostgresStorage(dsn, schema=schema, heartbeat_interval=0.1, stale_after=1.0)
stall = 60 if mode == "hang" else 0
model = ScriptedModel(["partial ", "done"], stall=stall, stall_at=1)
agent = Agent(name="worker", model=model, storage=storage)
print(agent.run("a job", run_id="w-1").status)  # the blocking call: the sync bridge's own loop
"""


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- configuration and connection failures ---------------------------------------------------------


@pytest.mark.parametrize("name", ["", "1st", "has-dash", 'x"; DROP SCHEMA public; --', "a" * 64, "ünï"])
def test_a_schema_that_is_not_a_plain_identifier_is_a_configuration_error(name: str) -> None:
    with pytest.raises(ConfigurationError, match="schema"):
        PostgresStorage(POSTGRES_DSN, schema=name)


def test_repr_and_the_protocol() -> None:
    store = PostgresStorage("postgresql://app:s3cret@db.example:6543/runs", schema="tether")
    assert isinstance(store, Storage)
    assert repr(store) == "PostgresStorage('db.example:6543/runs', schema='tether')"


@pytest.mark.anyio
async def test_an_unreachable_server_fails_fast_naming_host_and_port() -> None:
    port = closed_port()
    store = PostgresStorage(f"postgresql://postgres:s3cret@127.0.0.1:{port}/test", connect_timeout=2)
    started = time.monotonic()
    with pytest.raises(StorageError, match=f"127.0.0.1:{port}/test") as failure:
        await store.open()
    assert time.monotonic() - started < 3
    assert "s3cret" not in str(failure.value)
    assert isinstance(failure.value.__cause__, OSError)
    with pytest.raises(StorageError, match=f"127.0.0.1:{port}"):
        await store.get_run("any")  # every method opens lazily, and fails the same way
    await store.aclose()


@pytest.mark.anyio
async def test_a_server_that_never_answers_times_out_instead_of_hanging() -> None:
    with socket.socket() as silent:  # listens, so connections are accepted by the kernel, never served
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        store = PostgresStorage(f"postgresql://postgres@127.0.0.1:{port}/test", connect_timeout=0.5)
        started = time.monotonic()
        with pytest.raises(StorageError, match=f"127.0.0.1:{port}/test"):
            await store.open()
        assert time.monotonic() - started < 1.5
        await store.aclose()


@pytest.mark.anyio
async def test_a_missing_database_is_a_storage_error() -> None:
    store = PostgresStorage(POSTGRES_DSN.rsplit("/", 1)[0] + "/tether_no_such_db")
    with pytest.raises(StorageError, match="tether_no_such_db") as failure:
        await store.open()
    assert isinstance(failure.value.__cause__, asyncpg.InvalidCatalogNameError)
    await store.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("dsn", ["not a dsn", "postgresql://postgres:s3cret@127.0.0.1:99999/test"])
async def test_a_malformed_dsn_is_a_storage_error(dsn: str) -> None:
    with pytest.raises(StorageError, match="could not connect") as failure:
        await PostgresStorage(dsn).open()
    assert "s3cret" not in str(failure.value)


@pytest.mark.anyio
async def test_aclose_without_open_and_twice_is_fine() -> None:
    store = PostgresStorage(POSTGRES_DSN, schema="never_opened")
    await store.aclose()
    await store.aclose()


# -- schema versions and migration -----------------------------------------------------------------


@pytest.mark.anyio
async def test_open_writes_the_version_row_and_a_second_open_changes_nothing(
    schema: str, store: PostgresStorage
) -> None:
    await store.open()
    tables = await sql("SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY 1", schema)
    assert [t["tablename"] for t in tables] == ["tether_owners", "tether_runs", "tether_schema"]
    await store.open()
    other = PostgresStorage(POSTGRES_DSN, schema=schema)
    _postgres._migrated.discard((POSTGRES_DSN, schema))  # as if another process opened it
    await other.open()
    await other.aclose()
    assert [r["version"] for r in await sql(f'SELECT version FROM "{schema}".tether_schema')] == [
        SCHEMA_VERSION
    ]


@pytest.mark.anyio
async def test_a_newer_schema_version_is_refused_naming_both_versions(schema: str) -> None:
    await sql(f'CREATE TABLE "{schema}".tether_schema (version INTEGER NOT NULL)')
    await sql(f'INSERT INTO "{schema}".tether_schema VALUES (999)')
    store = PostgresStorage(POSTGRES_DSN, schema=schema)
    with pytest.raises(StorageError, match=rf"version 999 is newer than this tether \({SCHEMA_VERSION}\)"):
        await store.open()
    with pytest.raises(StorageError, match="999"):
        await store.list_runs()  # still refused, and no pool was left behind
    await store.aclose()


@pytest.mark.anyio
async def test_concurrent_first_opens_migrate_once() -> None:
    name = f"tether_test_new_{time.monotonic_ns()}"  # does not exist yet: open creates it
    stores = [PostgresStorage(POSTGRES_DSN, schema=name) for _ in range(5)]
    try:
        async with anyio.create_task_group() as group:
            for store in stores:
                group.start_soon(store.open)
        assert [r["version"] for r in await sql(f'SELECT version FROM "{name}".tether_schema')] == [
            SCHEMA_VERSION
        ]
    finally:
        for store in stores:
            await store.aclose()
        await drop_schema(name)


# -- behaviour specific to this backend ------------------------------------------------------------


@pytest.mark.anyio
async def test_json_columns_are_stored_as_jsonb_objects(schema: str, store: PostgresStorage) -> None:
    await store.start_run(run("r1"), owner="o")
    [row] = await sql(
        f'SELECT jsonb_typeof(messages) AS m, jsonb_typeof(metrics) AS x FROM "{schema}".tether_runs'
    )
    assert (row["m"], row["x"]) == ("array", "object")  # not a JSON string encoded twice


@pytest.mark.anyio
async def test_heartbeats_use_the_database_clock(schema: str, store: PostgresStorage) -> None:
    await store.heartbeat("o")
    [row] = await sql(
        f"SELECT extract(epoch from clock_timestamp())::double precision - heartbeat_at AS age "
        f'FROM "{schema}".tether_owners'
    )
    assert 0 <= row["age"] < 5


@pytest.mark.anyio
async def test_driver_errors_become_storage_errors_saying_what_failed(
    schema: str, store: PostgresStorage
) -> None:
    await store.open()
    await sql(f'DROP TABLE "{schema}".tether_runs')
    with pytest.raises(
        StorageError, match="could not write run r9 to PostgreSQL at 127.0.0.1:5432"
    ) as failure:
        await store.finish_run(run("r9", RunStatus.completed))
    assert isinstance(failure.value.__cause__, asyncpg.UndefinedTableError)


@pytest.mark.anyio
async def test_negative_limit_is_a_configuration_error(store: PostgresStorage) -> None:
    with pytest.raises(ConfigurationError):
        await store.list_runs(limit=-1)


@pytest.mark.anyio
async def test_fifty_concurrent_runs_from_a_fresh_store_all_land(store: PostgresStorage) -> None:
    async def one(index: int) -> None:  # the first calls race to open the pool
        await store.start_run(run(f"c-{index}"), owner="o")
        await store.finish_run(run(f"c-{index}", RunStatus.completed, content=str(index)))

    async with anyio.create_task_group() as group:
        for index in range(50):
            group.start_soon(one, index)
    runs = await store.list_runs(status=RunStatus.completed)
    assert sorted(int(r.content) for r in runs) == list(range(50))


# -- several event loops, several processes --------------------------------------------------------


def test_one_store_serves_separate_asyncio_runs() -> None:
    name = asyncio.run(postgres_schema())
    store = PostgresStorage(POSTGRES_DSN, schema=name)
    try:
        asyncio.run(store.start_run(run("first"), owner="o"))  # no aclose: the loop's shutdown closes it

        async def second_loop() -> RunOutput | None:
            await store.finish_run(run("first", RunStatus.completed))
            try:
                return await store.get_run("first")
            finally:
                await store.aclose()

        finished = asyncio.run(second_loop())
        assert finished is not None and finished.status is RunStatus.completed
    finally:
        asyncio.run(drop_schema(name))


@pytest.mark.anyio
async def test_two_loops_at_once_each_get_their_own_pool(store: PostgresStorage) -> None:
    await store.start_run(run("mine"), owner="o")
    results: list[RunOutput | None] = []

    def bridge() -> None:  # like the sync bridge: another thread, another loop, the same store
        async def use() -> None:
            await store.start_run(run("bridged"), owner="o")
            results.append(await store.get_run("mine"))

        asyncio.run(use())

    thread = threading.Thread(target=bridge)
    thread.start()
    await anyio.to_thread.run_sync(thread.join)
    assert results and results[0] is not None and results[0].run_id == "mine"
    assert {r.run_id for r in await store.list_runs()} == {"mine", "bridged"}


@pytest.mark.anyio
async def test_another_process_sees_a_run_and_reaps_it_once_its_owner_stops_beating(schema: str) -> None:
    alive = PostgresStorage(POSTGRES_DSN, schema=schema)
    watcher = PostgresStorage(POSTGRES_DSN, schema=schema, stale_after=0.6)
    try:
        await alive.start_run(run("r1"), owner="proc-a")
        seen = await watcher.get_run("r1")
        assert seen is not None and seen.status is RunStatus.running
        await anyio.sleep(0.4)
        await alive.heartbeat("proc-a")  # still beating: nothing to reap
        await anyio.sleep(0.4)
        assert await watcher.reap(stale_after=0.6) == []
        seen = await watcher.get_run("r1")
        assert seen is not None and seen.status is RunStatus.running
        await anyio.sleep(0.8)  # proc-a has stopped beating
        seen = await watcher.get_run("r1")  # reads reap first
        assert seen is not None
        assert (seen.status, seen.error, seen.error_type) == (RunStatus.error, CRASHED_ERROR, CRASHED_TYPE)
        assert await alive.get_run("r1") == seen
        assert await watcher.reap(stale_after=0.0) == []
    finally:
        await alive.aclose()
        await watcher.aclose()


@pytest.mark.anyio
async def test_a_run_whose_owner_has_no_heartbeat_row_is_stale(schema: str, store: PostgresStorage) -> None:
    await store.start_run(run("r1"), owner="ghost")
    await store.start_run(run("r2"), owner="kept")
    await sql(f"DELETE FROM \"{schema}\".tether_owners WHERE owner = 'ghost'")
    assert await store.reap(stale_after=3600) == ["r1"]
    [row] = await sql(f"SELECT owner FROM \"{schema}\".tether_runs WHERE run_id = 'r1'")
    assert row["owner"] is None


def test_a_blocking_run_in_a_worker_process_is_stored_and_exits_cleanly() -> None:
    name = asyncio.run(postgres_schema())
    try:
        done = subprocess.run(
            [sys.executable, "-W", "error", "-c", WORKER, POSTGRES_DSN, name, "finish"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "COMPLETED", "")
        [row] = asyncio.run(sql(f'SELECT status, owner, content FROM "{name}".tether_runs'))
        assert tuple(row) == ("COMPLETED", None, "partial done")
    finally:
        asyncio.run(drop_schema(name))

"""Storage fixtures: a fresh SQLite file, and a fresh schema on the machine's PostgreSQL per test.

PostgreSQL comes from ``TETHER_TEST_POSTGRES_DSN`` (default: the local server, database ``test``).
Unreachable, its tests fail in CI (``CI=true``) and are skipped with the reason elsewhere.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from tether.storage import SqliteStorage, Storage

POSTGRES_DSN = os.environ.get("TETHER_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


async def postgres_schema() -> str:
    """Create a fresh schema for one test and return its name (fails or skips if unreachable)."""
    import asyncpg

    try:
        conn = await asyncpg.connect(POSTGRES_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL at {POSTGRES_DSN} is unreachable in CI: {exc}")
        pytest.skip(f"PostgreSQL at {POSTGRES_DSN} is unreachable: {exc}")
    name = f"tether_test_{uuid.uuid4().hex[:12]}"
    try:
        await conn.execute(f'CREATE SCHEMA "{name}"')
    finally:
        await conn.close()
    return name


async def drop_schema(name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_DSN, timeout=5)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    """Each backend, opened on an empty store, closed afterwards."""
    if request.param == "sqlite":
        store: Storage = SqliteStorage(tmp_path / "runs.db")
        await store.open()
        yield store
        await store.aclose()
        return
    from tether.storage import PostgresStorage

    schema = await postgres_schema()
    store = PostgresStorage(POSTGRES_DSN, schema=schema)
    await store.open()
    try:
        yield store
    finally:
        await store.aclose()
        await drop_schema(schema)


SQLITE_LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")  # holds the write lock until stdin closes
print("locked", flush=True)
sys.stdin.read()
conn.execute("ROLLBACK")
conn.close()
"""


@asynccontextmanager
async def writes_locked(store: Storage) -> AsyncIterator[None]:
    """Hold the store's write lock from another connection: SQLite's from another process
    (``BEGIN IMMEDIATE``), PostgreSQL's tables in ACCESS EXCLUSIVE mode (reads wait too)."""
    if isinstance(store, SqliteStorage):
        command = [sys.executable, "-c", SQLITE_LOCKER, str(store.path)]
        async with await anyio.open_process(command) as locker:
            assert locker.stdout is not None and locker.stdin is not None
            seen = b""
            while not seen.endswith(b"\n"):
                seen += await locker.stdout.receive()
            assert seen == b"locked\n"
            try:
                yield
            finally:
                await locker.stdin.aclose()
                with anyio.fail_after(5):
                    await locker.wait()
        return
    import asyncpg

    schema = store.schema  # type: ignore[attr-defined]
    conn = await asyncpg.connect(POSTGRES_DSN, timeout=5)
    try:
        async with conn.transaction():
            await conn.execute(
                f'LOCK TABLE "{schema}".tether_runs, "{schema}".tether_owners IN ACCESS EXCLUSIVE MODE'
            )
            yield
    finally:
        await conn.close()

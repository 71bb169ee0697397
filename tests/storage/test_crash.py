"""A run left RUNNING by a process that died is reconciled to ERROR; a live process's run is not.

Each backend, with a real worker process killed with SIGKILL mid-run.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from tether import RunStatus
from tether.storage import PostgresStorage, SqliteStorage, Storage
from tether.storage._base import CRASHED_ERROR

from .conftest import POSTGRES_DSN, drop_schema, postgres_schema

pytestmark = pytest.mark.anyio

WORKER = """
import asyncio, sys
from tether import Agent
from tether.storage import PostgresStorage, SqliteStorage
from tether.testing import ScriptedModel

kind, where, schema = sys.argv[1:]
settings = {"heartbeat_interval": 0.1, "stale_after": 1.0}
if kind == "sqlite":
    storage = SqliteStorage(where, **settings)
else:
    storage = PostgresStorage(where, schema=schema, **settings)
agent = Agent(name="worker", model=ScriptedModel(["partial "], stall=60, stall_at=1), storage=storage)
asyncio.run(agent.arun("a long job", run_id="crash-1"))
"""


@pytest.fixture(params=["sqlite", "postgres"])
async def place(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[str, str, str]]:
    """(backend, location, schema) shared by the worker process and the observer."""
    if request.param == "sqlite":
        yield "sqlite", str(tmp_path / "runs.db"), "-"
        return
    schema = await postgres_schema()
    try:
        yield "postgres", POSTGRES_DSN, schema
    finally:
        await drop_schema(schema)


def observer_for(kind: str, where: str, schema: str) -> Storage:
    if kind == "sqlite":
        return SqliteStorage(where, stale_after=1.0)
    return PostgresStorage(where, schema=schema, stale_after=1.0)


async def status_within(store: Storage, status: RunStatus, seconds: float) -> RunStatus | None:
    deadline = time.monotonic() + seconds
    seen = None
    while time.monotonic() < deadline:
        try:
            run = await store.get_run("crash-1")
        except Exception:  # the worker has not created the schema yet
            run = None
        seen = run.status if run else None
        if seen is status:
            break
        await anyio.sleep(0.05)
    return seen


@pytest.mark.timeout(60)
async def test_killed_worker_leaves_no_run_stuck_at_running(place: tuple[str, str, str]) -> None:
    kind, where, schema = place
    command = [sys.executable, "-c", WORKER, kind, where, schema]
    worker = await anyio.open_process(command, stderr=subprocess.DEVNULL)
    observer = observer_for(kind, where, schema)
    try:
        assert await status_within(observer, RunStatus.running, 15) is RunStatus.running
        await anyio.sleep(1.5)  # longer than stale_after: the live worker's heartbeat keeps its run
        assert await status_within(observer, RunStatus.running, 0.1) is RunStatus.running
        worker.kill()  # SIGKILL: no cleanup, no final write
        with anyio.fail_after(5):
            await worker.wait()
        assert await status_within(observer, RunStatus.error, 5) is RunStatus.error
        run = await observer.get_run("crash-1")
        assert run is not None and run.error == CRASHED_ERROR and run.error_type == "WorkerExited"
        assert [m.content for m in run.messages] == ["a long job"]
    finally:
        if worker.returncode is None:
            worker.kill()
        await worker.aclose()
        await observer.aclose()

"""A run left RUNNING by a process that died is reconciled to ERROR; a live process's run is not."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from tether import RunStatus
from tether.storage import SqliteStorage
from tether.storage._base import CRASHED_ERROR

pytestmark = pytest.mark.anyio

WORKER = """
import asyncio, sys
from tether import Agent
from tether.storage import SqliteStorage
from tether.testing import ScriptedModel

async def main() -> None:
    storage = SqliteStorage(sys.argv[1], heartbeat_interval=0.1, stale_after=1.0)
    agent = Agent(name="worker", model=ScriptedModel(["partial "], stall=60, stall_at=1), storage=storage)
    await agent.arun("a long job", run_id="crash-1")

asyncio.run(main())
"""


async def wait_for_status(store: SqliteStorage, status: RunStatus, within: float) -> RunStatus | None:
    deadline = time.monotonic() + within
    seen = None
    while time.monotonic() < deadline:
        run = await store.get_run("crash-1")
        seen = run.status if run else None
        if seen is status:
            break
        await anyio.sleep(0.05)
    return seen


@pytest.mark.timeout(60)
async def test_killed_worker_leaves_no_run_stuck_at_running(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    worker = await anyio.open_process([sys.executable, "-c", WORKER, str(db)], stderr=subprocess.DEVNULL)
    observer = SqliteStorage(db, stale_after=1.0)
    try:
        for _ in range(200):  # the worker writes the RUNNING row once its run starts
            if db.exists() and await observer.get_run("crash-1") is not None:
                break
            await anyio.sleep(0.05)
        assert await wait_for_status(observer, RunStatus.running, 1) is RunStatus.running
        await anyio.sleep(1.5)  # longer than stale_after: the live worker's heartbeat keeps its run
        assert await wait_for_status(observer, RunStatus.running, 0.1) is RunStatus.running
        worker.kill()  # SIGKILL: no cleanup, no final write
        with anyio.fail_after(5):
            await worker.wait()
        assert await wait_for_status(observer, RunStatus.error, 5) is RunStatus.error
        run = await observer.get_run("crash-1")
        assert run is not None and run.error == CRASHED_ERROR and run.error_type == "WorkerExited"
        assert [m.content for m in run.messages] == ["a long job"]
    finally:
        if worker.returncode is None:
            worker.kill()
        await worker.aclose()
        await observer.aclose()

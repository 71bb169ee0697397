"""SqliteStorage under real faults: a lock held past busy_timeout, a read-only file, a file deleted or
replaced under the open store, a full disk (a file size limit in a worker process)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest

from tether import RunOutput, RunStatus, StorageError
from tether.storage import SqliteStorage

from .conftest import writes_locked

pytestmark = pytest.mark.anyio


def run(run_id: str, status: RunStatus = RunStatus.completed, **changes: object) -> RunOutput:
    return RunOutput(run_id=run_id, agent_id="agent", status=status, created_at=1_700_000_000, **changes)


def stored_ids(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute("SELECT run_id FROM tether_runs ORDER BY rowid")]


def remove_with_wal(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(f"{path}{suffix}")


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make ``path`` read-only for this process: immutable for root (who ignores modes), else mode 0444."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None:
            pytest.skip("running as root without chattr: cannot make a file read-only")
        subprocess.run(["chattr", "+i", str(path)], check=True)
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        return
    mode = path.stat().st_mode
    path.chmod(0o444)
    try:
        yield
    finally:
        path.chmod(mode)


async def test_a_lock_held_past_busy_timeout_is_a_clear_error_and_the_store_works_after(
    tmp_path: Path,
) -> None:
    store = SqliteStorage(tmp_path / "runs.db", busy_timeout=0.3)
    await store.open()
    try:
        async with writes_locked(store):
            started = time.monotonic()
            with pytest.raises(StorageError) as failure:
                await store.finish_run(run("r1"))
            assert time.monotonic() - started < 2
        assert str(failure.value) == (
            f"could not write run r1 in SQLite file {store.path}: database is locked: "
            "another connection held it for more than busy_timeout (0.3 s)"
        )
        await store.finish_run(run("r1"))
        assert await store.get_run("r1") == run("r1")
    finally:
        await store.aclose()


async def test_a_file_made_read_only_after_open_is_refused_at_reopen_and_works_once_writable(
    tmp_path: Path,
) -> None:
    store = SqliteStorage(tmp_path / "runs.db")
    await store.finish_run(run("before"))
    with read_only(store.path):
        await store.aclose()
        with pytest.raises(StorageError, match=f"SQLite file {store.path} is read-only"):
            await store.finish_run(run("during"))
        with pytest.raises(StorageError, match="is read-only"):
            await store.get_run("before")
    assert await store.get_run("before") == run("before")
    await store.finish_run(run("after"))
    assert stored_ids(store.path) == ["before", "after"]
    await store.aclose()


async def test_a_file_deleted_under_the_store_is_recreated_and_the_next_write_lands_there(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SqliteStorage(tmp_path / "runs.db")
    await store.finish_run(run("lost"))
    remove_with_wal(store.path)
    with caplog.at_level(logging.WARNING, logger="tether.storage"):
        await store.finish_run(run("kept"))
    assert [r.getMessage() for r in caplog.records] == [
        f"SQLite file {store.path} was deleted or replaced while open: reopening it"
    ]
    assert stored_ids(store.path) == ["kept"]
    assert await store.list_runs() == [run("kept")]
    await store.aclose()


async def test_a_file_replaced_under_the_store_is_used_or_refused_clearly(tmp_path: Path) -> None:
    store = SqliteStorage(tmp_path / "runs.db")
    other = SqliteStorage(tmp_path / "other.db")
    await store.finish_run(run("old"))
    await other.finish_run(run("restored"))
    await other.aclose()
    (tmp_path / "garbage").write_bytes(b"not a database at all, but long enough to be read as one" * 100)
    os.replace(tmp_path / "garbage", store.path)
    with pytest.raises(StorageError, match=f"{store.path} is not a SQLite database"):
        await store.get_run("old")
    remove_with_wal(store.path)  # a backup put back in place, as SQLite says: without a stale -wal
    os.replace(tmp_path / "other.db", store.path)
    assert await store.list_runs() == [run("restored")]
    await store.finish_run(run("new"))
    assert stored_ids(store.path) == ["restored", "new"]
    await store.aclose()


async def test_nul_and_line_separators_round_trip(tmp_path: Path) -> None:
    store = SqliteStorage(tmp_path / "runs.db")
    text = "a\x00b\u2028c\u2029d\x85e\x00"
    written = run("nul\x00id", content=text, error=text, agent_name=text)
    await store.finish_run(written)
    assert await store.get_run("nul\x00id") == written
    await store.aclose()


DISK_FULL = """
import asyncio, json, os, resource, signal, sys
from tether import RunOutput, RunStatus, StorageError
from tether.storage import SqliteStorage

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
path = sys.argv[1]

def run(run_id, size):
    return RunOutput(run_id=run_id, agent_id="a", status=RunStatus.completed, content="x" * size)

async def main():
    store = SqliteStorage(path)
    await store.finish_run(run("small", 10))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, hard))  # the "disk" holds 256 KiB
    try:
        await store.finish_run(run("big", 4 * 1024 * 1024))
        error = None
    except StorageError as exc:
        error = str(exc)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space freed
    await store.finish_run(run("after", 10))
    ids = [r.run_id for r in await store.list_runs()]
    await store.aclose()
    print(json.dumps({"error": error, "ids": ids}))

asyncio.run(main())
"""


async def test_a_full_disk_is_a_clear_error_and_the_store_works_once_space_is_back(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    done = await anyio.run_process([sys.executable, "-W", "error", "-c", DISK_FULL, str(path)], check=False)
    assert done.returncode == 0, done.stderr.decode()
    result = json.loads(done.stdout)
    assert result["ids"] == ["small", "after"]
    # A write past the size limit fails with EFBIG, which SQLite reports as an I/O error (ENOSPC: "full").
    assert result["error"] == (
        f"could not write run big in SQLite file {path}: disk I/O error (the disk or file system failed)"
    )

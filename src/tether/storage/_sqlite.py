"""SqliteStorage: the embedded default run store (stdlib ``sqlite3`` in one worker thread, WAL mode)."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio

from .._run._events import RunStatus
from .._run._output import RunOutput
from ..exceptions import ConfigurationError, StorageError
from ._base import (
    COLUMNS,
    CRASHED_ERROR,
    CRASHED_TYPE,
    LISTED_COLUMNS,
    SCHEMA_VERSION,
    from_row,
    owner_id,
    to_row,
)
from ._worker import Job, SerialWorker

T = TypeVar("T")
logger = logging.getLogger("tether.storage")

CLOSE_TIMEOUT = 5.0
"""Seconds ``aclose()`` waits for the worker to reach the close before returning (it closes anyway)."""
_SLICE = 0.05
"""Seconds SQLite itself waits for a lock per attempt; between attempts the worker checks whether
its caller is still waiting, until ``busy_timeout`` is spent."""

_HEADER = b"SQLite format 3\x00"
_MIGRATIONS: dict[int, list[str]] = {}
_MIGRATIONS[1] = [
    """CREATE TABLE IF NOT EXISTS tether_runs (
        run_id TEXT PRIMARY KEY, agent_id TEXT NOT NULL, agent_name TEXT, session_id TEXT,
        parent_run_id TEXT, model TEXT, status TEXT NOT NULL, content TEXT NOT NULL DEFAULT '',
        messages TEXT NOT NULL, cancel_reason TEXT, cancel_source TEXT, error TEXT, error_type TEXT,
        metrics TEXT NOT NULL, created_at INTEGER NOT NULL, owner TEXT, updated_at REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS tether_runs_session ON tether_runs (session_id)",
    "CREATE INDEX IF NOT EXISTS tether_runs_agent ON tether_runs (agent_id)",
    "CREATE INDEX IF NOT EXISTS tether_runs_status ON tether_runs (status)",
    "CREATE TABLE IF NOT EXISTS tether_owners (owner TEXT PRIMARY KEY, heartbeat_at REAL NOT NULL)",
]
_MIGRATIONS[2] = ["ALTER TABLE tether_runs ADD COLUMN user_id TEXT"]
_MIGRATIONS[3] = ["ALTER TABLE tether_runs ADD COLUMN events TEXT"]  # a new file gets it here too
_UPSERT = (
    f"INSERT INTO tether_runs ({', '.join(COLUMNS)}, owner, updated_at) "
    f"VALUES ({', '.join(':' + c for c in COLUMNS)}, :owner, :updated_at) "
    f"ON CONFLICT (run_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in (*COLUMNS[1:], "owner", "updated_at"))
)
_REAP = """UPDATE tether_runs SET status = 'ERROR', error = ?, error_type = ?, owner = NULL, updated_at = ?
    WHERE status = 'RUNNING' AND (owner IS NULL OR (owner != ? AND owner NOT IN
        (SELECT owner FROM tether_owners WHERE heartbeat_at >= ?)))
    RETURNING run_id"""


class SqliteStorage:
    """Runs in a SQLite file: the embedded default. Safe for many concurrent runs and processes.

    The constructor checks the file at once (no side effects): a file that is not a SQLite database,
    or a read-only file or folder, is a :class:`~tether.exceptions.StorageError` right there.
    Each process with live runs writes one heartbeat every ``heartbeat_interval`` seconds;
    ``stale_after`` is how old (seconds) an owner's heartbeat may be before its RUNNING runs are
    considered orphaned by a dead process and marked ERROR. An operation waits at most
    ``busy_timeout`` seconds for another connection's write lock, then raises StorageError.

    Every operation runs in one worker thread per store, in the order it was called, and never
    blocks the event loop. Cancelling the caller returns at once: an operation that had not started
    never runs; one that had started finishes or is rolled back in the thread, before any operation
    called after it, and its result is dropped. If the file is deleted or replaced while open, the
    next operation reopens the path.

    A run's events (``RunOutput.events``) are stored with it: :meth:`get_run` returns them, while
    :meth:`list_runs` leaves them out (``events`` is None there), so listing long runs stays cheap.
    Stored events that cannot be read back are logged as a warning and read as None.

    Example::

        agent = Agent(model=model, storage=SqliteStorage("runs.db"))
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        heartbeat_interval: float = 5.0,
        stale_after: float = 30.0,
        busy_timeout: float = 10.0,
    ) -> None:
        self.path = Path(path)
        self.heartbeat_interval = heartbeat_interval
        self.stale_after = stale_after
        self.busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None  # used only in the worker thread
        self._identity: tuple[int, int] | None = None  # (device, inode) of the file it opened
        self._worker = SerialWorker(f"tether-sqlite {self.path}", self._interrupt)
        _check_file(self.path)

    def __repr__(self) -> str:
        return f"SqliteStorage({str(self.path)!r})"

    async def open(self) -> None:
        await self._run(lambda conn: None)

    async def aclose(self) -> None:
        """Close the file in the worker thread, after the operations already queued.

        Waits at most ``CLOSE_TIMEOUT`` seconds (5) and never blocks the event loop; the close
        happens anyway. The store may be used again: the next operation reopens the file.
        """
        with anyio.move_on_after(CLOSE_TIMEOUT):
            await self._worker.run(lambda job: self._close(), abandonable=False)

    async def start_run(self, output: RunOutput, owner: str) -> None:
        def write(conn: sqlite3.Connection) -> None:
            now = time.time()
            row = {**to_row(output), "owner": owner, "updated_at": now}
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(_UPSERT, row)
                _beat(conn, owner, now)

        await self._run(write, f"could not write run {output.run_id}")

    async def finish_run(self, output: RunOutput) -> None:
        def write(conn: sqlite3.Connection) -> None:
            row = {**to_row(output), "owner": None, "updated_at": time.time()}
            with conn:
                conn.execute(_UPSERT, row)

        await self._run(write, f"could not write run {output.run_id}")

    async def get_run(self, run_id: str) -> RunOutput | None:
        def read(conn: sqlite3.Connection) -> RunOutput | None:
            row = conn.execute("SELECT * FROM tether_runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is not None and row["status"] == RunStatus.running.value:
                _reap(conn, self.stale_after)
                row = conn.execute("SELECT * FROM tether_runs WHERE run_id = ?", (run_id,)).fetchone()
            return None if row is None else self._decode(row)

        return await self._run(read, f"could not read run {run_id}")

    async def list_runs(
        self,
        *,
        agent_id: str | None = None,
        session_id: str | None = None,
        status: RunStatus | None = None,
        limit: int | None = None,
    ) -> list[RunOutput]:
        if limit is not None and limit < 0:
            raise ConfigurationError(f"limit must be >= 0 (got {limit})")
        filters = {"agent_id": agent_id, "session_id": session_id, "status": status.value if status else None}
        where = " AND ".join(f"{name} = :{name}" for name, value in filters.items() if value is not None)
        where = f"WHERE {where}" if where else ""
        sql = f"SELECT {LISTED_COLUMNS} FROM tether_runs {where} ORDER BY rowid DESC"  # events: NULL
        if limit is not None:
            sql += f" LIMIT {int(limit)}"

        def read(conn: sqlite3.Connection) -> list[RunOutput]:
            return [self._decode(row) for row in reversed(conn.execute(sql, filters).fetchall())]

        return await self._run(read, "could not list runs")

    async def heartbeat(self, owner: str) -> None:
        def write(conn: sqlite3.Connection) -> None:
            with conn:
                _beat(conn, owner, time.time())

        await self._run(write, "could not write the heartbeat")

    async def reap(self, stale_after: float) -> list[str]:
        return await self._run(lambda conn: _reap(conn, stale_after), "could not reconcile orphaned runs")

    # -- plumbing: everything below runs in the worker thread, except _interrupt ----------------

    async def _run(self, op: Callable[[sqlite3.Connection], T], what: str = "could not open") -> T:
        return await self._worker.run(lambda job: self._attempt(job, op, what))

    def _attempt(self, job: Job[T], op: Callable[[sqlite3.Connection], T], what: str) -> T:
        """``op`` in its own transaction, tried again while the file is locked by another connection,
        until ``busy_timeout`` is spent or the caller stops waiting."""
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                return op(self._connection())
            except sqlite3.Error as exc:
                code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
                if code in _BUSY and not job.abandoned and time.monotonic() < deadline:
                    time.sleep(0.005)  # some BUSY answers come at once, without SQLite's own wait
                    continue
                if code in _REOPEN:
                    self._close()  # the next operation reopens the path and checks the file again
                raise StorageError(f"{what} in SQLite file {self.path}: {self._explain(exc, code)}") from exc

    def _explain(self, exc: sqlite3.Error, code: int) -> str:
        if code in _BUSY:
            return f"{exc}: another connection held it for more than busy_timeout ({self.busy_timeout} s)"
        hint = _HINTS.get(code)
        return f"{exc} ({hint})" if hint else str(exc)

    def _decode(self, row: sqlite3.Row) -> RunOutput:
        try:
            return from_row(row)
        except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
            raise StorageError(f"run {row['run_id']} in SQLite file {self.path} is corrupt: {exc}") from exc

    def _connection(self) -> sqlite3.Connection:
        """The open connection, reopened first if the file was deleted or replaced under it."""
        if self._conn is not None:
            try:
                stat = os.stat(self.path)
                moved = (stat.st_dev, stat.st_ino) != self._identity
            except OSError:
                moved = True
            if not moved:
                return self._conn
            logger.warning("SQLite file %s was deleted or replaced while open: reopening it", self.path)
            self._close()
        return self._connect()

    def _connect(self) -> sqlite3.Connection:
        _check_file(self.path)
        slice_ = min(_SLICE, self.busy_timeout)
        conn = sqlite3.connect(self.path, timeout=slice_, check_same_thread=False, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            _migrate(conn, self.path)
            stat = os.stat(self.path)
        except BaseException:
            conn.close()
            raise
        self._conn, self._identity = conn, (stat.st_dev, stat.st_ino)
        return conn

    def _close(self) -> None:
        conn, self._conn, self._identity = self._conn, None, None
        if conn is not None:
            conn.close()

    def _interrupt(self) -> None:
        """Called from the caller's loop when the running operation is abandoned: stop its statement."""
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):  # closed meanwhile
                conn.interrupt()


_BUSY = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
_REOPEN = frozenset(
    {sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
    | {sqlite3.SQLITE_CANTOPEN}
)
_HINTS = {
    sqlite3.SQLITE_READONLY: "the file, its folder or its -wal/-shm files became read-only, or it moved",
    sqlite3.SQLITE_IOERR: "the disk or file system failed",
    sqlite3.SQLITE_FULL: "the disk is full or a file size limit was reached",
    sqlite3.SQLITE_CORRUPT: "the file is corrupt",
    sqlite3.SQLITE_NOTADB: "the file is not a SQLite database",
    sqlite3.SQLITE_CANTOPEN: "the file could not be opened",
}


def _check_file(path: Path) -> None:
    """Fail now, clearly, for a file that cannot work; create nothing."""
    if path.is_dir():
        raise StorageError(f"SQLite path {path} is a directory")
    if path.exists():
        with path.open("rb") as handle:
            header = handle.read(len(_HEADER))
        if header and header != _HEADER:
            raise StorageError(f"{path} is not a SQLite database (corrupt, or another kind of file)")
        if not os.access(path, os.W_OK):
            raise StorageError(f"SQLite file {path} is read-only")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise StorageError(f"the folder of SQLite file {path} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StorageError(
            f"the folder of SQLite file {path} is read-only (WAL mode needs to write beside it)"
        )


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    with conn:
        conn.execute("BEGIN IMMEDIATE")  # one process migrates; the others wait, then see it done
        conn.execute("CREATE TABLE IF NOT EXISTS tether_schema (version INTEGER NOT NULL)")
        row = conn.execute("SELECT max(version) FROM tether_schema").fetchone()
        version = row[0] if row else None
        if version is not None and version > SCHEMA_VERSION:
            raise StorageError(
                f"SQLite file {path} has tether schema version {version}, "
                f"newer than this tether ({SCHEMA_VERSION}): upgrade tether"
            )
        for step in range((version or 0) + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[step]:
                conn.execute(statement)
        if (version or 0) < SCHEMA_VERSION:
            conn.execute("DELETE FROM tether_schema")
            conn.execute("INSERT INTO tether_schema (version) VALUES (?)", (SCHEMA_VERSION,))


def _beat(conn: sqlite3.Connection, owner: str, now: float) -> None:
    conn.execute(
        "INSERT INTO tether_owners (owner, heartbeat_at) VALUES (?, ?) "
        "ON CONFLICT (owner) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
        (owner, now),
    )


def _reap(conn: sqlite3.Connection, stale_after: float) -> list[str]:
    now = time.time()
    with conn:
        rows: list[Any] = conn.execute(
            _REAP, (CRASHED_ERROR, CRASHED_TYPE, now, owner_id(), now - stale_after)
        ).fetchall()
    return [row[0] for row in rows]

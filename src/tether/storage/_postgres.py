"""PostgresStorage: the run store on PostgreSQL, through one asyncpg pool per event loop.

Three tables live in the configured schema: ``tether_schema`` (one row, the schema version),
``tether_runs`` (one row per run; ``seq`` keeps the order runs started in) and ``tether_owners``
(one heartbeat per process). Heartbeats and staleness use the database clock, so hosts whose
clocks disagree still agree on which owner is dead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

try:
    import asyncpg  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("PostgresStorage needs asyncpg: pip install 'tether[postgres]'") from exc

from .._loopbound import LoopBound
from .._run._events import RunStatus
from .._run._output import RunOutput
from ..exceptions import ConfigurationError, StorageError
from ._base import CRASHED_ERROR, CRASHED_TYPE, SCHEMA_VERSION, from_row, owner_id
from ._pgsql import Queries, lock_key, plain_row, run_values

T = TypeVar("T")
logger = logging.getLogger("tether.storage")

CLOSE_TIMEOUT = 5.0
"""Seconds ``aclose()`` waits for operations in flight and borrowed connections, then terminates."""

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)
# The connection died under the operation (server restart, pg_terminate_backend, network): try once
# more on a fresh connection. Every operation is idempotent (upserts, the reap, reads).
_CONNECTION_LOST = (
    asyncpg.PostgresConnectionError,
    asyncpg.InternalClientError,  # e.g. the server closed an idle pooled connection: its state is broken
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
)  # not ConnectionRefusedError or a connect timeout: a server that cannot be reached now fails at once
# A malformed DSN surfaces as ValueError (bad option) or OverflowError (port out of range).
_CONNECT_ERRORS = (*_DRIVER_ERRORS, ValueError, OverflowError)

_migrated: set[tuple[str, str]] = set()
"""(dsn, schema) pairs this process has created or migrated already: later opens skip the check."""


class PostgresStorage:
    """Runs in PostgreSQL, for several processes or hosts sharing one store.

    ``schema`` must exist or be creatable; the tables are created (or migrated) on first open.
    Each event loop that uses the store gets its own pool of ``min_size``..``max_size``
    connections, closed by :meth:`aclose` or when that loop shuts down, so one store can serve
    your loop and the sync bridge's. Every operation runs in a task of its own: cancelling the caller
    returns at once and cancels the statement on the server, and the next write of the same run
    starts only after the abandoned one has ended there, so writes of a run land in the order they
    were made. An operation whose connection dies under it is tried once more on a fresh connection;
    ``command_timeout`` bounds each statement. PostgreSQL text cannot hold NUL (U+0000): in free text
    (content, messages, errors) it is stored escaped and read back as written; in an id it is
    refused with StorageError. Each process with live runs writes one heartbeat every
    ``heartbeat_interval`` seconds; ``stale_after`` is how old (seconds, by the database clock) an
    owner's heartbeat may be before its RUNNING runs count as orphaned by a dead process.

    A run's events (``RunOutput.events``) are stored with it, as JSON text: :meth:`get_run` returns
    them, while :meth:`list_runs` leaves them out (``events`` is None there), so listing long runs
    stays cheap. Stored events that cannot be read back are logged as a warning and read as None.

    Example::

        agent = Agent(model=model, storage=PostgresStorage("postgresql://app@db:5432/app"))
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "public",
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 5.0,
        command_timeout: float = 10.0,
        heartbeat_interval: float = 5.0,
        stale_after: float = 30.0,
    ) -> None:
        if not _IDENTIFIER.fullmatch(schema):
            raise ConfigurationError(
                f"schema must be a plain SQL identifier (letters, digits, _), got {schema!r}"
            )
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ConfigurationError(
                f"need 0 <= min_size <= max_size and max_size >= 1, got {min_size}, {max_size}"
            )
        if min(connect_timeout, command_timeout, heartbeat_interval) <= 0 or stale_after < 0:
            raise ConfigurationError("timeouts and heartbeat_interval must be > 0, stale_after >= 0")
        self.schema = schema
        self.heartbeat_interval = heartbeat_interval
        self.stale_after = stale_after
        self.min_size, self.max_size = min_size, max_size
        self.connect_timeout, self.command_timeout = connect_timeout, command_timeout
        self._dsn = dsn
        self._where = _describe(dsn)
        self._secrets = _secrets(dsn)
        self._sql = Queries(schema)
        self._pools: LoopBound[_LoopPool] = LoopBound(_LoopPool, _LoopPool.close)

    def __repr__(self) -> str:
        return f"PostgresStorage({self._where!r}, schema={self.schema!r})"

    async def open(self) -> None:
        await self._pool()

    async def aclose(self) -> None:
        await (await self._pools.get()).close()

    async def start_run(self, output: RunOutput, owner: str) -> None:
        values = run_values(output)
        await self._call(
            f"write run {output.run_id} to",
            lambda pool: pool.execute(self._sql.start, *values, owner),
            output.run_id,
        )

    async def finish_run(self, output: RunOutput) -> None:
        values = run_values(output)
        await self._call(
            f"write run {output.run_id} to",
            lambda pool: pool.execute(self._sql.upsert, *values, None),
            output.run_id,
        )

    async def get_run(self, run_id: str) -> RunOutput | None:
        args = (CRASHED_ERROR, CRASHED_TYPE, float(self.stale_after), owner_id(), run_id)
        row = await self._call(f"read run {run_id} from", lambda pool: pool.fetchrow(self._sql.get, *args))
        return None if row is None else self._decode(row)

    async def list_runs(
        self,
        *,
        agent_id: str | None = None,
        session_id: str | None = None,
        status: RunStatus | None = None,
        limit: int | None = None,
    ) -> list[RunOutput]:
        if limit is not None and limit < 0:
            raise ConfigurationError(f"limit must be >= 0 or None, got {limit}")
        clauses: list[str] = []
        args: list[object] = []
        status_value = None if status is None else RunStatus(status).value
        for column, value in (("agent_id", agent_id), ("session_id", session_id), ("status", status_value)):
            if value is not None:
                args.append(value)
                clauses.append(f"{column} = ${len(args)}")
        where = " WHERE " + " AND ".join(clauses) if clauses else ""
        # The newest ``limit`` rows, handed back oldest first; LIMIT NULL means no limit.
        sql = (
            f"SELECT * FROM (SELECT {self._sql.listed}, seq FROM {self._sql.runs}{where} "
            f"ORDER BY seq DESC LIMIT ${len(args) + 1}) AS newest ORDER BY seq"
        )
        rows = await self._call("list runs in", lambda pool: pool.fetch(sql, *args, limit))
        return [self._decode(row) for row in rows]

    async def heartbeat(self, owner: str) -> None:
        await self._call(
            f"write the heartbeat of {owner} to", lambda pool: pool.execute(self._sql.heartbeat, owner)
        )

    async def reap(self, stale_after: float) -> list[str]:
        args = (CRASHED_ERROR, CRASHED_TYPE, float(stale_after), owner_id())
        rows = await self._call("reconcile orphaned runs in", lambda pool: pool.fetch(self._sql.reap, *args))
        return [row["run_id"] for row in rows]

    # -- plumbing ------------------------------------------------------------------------------

    async def _call(self, what: str, work: Callable[[Any], Awaitable[T]], run_id: str | None = None) -> T:
        """``work(pool)`` in a task of its own: see the class docstring for what that guarantees."""
        slot = await self._pool()
        previous = slot.writes.get(run_id) if run_id is not None else None
        task = asyncio.get_running_loop().create_task(self._attempt(slot.pool, previous, what, work))
        slot.track(task, run_id)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.cancel()  # asyncpg cancels the statement on the server, in the task, after we return
            raise

    async def _attempt(
        self, pool: Any, previous: asyncio.Task[Any] | None, what: str, work: Callable[[Any], Awaitable[T]]
    ) -> T:
        if previous is not None:
            await asyncio.wait([previous])  # the run's previous write has ended on the server
        with self._translate(what):
            try:
                return await work(pool)
            except _CONNECTION_LOST as exc:
                logger.warning("%r: connection lost (%s); trying once more on a new one", self, exc)
                await pool.expire_connections()  # after a server restart every pooled connection is dead
                return await work(pool)

    async def _pool(self) -> _LoopPool:
        """This loop's pool: connected, and the schema checked, on first use in the loop."""
        slot = await self._pools.get()
        if slot.pool is None:
            async with slot.lock:  # many tasks may arrive first at once; one of them connects
                if slot.pool is None:
                    slot.pool = await self._connect()
        return slot

    async def _connect(self) -> Any:
        try:
            # asyncpg bounds each connection attempt; this bounds everything else (DNS, init).
            async with asyncio.timeout(2 * self.connect_timeout):
                pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=self.min_size,
                    max_size=self.max_size,
                    timeout=self.connect_timeout,
                    command_timeout=self.command_timeout,
                    init=_init_connection,
                    # Names the store in pg_stat_activity (PostgreSQL keeps the first 63 bytes).
                    server_settings={"application_name": f"tether {self.schema}"},
                )
        except _CONNECT_ERRORS as exc:
            raise self._error(f"could not connect to PostgreSQL at {self._where}", exc) from exc
        try:
            key = (self._dsn, self.schema)
            if key not in _migrated:
                with self._translate(f"create or migrate schema {self.schema!r} in"):
                    async with pool.acquire() as conn:
                        await self._migrate(conn)
                _migrated.add(key)
        except BaseException:
            pool.terminate()  # immediate and synchronous, so it also holds when we are cancelled
            raise
        return pool

    async def _migrate(self, conn: Any) -> None:
        """Create the tables, or bring them up to SCHEMA_VERSION, one process at a time."""
        sql = self._sql
        async with conn.transaction():
            # Concurrent first opens from several processes queue here; the lock ends with the transaction.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key(self.schema))
            if not await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", self.schema
            ):
                await conn.execute(f"CREATE SCHEMA {sql.schema}")
            await conn.execute(f"CREATE TABLE IF NOT EXISTS {sql.version} (version INTEGER NOT NULL)")
            version = await conn.fetchval(f"SELECT max(version) FROM {sql.version}") or 0
            if version > SCHEMA_VERSION:
                raise StorageError(
                    f"PostgreSQL at {self._where}, schema {self.schema!r}: tether schema version {version} "
                    f"is newer than this tether ({SCHEMA_VERSION}); upgrade tether"
                )
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in sql.migrations[step]:
                    await conn.execute(statement)
            if version < SCHEMA_VERSION:
                await conn.execute(f"DELETE FROM {sql.version}")
                await conn.execute(f"INSERT INTO {sql.version} (version) VALUES ($1)", SCHEMA_VERSION)

    def _decode(self, row: Any) -> RunOutput:
        try:
            return from_row(plain_row(row))
        except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
            raise StorageError(
                f"run {row['run_id']} in PostgreSQL at {self._where} is corrupt: {exc}"
            ) from exc

    @contextmanager
    def _translate(self, what: str) -> Iterator[None]:
        """Raise driver and network errors as StorageError, saying what was attempted."""
        try:
            yield
        except _DRIVER_ERRORS as exc:
            raise self._error(f"could not {what} PostgreSQL at {self._where}", exc) from exc

    def _error(self, message: str, exc: BaseException) -> StorageError:
        detail = str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError) and not str(exc):
            detail = (
                f"no answer in time (connect_timeout {self.connect_timeout} s, "
                f"command_timeout {self.command_timeout} s)"
            )
        text = f"{message}: {detail}"
        for secret in self._secrets:  # the driver may echo parts of the DSN back
            text = text.replace(secret, "***")
        return StorageError(text)


class _LoopPool:
    """The store's pool on one event loop (asyncpg pools belong to the loop that made them)."""

    def __init__(self) -> None:
        self.pool: Any = None
        self.lock = asyncio.Lock()
        self.tasks: set[asyncio.Task[Any]] = set()  # operations in flight, awaited or abandoned
        self.writes: dict[str, asyncio.Task[Any]] = {}  # the last write of each run, until it ends

    def track(self, task: asyncio.Task[Any], run_id: str | None) -> None:
        self.tasks.add(task)
        if run_id is not None:
            self.writes[run_id] = task

        def ended(task: asyncio.Task[Any]) -> None:
            self.tasks.discard(task)
            if run_id is not None and self.writes.get(run_id) is task:
                del self.writes[run_id]
            if not task.cancelled():
                task.exception()  # retrieved: an abandoned operation's error has nobody to go to

        task.add_done_callback(ended)

    async def close(self) -> None:
        """Close and forget the pool, if any, within CLOSE_TIMEOUT: the next use makes a new one."""
        pool, self.pool = self.pool, None
        if pool is None:
            return
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                if self.tasks:  # operations in flight end first (each is bounded by command_timeout)
                    await asyncio.wait(set(self.tasks))
                await pool.close()
        except _DRIVER_ERRORS:
            # Timed out, or a connection was already broken: no reason to fail the caller's cleanup.
            pool.terminate()
        except BaseException:  # our caller was cancelled: leave nothing open behind
            pool.terminate()
            raise


async def _init_connection(conn: Any) -> None:
    # JSONB reads come back as Python objects, which from_row() accepts as they are.
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


def _describe(dsn: str) -> str:
    """``host:port/database`` of a DSN, for messages; never the user's password."""
    try:
        parts = urlsplit(dsn)
        if parts.scheme not in ("postgresql", "postgres"):
            return "(not a postgresql:// DSN)"
        query = parse_qs(parts.query)
        hosts = parts.netloc.rpartition("@")[2] or query.get("host", ["localhost"])[0]
        if "," not in hosts and not re.search(r":\d+$", hosts):
            hosts += ":" + query.get("port", ["5432"])[0]
        database = unquote(parts.path.lstrip("/")) or query.get("dbname", [parts.username or "postgres"])[0]
    except ValueError:
        return "(unparsable DSN)"
    return f"{hosts}/{database}"


def _secrets(dsn: str) -> list[str]:
    """The password of a DSN, as written and decoded, to scrub from messages."""
    try:
        parts = urlsplit(dsn)
        found = [parts.password or "", *parse_qs(parts.query).get("password", [])]
    except ValueError:
        return []
    return sorted(
        {form for secret in found if secret for form in (secret, unquote(secret))}, key=len, reverse=True
    )

"""PostgresStorage: the run store on PostgreSQL, through one asyncpg pool per event loop.

Three tables live in the configured schema: ``tether_schema`` (one row, the schema version),
``tether_runs`` (one row per run; ``seq`` keeps the order runs started in) and ``tether_owners``
(one heartbeat per process). Heartbeats and staleness use the database clock, so hosts whose
clocks disagree still agree on which owner is dead.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

try:
    import asyncpg  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("PostgresStorage needs asyncpg: pip install 'tether[postgres]'") from exc

from .._loopbound import LoopBound
from .._run._events import RunStatus
from .._run._output import RunOutput
from ..exceptions import ConfigurationError, StorageError
from ._base import COLUMNS, CRASHED_ERROR, CRASHED_TYPE, SCHEMA_VERSION, from_row, to_row

CLOSE_TIMEOUT = 5.0
"""Seconds ``aclose()`` waits for borrowed connections before terminating the pool."""

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_NOW = "extract(epoch from clock_timestamp())::double precision"
_JSON_COLUMNS = frozenset({"messages", "metrics"})
_DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)
# A malformed DSN surfaces as ValueError (bad option) or OverflowError (port out of range).
_CONNECT_ERRORS = (*_DRIVER_ERRORS, ValueError, OverflowError)

_migrated: set[tuple[str, str]] = set()
"""(dsn, schema) pairs this process has created or migrated already: later opens skip the check."""


class PostgresStorage:
    """Runs in PostgreSQL, for several processes or hosts sharing one store.

    ``schema`` must exist or be creatable; the tables are created (or migrated) on first open.
    Each event loop that uses the store gets its own pool of ``min_size``..``max_size``
    connections, closed by :meth:`aclose` or when that loop shuts down, so one store can serve
    your loop and the sync bridge's. Each process with live runs writes one heartbeat every
    ``heartbeat_interval`` seconds; ``stale_after`` is how old (seconds, by the database clock) an
    owner's heartbeat may be before its RUNNING runs count as orphaned by a dead process.

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
        self._sql = _Queries(schema)
        self._pools: LoopBound[_LoopPool] = LoopBound(_LoopPool, _LoopPool.close)

    def __repr__(self) -> str:
        return f"PostgresStorage({self._where!r}, schema={self.schema!r})"

    async def open(self) -> None:
        await self._pool()

    async def aclose(self) -> None:
        await (await self._pools.get()).close()

    async def start_run(self, output: RunOutput, owner: str) -> None:
        pool = await self._pool()
        with self._translate(f"write run {output.run_id} to"):
            await pool.execute(self._sql.start, *_values(output), owner)

    async def finish_run(self, output: RunOutput) -> None:
        pool = await self._pool()
        with self._translate(f"write run {output.run_id} to"):
            await pool.execute(self._sql.upsert, *_values(output), None)

    async def get_run(self, run_id: str) -> RunOutput | None:
        pool = await self._pool()
        with self._translate(f"read run {run_id} from"):
            row = await pool.fetchrow(
                self._sql.get, CRASHED_ERROR, CRASHED_TYPE, float(self.stale_after), run_id
            )
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
            f"SELECT * FROM (SELECT {self._sql.columns}, seq FROM {self._sql.runs}{where} "
            f"ORDER BY seq DESC LIMIT ${len(args) + 1}) AS newest ORDER BY seq"
        )
        pool = await self._pool()
        with self._translate("list runs in"):
            rows = await pool.fetch(sql, *args, limit)
        return [self._decode(row) for row in rows]

    async def heartbeat(self, owner: str) -> None:
        pool = await self._pool()
        with self._translate(f"write the heartbeat of {owner} to"):
            await pool.execute(self._sql.heartbeat, owner)

    async def reap(self, stale_after: float) -> list[str]:
        pool = await self._pool()
        with self._translate("reconcile orphaned runs in"):
            rows = await pool.fetch(self._sql.reap, CRASHED_ERROR, CRASHED_TYPE, float(stale_after))
        return [row["run_id"] for row in rows]

    # -- plumbing ------------------------------------------------------------------------------

    async def _pool(self) -> Any:
        """This loop's pool: connected, and the schema checked, on first use in the loop."""
        slot = await self._pools.get()
        if slot.pool is None:
            async with slot.lock:  # many tasks may arrive first at once; one of them connects
                if slot.pool is None:
                    slot.pool = await self._connect()
        return slot.pool

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
                    server_settings={"application_name": "tether"},
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
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock_key(self.schema))
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
            return from_row(row)
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
        text = f"{message}: {str(exc) or type(exc).__name__}"
        for secret in self._secrets:  # the driver may echo parts of the DSN back
            text = text.replace(secret, "***")
        return StorageError(text)


class _LoopPool:
    """The store's pool on one event loop (asyncpg pools belong to the loop that made them)."""

    def __init__(self) -> None:
        self.pool: Any = None
        self.lock = asyncio.Lock()

    async def close(self) -> None:
        """Close and forget the pool, if any: the next use makes a new one."""
        pool, self.pool = self.pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT)
        except _DRIVER_ERRORS:
            # Timed out, or a connection was already broken: no reason to fail the caller's cleanup.
            pool.terminate()


class _Queries:
    """The SQL of one schema, built once: every table name schema-qualified and quoted."""

    def __init__(self, schema: str) -> None:
        s = self.schema = f'"{schema}"'
        runs, owners = self.runs, self.owners = f"{s}.tether_runs", f"{s}.tether_owners"
        self.version = f"{s}.tether_schema"
        self.columns = ", ".join(COLUMNS)
        owner = f"${len(COLUMNS) + 1}"
        # to_row() serialised the JSON columns already: the server parses that text (a jsonb
        # parameter would go through the connection's codec and be encoded a second time).
        values = ", ".join(
            f"${i}::text::jsonb" if c in _JSON_COLUMNS else f"${i}" for i, c in enumerate(COLUMNS, 1)
        )
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in (*COLUMNS[1:], "owner", "updated_at"))
        self.upsert = (
            f"INSERT INTO {runs} ({self.columns}, owner, updated_at) VALUES ({values}, {owner}, {_NOW}) "
            f"ON CONFLICT (run_id) DO UPDATE SET {updates}"
        )
        beat = (
            f"INSERT INTO {owners} (owner, heartbeat_at) VALUES ({{owner}}, {_NOW}) "
            "ON CONFLICT (owner) DO UPDATE SET heartbeat_at = EXCLUDED.heartbeat_at"
        )
        self.heartbeat = beat.format(owner="$1")
        # One statement, hence one transaction: the run row and its owner's heartbeat land together.
        self.start = f"WITH beat AS ({beat.format(owner=owner)}) {self.upsert}"
        # $1 error, $2 error type, $3 stale_after; an owner without a heartbeat row is stale too.
        crash = f"status = 'ERROR', error = $1, error_type = $2, owner = NULL, updated_at = {_NOW}"
        stale = (
            f"r.status = 'RUNNING' AND NOT EXISTS (SELECT 1 FROM {owners} o "
            f"WHERE o.owner = r.owner AND o.heartbeat_at >= {_NOW} - $3)"
        )
        self.reap = (
            f"WITH reaped AS (UPDATE {runs} r SET {crash} WHERE {stale} RETURNING run_id, seq) "
            "SELECT run_id FROM reaped ORDER BY seq"
        )
        # Reap this run if its owner is dead, then read it: the reaped row, or else the stored one
        # (the outer SELECT sees the table as it was before the UPDATE).
        self.get = (
            f"WITH reaped AS (UPDATE {runs} r SET {crash} WHERE r.run_id = $4 AND {stale} "
            f"RETURNING {self.columns}) SELECT {self.columns} FROM reaped UNION ALL "
            f"SELECT {self.columns} FROM {runs} WHERE run_id = $4 AND NOT EXISTS (SELECT 1 FROM reaped)"
        )
        self.migrations: dict[int, list[str]] = {
            1: [
                f"""CREATE TABLE IF NOT EXISTS {runs} (
                    run_id TEXT PRIMARY KEY, seq BIGSERIAL NOT NULL, agent_id TEXT NOT NULL,
                    agent_name TEXT, session_id TEXT, parent_run_id TEXT, model TEXT, status TEXT NOT NULL,
                    content TEXT NOT NULL DEFAULT '', messages JSONB NOT NULL, cancel_reason TEXT,
                    cancel_source TEXT, error TEXT, error_type TEXT, metrics JSONB NOT NULL,
                    created_at BIGINT NOT NULL, owner TEXT, updated_at DOUBLE PRECISION NOT NULL)""",
                f"CREATE INDEX IF NOT EXISTS tether_runs_session ON {runs} (session_id, seq)",
                f"CREATE INDEX IF NOT EXISTS tether_runs_agent ON {runs} (agent_id, seq)",
                f"CREATE INDEX IF NOT EXISTS tether_runs_status ON {runs} (status)",
                f"""CREATE TABLE IF NOT EXISTS {owners} (
                    owner TEXT PRIMARY KEY, heartbeat_at DOUBLE PRECISION NOT NULL)""",
            ],
            2: [f"ALTER TABLE {runs} ADD COLUMN IF NOT EXISTS user_id TEXT"],
        }


async def _init_connection(conn: Any) -> None:
    # JSONB reads come back as Python objects, which from_row() accepts as they are.
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


def _values(output: RunOutput) -> list[Any]:
    row = to_row(output)
    return [row[column] for column in COLUMNS]


def _lock_key(schema: str) -> int:
    """A stable advisory-lock key for migrating ``schema`` (a signed 64-bit integer)."""
    return int.from_bytes(
        hashlib.blake2b(f"tether:{schema}".encode(), digest_size=8).digest(), "big", signed=True
    )


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

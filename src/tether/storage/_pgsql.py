"""The SQL of PostgresStorage, built once per schema, and a run's values for it."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .._run._output import RunOutput
from ..exceptions import StorageError
from ._base import COLUMNS, LISTED_COLUMNS, to_row

_NOW = "extract(epoch from clock_timestamp())::double precision"
_JSON_COLUMNS = frozenset({"messages", "metrics"})  # JSONB; ``events`` is JSON in a TEXT column
_FREE_TEXT = ("agent_name", "model", "content", "cancel_reason", "error", "error_type")
# JSON text that to_row() wrote: JSON escapes NUL (as \u0000), so it never holds a raw NUL and is
# stored as it is, neither escaped nor refused; a NUL in an event's text round-trips through that escape.
_JSON_TEXT = frozenset({"events"})
_ESCAPED = "nul_escaped"
_ESCAPE_PAIR = re.compile("\x01([\x01\x02])")


class Queries:
    """The SQL of one schema, built once: every table name schema-qualified and quoted."""

    def __init__(self, schema: str) -> None:
        s = self.schema = f'"{schema}"'
        runs, owners = self.runs, self.owners = f"{s}.tether_runs", f"{s}.tether_owners"
        self.version = f"{s}.tether_schema"
        self.columns = ", ".join(COLUMNS)
        self.listed = LISTED_COLUMNS  # listings leave the (possibly long) events out
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
        # $4 is this process's owner id: it is alive (it is running this query), whatever its heartbeat.
        stale = (
            f"r.status = 'RUNNING' AND r.owner IS DISTINCT FROM $4 AND NOT EXISTS (SELECT 1 FROM {owners} o "
            f"WHERE o.owner = r.owner AND o.heartbeat_at >= {_NOW} - $3)"
        )
        self.reap = (
            f"WITH reaped AS (UPDATE {runs} r SET {crash} WHERE {stale} RETURNING run_id, seq) "
            "SELECT run_id FROM reaped ORDER BY seq"
        )
        # Reap this run if its owner is dead, then read it: the reaped row, or else the stored one
        # (the outer SELECT sees the table as it was before the UPDATE).
        self.get = (
            f"WITH reaped AS (UPDATE {runs} r SET {crash} WHERE r.run_id = $5 AND {stale} "
            f"RETURNING {self.columns}) SELECT {self.columns} FROM reaped UNION ALL "
            f"SELECT {self.columns} FROM {runs} WHERE run_id = $5 AND NOT EXISTS (SELECT 1 FROM reaped)"
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
            3: [f"ALTER TABLE {runs} ADD COLUMN IF NOT EXISTS events TEXT"],
        }


def run_values(output: RunOutput) -> list[Any]:
    """The upsert's parameters, NUL escaped; StorageError for a NUL in an id, before anything is sent.

    PostgreSQL text and jsonb cannot hold NUL (U+0000). A run whose free text (``_FREE_TEXT`` and
    the messages) holds one is stored losslessly: every string there is escaped (U+0001 becomes
    U+0001 U+0001, U+0000 becomes U+0001 U+0002) and ``messages`` is stored as
    ``{"nul_escaped": [...]}``, which :func:`plain_row` undoes. Ids and the other columns that
    queries filter on are stored as they are, so a NUL there is refused. ``events`` is JSON text
    (``_JSON_TEXT``), in which NUL is already the escape ``\\u0000``: it is stored as it is.
    """
    row = to_row(output)
    # JSON writes NUL as the escape \u0000: a quick test first, then the decoded strings.
    messages = json.loads(row["messages"]) if "\\u0000" in row["messages"] else None
    escape = any(row[column] and "\x00" in row[column] for column in _FREE_TEXT) or (
        messages is not None and any("\x00" in text for text in _strings(messages))
    )
    for column in COLUMNS:
        value = row[column]
        plain = column not in _FREE_TEXT and column != "messages" and column not in _JSON_TEXT
        if plain and isinstance(value, str) and "\x00" in value:
            raise StorageError(
                f"run {output.run_id!r} cannot be stored in PostgreSQL: its {column} holds a NUL "
                "character (U+0000), which PostgreSQL keeps only in free text (content, messages, errors)"
            )
    if escape:
        for column in _FREE_TEXT:
            if row[column] is not None:
                row[column] = _escape(row[column])
        escaped = _each_string(_escape, json.loads(row["messages"]))
        row["messages"] = json.dumps({_ESCAPED: escaped}, ensure_ascii=False)
    return [row[column] for column in COLUMNS]


def plain_row(row: Mapping[str, Any]) -> Mapping[str, Any]:
    """A stored row as :func:`~._base.from_row` reads it: a NUL-escaped one unescaped."""
    messages = row["messages"]
    if not (isinstance(messages, dict) and _ESCAPED in messages):
        return row
    plain = dict(row)
    for column in _FREE_TEXT:
        if plain[column] is not None:
            plain[column] = _unescape(plain[column])
    plain["messages"] = _each_string(_unescape, messages[_ESCAPED])
    return plain


def _escape(text: str) -> str:
    return text.replace("\x01", "\x01\x01").replace("\x00", "\x01\x02")


def _unescape(text: str) -> str:
    return _ESCAPE_PAIR.sub(lambda pair: "\x01" if pair[1] == "\x01" else "\x00", text)


def _each_string(change: Callable[[str], str], value: Any) -> Any:
    """Decoded JSON with ``change`` applied to every string, keys included."""
    if isinstance(value, str):
        return change(value)
    if isinstance(value, list):
        return [_each_string(change, item) for item in value]
    if isinstance(value, dict):
        return {change(key): _each_string(change, item) for key, item in value.items()}
    return value


def _strings(value: Any) -> Iterator[str]:
    """Every string in decoded JSON, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)


def lock_key(schema: str) -> int:
    """A stable advisory-lock key for migrating ``schema`` (a signed 64-bit integer)."""
    return int.from_bytes(
        hashlib.blake2b(f"tether:{schema}".encode(), digest_size=8).digest(), "big", signed=True
    )

"""Property: any valid Unicode text a run can carry comes back from every backend exactly as written."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether import Message, RunOutput, RunStatus, ToolCall, ToolCallFunction
from tether.storage import PostgresStorage, SqliteStorage, Storage

from .conftest import POSTGRES_DSN, drop_schema, postgres_schema

# Every code point but the surrogates (a lone one is not valid Unicode: refused, see test_conformance).
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)
# Ids are what queries filter on: PostgreSQL cannot hold NUL there (refused, see test_postgres_faults).
ID = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=10)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[BlockingPortal, Storage]]:
    with start_blocking_portal() as portal:
        if request.param == "sqlite":
            store: Storage = SqliteStorage(tmp_path / "runs.db")
            yield portal, store
            portal.call(store.aclose)
            return
        schema = portal.call(postgres_schema)
        store = PostgresStorage(POSTGRES_DSN, schema=schema)
        try:
            yield portal, store
        finally:
            portal.call(store.aclose)
            portal.call(drop_schema, schema)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(run_id=ID, session=ID, texts=st.lists(TEXT, min_size=8, max_size=8))
def test_any_valid_text_round_trips(
    backend: tuple[BlockingPortal, Storage], run_id: str, session: str, texts: list[str]
) -> None:
    portal, store = backend
    name, content, error, reason, first, second, arguments, tool = texts
    call = ToolCall(id=run_id, function=ToolCallFunction(name=tool, arguments=arguments))
    written = RunOutput(
        run_id=run_id,
        agent_id=session,
        agent_name=name,
        session_id=session,
        status=RunStatus.cancelled,
        content=content,
        messages=[
            Message(role="user", content=first),
            Message(role="assistant", content=second, tool_calls=[call], interrupted=True),
        ],
        cancel_reason=reason,
        error=error,
        created_at=1_700_000_000,
    )
    portal.call(store.finish_run, written)
    assert portal.call(store.get_run, run_id) == written
    assert written in portal.call(lambda: store.list_runs(session_id=session))

"""A caller-chosen run id never touches another run: not a live one, not a stored one."""

from __future__ import annotations

import functools
from pathlib import Path

import anyio
import pytest

from tether import Agent, ConfigurationError, RunEvent, RunStatus
from tether.storage import SqliteStorage
from tether.testing import ScriptedModel

pytestmark = pytest.mark.anyio

WORDS = [f"w{i} " for i in range(50)]


def test_a_blocking_run_with_an_id_in_use_is_refused_without_cancelling_the_live_run() -> None:
    agent = Agent(model=ScriptedModel(WORDS, delay=0.01))
    first = agent.run("first", stream=True, run_id="dup-1")
    assert next(first).event == RunEvent.run_started
    with pytest.raises(ConfigurationError, match="already in use"):
        agent.run("second", run_id="dup-1")
    events = list(first)
    assert first.output is not None
    assert (events[-1].event, first.output.status) == (RunEvent.run_completed, RunStatus.completed)
    assert first.output.content == "".join(WORDS)


async def test_reusing_the_id_of_a_stored_run_never_overwrites_it(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "runs.db")
    try:
        first = await Agent(model=ScriptedModel(["one"]), storage=storage).arun("a", run_id="same")
        assert first.status is RunStatus.completed
        again = Agent(model=ScriptedModel(["two"]), storage=storage)
        with pytest.raises(ConfigurationError, match="already used by a stored run"):
            await again.arun("b", run_id="same")
        with pytest.raises(ConfigurationError, match="already used by a stored run"):
            await anyio.to_thread.run_sync(functools.partial(again.run, "c", run_id="same"))
        stream = again.arun("d", stream=True, run_id="same")  # a stream cannot raise at the call: it ends
        events = [event async for event in stream]
        assert [e.event for e in events] == [RunEvent.run_started, RunEvent.run_error]
        assert events[-1].error == "run id 'same' is already used by a stored run"  # type: ignore[attr-defined]
        stored = await again.aget_run("same")
        assert stored is not None and (stored.status, stored.content) == (RunStatus.completed, "one")
        assert again.model.calls == []  # type: ignore[attr-defined]
    finally:
        await storage.aclose()

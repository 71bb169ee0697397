"""A cancel that overtakes the start, through Redis (issue 13): ``early:<run>``, read with the entry write."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tether import Agent, RunEvent, RunStatus
from tether._run import registry
from tether.distributed import RedisCancellation, RemoteOutcome, _exchange
from tether.testing import ScriptedModel

pytestmark = pytest.mark.anyio


@pytest.fixture
def attached(redis_url: str, prefix: str) -> Iterator[RedisCancellation]:
    remote = RedisCancellation(redis_url, prefix=prefix, heartbeat_interval=0.2).attach()
    yield remote
    remote.detach()


@pytest.fixture
def reader(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


async def test_a_cancel_kept_in_redis_stops_the_run_that_registers_later(
    attached: RedisCancellation, reader: redis.Redis, prefix: str
) -> None:
    model = ScriptedModel(["never"])
    agent = Agent(name="late", model=model)
    assert await agent.acancel_run("er-1", "before the start") is False
    assert len(registry._early) == 0, "kept in Redis only (the run may start in any worker)"
    kept = json.loads(reader.get(f"{prefix}early:er-1"))  # type: ignore[arg-type]
    assert (kept["run_id"], kept["agent_id"], kept["reason"], kept["mode"]) == (
        "er-1",
        "late",
        "before the start",
        "immediate",
    )
    assert 59_000 < reader.pttl(f"{prefix}early:er-1") <= 60_000  # the registry's cancel_memory
    events = [event async for event in agent.arun("hi", stream=True, run_id="er-1")]
    assert [event.event for event in events] == [RunEvent.run_started, RunEvent.run_cancelled]
    assert (events[-1].source, events[-1].reason) == ("user", "before the start")  # type: ignore[attr-defined]
    assert model.calls == []
    assert reader.exists(f"{prefix}early:er-1") == 0, "read and removed with the entry write"


async def test_the_remotes_own_cancel_memory_and_zero(
    redis_url: str, reader: redis.Redis, prefix: str
) -> None:
    remote = await RedisCancellation(redis_url, prefix=prefix, cancel_memory=5).aattach()
    agent = Agent(name="any", model=ScriptedModel())
    try:
        assert await agent.acancel_run("short-1") is False
        assert 4_000 < reader.pttl(f"{prefix}early:short-1") <= 5_000
        remote.cancel_memory = 0
        assert await agent.acancel_run("none-1") is False
        assert reader.exists(f"{prefix}early:none-1") == 0
    finally:
        await remote.adetach()


async def test_no_early_cancel_for_another_agents_live_run(
    attached: RedisCancellation, reader: redis.Redis, prefix: str
) -> None:
    # A live owner (its beat written): otherwise a heartbeat's sweep may remove the entry first.
    reader.set(f"{prefix}owner:elsewhere", b'{"interval": 30, "ttl": 60}', ex=60)
    reader.hset(f"{prefix}runs", "theirs-1", json.dumps({"owner": "elsewhere", "agent": "theirs"}))
    assert await Agent(name="mine", model=ScriptedModel()).acancel_run("theirs-1") is False
    assert reader.exists(f"{prefix}early:theirs-1") == 0


@pytest.mark.parametrize(
    "junk",
    [
        b"not json",
        b'{"id": 3}',
        b'{"id": "x", "run_id": "another-run", "reason": "not for this run"}',
        b'{"id": "x", "run_id": "junk-1", "agent_id": "someone-else"}',
    ],
)
async def test_garbage_kept_as_an_early_cancel_is_logged_and_skipped(
    attached: RedisCancellation,
    reader: redis.Redis,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
    junk: bytes,
) -> None:
    reader.set(f"{prefix}early:junk-1", junk)
    model = ScriptedModel(["ran"])
    out = await Agent(name="plain", model=model).arun("hi", run_id="junk-1")
    assert (out.status, out.content, len(model.calls)) == (RunStatus.completed, "ran", 1)
    assert reader.exists(f"{prefix}early:junk-1") == 0
    logged = [r.getMessage() for r in caplog.records if r.name == "tether.distributed"]
    if b"someone-else" in junk:
        assert logged == []  # well-formed: meant for another agent's run
    elif b"another-run" in junk:
        assert logged == [f"skipped an early cancel at {prefix}early:junk-1 for another run (another-run)"]
    else:
        assert len(logged) == 1 and logged[0].startswith(
            f"skipped a malformed Request at {prefix}early:junk-1"
        )
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_a_run_that_registers_while_the_cancel_is_kept_gets_it_delivered(
    attached: RedisCancellation, reader: redis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race: the owner's GETDEL ran before the canceller's SET; the canceller's second read sees the
    entry and delivers the cancel as to any live run (and removes ``early:<run>``)."""
    agent = Agent(name="racer", model=ScriptedModel(["a "], stall=30, stall_at=1))
    stream = agent.arun("go", stream=True, run_id="race-1")
    async for event in stream:
        if event.event == RunEvent.run_content:
            break
    entry = reader.hget(f"{prefix}runs", "race-1")
    reader.hdel(f"{prefix}runs", "race-1")  # the canceller's first read finds no entry...

    async def registers_meanwhile(client: Any, keys: Any, run_id: str, settle: float) -> None:
        reader.hset(f"{prefix}runs", run_id, entry)  # ...then the run registers (its GETDEL found nothing)

    monkeypatch.setattr(_exchange, "_read_again_after_a_restart", registers_meanwhile)
    outcome = await attached.cancel("race-1", agent_id="racer", reason="raced", mode="immediate", grace=None)
    assert outcome is RemoteOutcome.cancelled
    assert reader.exists(f"{prefix}early:race-1") == 0
    rest = [event async for event in stream]
    assert [event.event for event in rest] == [RunEvent.run_cancelled]
    assert (rest[-1].source, rest[-1].reason) == ("remote", "raced")  # type: ignore[attr-defined]

"""A cancel that overtakes the start (issue 13): kept for the run that registers with its id, in-process."""

from __future__ import annotations

import anyio
import pytest

import tether
from tether import Agent, ConfigurationError, RunEvent, RunStatus
from tether._run import registry
from tether._run._early import EarlyCancel, EarlyCancels
from tether.testing import ScriptedModel

pytestmark = pytest.mark.anyio


def kinds(events: list[tether.BaseRunEvent]) -> list[RunEvent]:
    return [event.event for event in events]


async def test_a_run_started_after_its_cancel_starts_cancelled_and_never_calls_the_model() -> None:
    model = ScriptedModel(["never"])
    agent = Agent(name="late", model=model)
    assert agent.cancel_run("r1", "too late") is False  # the answer stays: nothing was stopped
    events = [event async for event in agent.arun("hi", stream=True, run_id="r1")]
    assert kinds(events) == [RunEvent.run_started, RunEvent.run_cancelled]
    terminal = events[-1]
    assert (terminal.reason, terminal.source, terminal.content) == ("too late", "user", "")  # type: ignore[attr-defined]
    assert model.calls == []
    assert len(registry._early) == 0, "applied once, then forgotten"
    out = await agent.arun("hi", run_id="r1")  # (no storage: the id may be used again)
    assert out.status is RunStatus.completed, "a run that just ended is no cancel target"


def test_the_blocking_api_starts_cancelled_too() -> None:
    model = ScriptedModel(["never"])
    agent = Agent(name="late", model=model)
    assert agent.cancel_run("b1", "too late") is False
    assert kinds(list(agent.run("hi", stream=True, run_id="b1"))) == [
        RunEvent.run_started,
        RunEvent.run_cancelled,
    ]
    assert tether.cancel_run("b2", reason="any agent's") is False
    out = agent.run("hi", run_id="b2")
    assert (out.status, out.cancel_reason, out.cancel_source, out.content) == (
        RunStatus.cancelled,
        "any agent's",
        "user",
        "",
    )
    assert model.calls == []


async def test_a_cancel_that_named_an_agent_leaves_another_agents_run_alone() -> None:
    mine, theirs = ScriptedModel(["mine"]), ScriptedModel(["theirs"])
    agent, other = Agent(name="mine", model=mine), Agent(name="theirs", model=theirs)
    assert await agent.acancel_run("shared-1", "stop mine") is False
    out = await other.arun("hi", run_id="shared-1")
    assert (out.status, out.content) == (RunStatus.completed, "theirs")
    # (that run ended just now: a cancel for its id would not be kept now; the one kept for "mine" is)
    out = await agent.arun("hi", run_id="shared-1")
    assert (out.status, out.cancel_reason, out.cancel_source) == (RunStatus.cancelled, "stop mine", "user")
    assert len(mine.calls) == 0 and len(theirs.calls) == 1


async def test_a_remembered_cancel_expires_after_cancel_memory() -> None:
    registry.cancel_memory = 0.2
    agent = Agent(name="patient", model=ScriptedModel(["ok"]))
    assert agent.cancel_run("e1", "too early") is False
    await anyio.sleep(0.6)  # three times the memory
    out = await agent.arun("hi", run_id="e1")
    assert (out.status, out.content) == (RunStatus.completed, "ok")


async def test_cancel_memory_zero_keeps_nothing_and_a_bad_value_is_refused() -> None:
    agent = Agent(name="forgetful", model=ScriptedModel(["ok"]))
    assert agent.cancel_run("z1") is False
    registry.cancel_memory = 0  # also forgets what was kept
    assert agent.cancel_run("z1") is False
    assert len(registry._early) == 0
    assert (await agent.arun("hi", run_id="z1")).status is RunStatus.completed
    for bad in (-1, float("nan"), float("inf"), "60", True):
        with pytest.raises(ConfigurationError, match="cancel_memory"):
            registry.cancel_memory = bad  # type: ignore[assignment]
    assert registry.cancel_memory == 0


@pytest.mark.parametrize("bad", ["has space", "x" * 129, ""])
async def test_a_malformed_run_id_is_not_remembered_and_still_refused(bad: str) -> None:
    agent = Agent(name="strict", model=ScriptedModel(["ok"]))
    assert agent.cancel_run(bad, "stop") is False
    assert len(registry._early) == 0
    with pytest.raises(ConfigurationError, match="invalid run id"):
        agent.arun("hi", stream=True, run_id=bad)


def test_only_a_users_cancel_is_remembered() -> None:
    for source in ("remote", "shutdown", "consumer", "timeout", "outer", "parent"):
        assert registry.answer_cancel("s1", reason="x", source=source) is None  # type: ignore[arg-type]
    assert len(registry._early) == 0
    assert registry.answer_cancel("s1", reason="x") is None
    assert len(registry._early) == 1


def test_the_memory_is_bounded_merges_repeats_and_purges_expired_ids() -> None:
    kept = EarlyCancels(capacity=3)

    def cancel(expires: float, mode: str = "immediate", grace: float | None = None) -> EarlyCancel:
        return EarlyCancel("why", None, mode, grace, expires)  # type: ignore[arg-type]

    for index in range(4):
        assert kept.remember(f"id-{index}", cancel(100), now=0) is True
    assert len(kept) == 3 and kept.take("id-0", "a", now=0) is None, "the oldest is dropped"
    assert kept.remember("id-1", cancel(100, "after_turn", 5.0), now=0)  # merged: stronger mode wins
    assert kept.take("id-1", "a", now=0) == cancel(100)
    assert kept.remember("g", cancel(100, "after_turn", 5.0), now=0)
    assert kept.remember("g", EarlyCancel("later", None, "after_turn", 2.0, 200), now=0)
    assert kept.take("g", "a", now=0) == EarlyCancel("why", None, "after_turn", 2.0, 200)
    assert kept.remember("soon", cancel(10), now=0)
    assert kept.take("soon", "a", now=10) is None, "expired"
    fresh = EarlyCancels(capacity=3)
    assert fresh.remember("first", cancel(10), now=0) and fresh.remember("second", cancel(20), now=0)
    assert fresh.remember("third", cancel(100), now=15)
    assert len(fresh) == 2, "the expired one was purged"
    assert fresh.take("second", "a", now=15) == cancel(20)
    kept.ended("done", now=0, seconds=5)
    assert kept.remember("done", cancel(100), now=1) is False
    assert kept.remember("done", cancel(100), now=6) is True

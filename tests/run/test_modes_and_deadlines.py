"""Cancel modes (immediate, after_turn, grace) and deadlines; reasons and sources travel to the output."""

from __future__ import annotations

import time

import anyio
import pytest

import tether
from tether import Agent, ConfigurationError, RunEvent, RunStatus
from tether.testing import Reply, ScriptedModel, ScriptedToolCall

pytestmark = pytest.mark.anyio

WORDS = [f"w{i} " for i in range(20)]


async def test_after_turn_lets_the_current_response_finish() -> None:
    model = ScriptedModel(WORDS, delay=0.005)
    agent = Agent(model=model)
    stream = agent.arun("go", stream=True)
    events = []
    async for event in stream:
        events.append(event)
        if event.event == RunEvent.run_content and event.content == "w2 ":
            assert agent.cancel_run(stream.run_id, reason="wrap up", mode="after_turn") is True
    assert events[-1].event == RunEvent.run_cancelled
    assert events[-1].content == "".join(WORDS), "the whole current response was kept"
    assert (events[-1].reason, events[-1].source) == ("wrap up", "user")  # type: ignore[attr-defined]
    assert stream.output is not None and stream.output.messages[-1].interrupted is False


async def test_after_turn_lets_tools_finish_and_stops_before_the_next_model_request() -> None:
    async def fetch(n: int) -> str:
        await anyio.sleep(0.2)
        return f"page {n}"

    calls = [ScriptedToolCall("fetch", '{"n": 1}', id="a"), ScriptedToolCall("fetch", '{"n": 2}', id="b")]
    model = ScriptedModel(
        turns=[Reply(chunks=["Fetching. "], tool_calls=calls), Reply(chunks=["Never said."])]
    )
    agent = Agent(model=model, tools=[fetch])
    stream = agent.arun("go", stream=True)
    async for event in stream:
        if event.event == RunEvent.tool_call_started:
            tether.cancel_run(stream.run_id, reason="after this", mode="after_turn")
    out = stream.output
    assert out is not None and out.status is RunStatus.cancelled and out.cancel_reason == "after this"
    assert len(model.calls) == 1
    assert out.content == "Fetching. "
    assert [(m.role, m.content) for m in out.messages[-2:]] == [("tool", "page 1"), ("tool", "page 2")]


async def test_grace_escalates_a_graceful_stop_to_immediate() -> None:
    async def fetch() -> str:
        await anyio.sleep(5)
        return "never"

    model = ScriptedModel(turns=[Reply(chunks=[], tool_calls=[ScriptedToolCall("fetch", "{}", id="a")])])
    agent = Agent(model=model, tools=[fetch])
    stream = agent.arun("go", stream=True)
    async for event in stream:
        if event.event == RunEvent.tool_call_started:
            started = time.perf_counter()
            agent.cancel_run(stream.run_id, reason="soft then hard", mode="after_turn", grace=0.15)
    elapsed = time.perf_counter() - started
    assert 0.14 <= elapsed < 0.6
    out = stream.output
    assert out is not None and out.status is RunStatus.cancelled and out.cancel_reason == "soft then hard"
    assert out.messages[-1].content == "Cancelled: soft then hard"


async def test_an_immediate_cancel_hardens_a_pending_graceful_one() -> None:
    model = ScriptedModel(WORDS, delay=0.05)
    agent = Agent(model=model)
    stream = agent.arun("go", stream=True)
    async for event in stream:
        if event.event == RunEvent.run_content and event.content == "w1 ":
            agent.cancel_run(stream.run_id, reason="first", mode="after_turn")
            agent.cancel_run(stream.run_id, reason="second")
    out = stream.output
    assert out is not None and out.content == "w0 w1 " and out.cancel_reason == "first"


def test_bad_mode_and_grace_are_clear_errors() -> None:
    agent = Agent(model=ScriptedModel())
    with pytest.raises(ConfigurationError, match="invalid cancel mode 'later'"):
        agent.cancel_run("x", mode="later")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="grace must be"):
        tether.cancel_run("x", mode="after_turn", grace=-1)
    with pytest.raises(ConfigurationError, match="timeout must be"):
        Agent(model=ScriptedModel(), timeout=0)


async def test_run_timeout_cancels_with_reason_and_source_timeout_keeping_partial_content() -> None:
    agent = Agent(model=ScriptedModel(WORDS, stall=5, stall_at=3))
    stream = agent.arun("go", stream=True, timeout=0.2)
    started = time.perf_counter()
    events = [e async for e in stream]
    assert 0.19 <= time.perf_counter() - started < 0.6
    terminal = events[-1]
    assert terminal.event == RunEvent.run_cancelled
    assert (terminal.reason, terminal.source, terminal.content) == ("timeout", "timeout", "w0 w1 w2 ")  # type: ignore[attr-defined]
    assert stream.output is not None
    assert (stream.output.cancel_reason, stream.output.cancel_source) == ("timeout", "timeout")


async def test_agent_timeout_is_the_default_and_a_run_may_override_it() -> None:
    agent = Agent(model=ScriptedModel(["a", "b"], stall=0.3, stall_at=1), timeout=0.1)
    first = await agent.arun("go")
    assert first.status is RunStatus.cancelled and first.cancel_source == "timeout" and first.content == "a"
    second = await agent.arun("go", timeout=2)
    assert second.status is RunStatus.completed and second.content == "ab"


async def test_a_run_that_finishes_in_time_is_not_touched_by_its_deadline() -> None:
    agent = Agent(model=ScriptedModel(["quick"]), timeout=0.05)
    out = await agent.arun("go")
    assert out.status is RunStatus.completed
    await anyio.sleep(0.1)  # the timer was cancelled: nothing fires on a finished run
    assert out.status is RunStatus.completed and tether.active_runs() == []

"""Cancellation contract, points 1, 2, 3, 8 and 9 (see issue 2), on the scripted model."""

from __future__ import annotations

import asyncio
import random
import threading

import anyio
import pytest

import tether
from tether import Agent, RunEvent, RunStatus, active_runs, cancel_run
from tether._run import registry
from tether.testing import ScriptedModel

pytestmark = pytest.mark.anyio

WORDS = [f"w{i} " for i in range(40)]


def texts(events: list[tether.BaseRunEvent]) -> str:
    return "".join(e.content or "" for e in events if e.event == RunEvent.run_content)


async def test_run_is_a_task_in_the_registry_and_cancel_interrupts_a_stall() -> None:
    model = ScriptedModel(["never"], stall=30)
    agent = Agent(name="Staller", model=model)
    stream = agent.arun("hi", stream=True)
    assert active_runs() == [stream.run_id]
    assert stream.handle.status is RunStatus.pending
    first = await stream.__anext__()
    assert first.event == RunEvent.run_started
    assert isinstance(stream.handle.task, asyncio.Task)
    assert stream.handle.status is RunStatus.running
    assert agent.cancel_run(stream.run_id, reason="stop") is True
    with anyio.fail_after(1):
        rest = [event async for event in stream]
    assert [e.event for e in rest] == [RunEvent.run_cancelled]
    assert model.open_streams == 0
    assert active_runs() == []


async def test_completed_run_events_and_output() -> None:
    agent = Agent(name="Teller", model=ScriptedModel(["Once", " upon", " a time."]), instructions="Be brief.")
    stream = agent.arun("Tell me", stream=True, session_id="s-1")
    events = [e async for e in stream]
    assert [e.event for e in events] == [
        RunEvent.run_started,
        RunEvent.run_content,
        RunEvent.run_content,
        RunEvent.run_content,
        RunEvent.run_completed,
    ]
    assert [e.status for e in events] == [RunStatus.running] * 4 + [RunStatus.completed]
    assert {e.run_id for e in events} == {stream.run_id}
    assert {(e.agent_id, e.agent_name, e.session_id) for e in events} == {("teller", "Teller", "s-1")}
    assert events[-1].content == "Once upon a time." == texts(events)
    out = stream.output
    assert out is not None and out.status is RunStatus.completed and out.content == "Once upon a time."
    assert [(m.role, m.content, m.interrupted) for m in out.messages] == [
        ("system", "Be brief.", False),
        ("user", "Tell me", False),
        ("assistant", "Once upon a time.", False),
    ]
    assert out.metrics.duration is not None and out.metrics.time_to_first_token is not None
    assert out.metrics.output_tokens == 4


async def test_await_arun_returns_output() -> None:
    agent = Agent(name="a", model=ScriptedModel(["x", "y"]))
    out = await agent.arun("go", run_id="my-run-1")
    assert (out.run_id, out.status, out.content, out.agent_id) == ("my-run-1", RunStatus.completed, "xy", "a")


@pytest.mark.parametrize("cancel_at", [0, 1, 5, 38])
async def test_cancel_mid_stream_keeps_exactly_the_delivered_chunks(cancel_at: int) -> None:
    agent = Agent(name="a", model=ScriptedModel(WORDS, delay=0.002))
    stream = agent.arun("go", stream=True)
    events = []
    seen = 0
    async for event in stream:
        events.append(event)
        if event.event == RunEvent.run_content:
            if seen == cancel_at:
                assert tether.cancel_run(stream.run_id, reason="enough") is True
            seen += 1
    terminal = events[-1]
    assert [e.is_terminal for e in events].count(True) == 1 and terminal.is_terminal
    assert terminal.event == RunEvent.run_cancelled
    # The chunk in hand when the cancel landed was delivered, and nothing after it.
    assert texts(events) == "".join(WORDS[: cancel_at + 1])
    assert terminal.content == texts(events) == stream.output.content  # type: ignore[union-attr]
    assert (terminal.reason, terminal.source) == ("enough", "user")  # type: ignore[attr-defined]
    out = stream.output
    assert out is not None and (out.cancel_reason, out.cancel_source) == ("enough", "user")
    assert out.messages[-1].role == "assistant" and out.messages[-1].interrupted is True
    assert out.messages[-1].content == terminal.content


async def test_cancel_before_first_chunk_still_emits_started_then_cancelled() -> None:
    agent = Agent(name="a", model=ScriptedModel(["never"]))
    stream = agent.arun("go", stream=True, run_id="early-1")
    assert cancel_run("early-1", reason="changed my mind") is True  # pending: not even started
    events = [e async for e in stream]
    assert [e.event for e in events] == [RunEvent.run_started, RunEvent.run_cancelled]
    assert events[-1].content == "" and events[-1].reason == "changed my mind"  # type: ignore[attr-defined]
    assert agent.model.calls == []  # type: ignore[attr-defined]


async def test_cancel_is_idempotent_first_reason_wins_and_ownership_is_checked() -> None:
    agent = Agent(name="owner", model=ScriptedModel(["x"], stall=30))
    other = Agent(name="other", model=ScriptedModel(["y"]))
    stream = agent.arun("go", stream=True)
    await stream.__anext__()
    assert other.cancel_run(stream.run_id) is False  # not its run
    assert agent.cancel_run("no-such-run") is False
    assert agent.cancel_run(stream.run_id, reason="first") is True
    assert await agent.acancel_run(stream.run_id, reason="second") is True  # already being cancelled
    assert cancel_run(stream.run_id, reason="third") is True
    events = [e async for e in stream]
    assert events[-1].reason == "first" and events[-1].source == "user"  # type: ignore[attr-defined]
    assert agent.cancel_run(stream.run_id) is False  # finished
    assert cancel_run(stream.run_id) is False


async def test_cancel_from_another_thread() -> None:
    agent = Agent(name="a", model=ScriptedModel(WORDS, delay=0.01))
    stream = agent.arun("go", stream=True)
    results: list[bool] = []
    events = []
    async for event in stream:
        events.append(event)
        if event.event == RunEvent.run_content and not results:
            thread = threading.Thread(
                target=lambda: results.append(agent.cancel_run(stream.run_id, "thread"))
            )
            thread.start()
            await anyio.to_thread.run_sync(thread.join)
    assert results == [True]
    assert events[-1].event == RunEvent.run_cancelled and events[-1].reason == "thread"  # type: ignore[attr-defined]
    assert events[-1].content == texts(events)


async def test_duplicate_and_invalid_ids_are_clear_errors() -> None:
    agent = Agent(name="a", model=ScriptedModel(["x"], stall=30))
    stream = agent.arun("go", stream=True, run_id="dup")
    with pytest.raises(tether.ConfigurationError, match="'dup' is already in use"):
        agent.arun("again", stream=True, run_id="dup")
    with pytest.raises(tether.ConfigurationError, match="invalid run id"):
        agent.arun("x", stream=True, run_id="has space")
    with pytest.raises(tether.ConfigurationError, match="unknown run option.s. sesion_id; use run_id"):
        agent.arun("x", stream=True, sesion_id="typo")  # type: ignore[call-overload]
    with pytest.raises(tether.ConfigurationError, match="input must be a str"):
        agent.arun(123, stream=True)  # type: ignore[call-overload]
    await stream.aclose()
    assert active_runs() == []


@pytest.mark.timeout(120)
async def test_registry_never_leaks_after_ten_thousand_runs_with_random_cancels() -> None:
    rng = random.Random(1234)
    model = ScriptedModel(["a", "b", "c", "d"], delay=0.0005)
    agent = Agent(name="bulk", model=model)
    statuses: dict[RunStatus, int] = {}

    async def one(index: int) -> None:
        stream = agent.arun("go", stream=True, run_id=f"bulk-{index}")
        cancel_after = rng.choice([None, 0, 1, 2, 3])
        count = 0
        async for event in stream:
            if event.event == RunEvent.run_content:
                if count == cancel_after:
                    agent.cancel_run(stream.run_id)
                count += 1
        assert stream.output is not None
        # Even at the last chunk a cancel is in time: a run completes only once its consumer has
        # taken every event and asks for the next.
        expected = RunStatus.cancelled if cancel_after is not None else RunStatus.completed
        assert stream.output.status is expected
        statuses[expected] = statuses.get(expected, 0) + 1

    for batch in range(20):
        async with anyio.create_task_group() as tg:
            for i in range(500):
                tg.start_soon(one, batch * 500 + i)
    assert sum(statuses.values()) == 10_000
    assert statuses[RunStatus.cancelled] > 7000 and statuses[RunStatus.completed] > 1500
    assert active_runs() == [] and registry.handles() == []
    assert model.open_streams == 0

"""Cancellation inside tools: async at once, sync via the token, shielded to completion, history repair."""

from __future__ import annotations

import logging
import threading
import time

import anyio
import pytest

from tether import Agent, RunContext, RunEvent, RunStatus, tool
from tether.models.openai import OpenAIChat
from tether.testing import LoopbackServer, Reply, ScriptedModel, ScriptedToolCall

pytestmark = pytest.mark.anyio

CALL = [ScriptedToolCall("work", "{}", id="call_w")]


def tool_then_answer(answer: str = "Finished.") -> ScriptedModel:
    return ScriptedModel(turns=[Reply(chunks=["On it. "], tool_calls=CALL), Reply(chunks=[answer])])


async def cancel_when_tool_starts(
    agent: Agent, *, reason: str = "stop", **kwargs: object
) -> tuple[list, float, float]:  # type: ignore[type-arg]
    stream = agent.arun("go", stream=True)
    events = []
    cancelled_at = ended_at = 0.0
    async for event in stream:
        events.append(event)
        if event.event == RunEvent.tool_call_started:
            await anyio.sleep(0.05)  # the tool is now running
            assert agent.cancel_run(stream.run_id, reason=reason, **kwargs) is True  # type: ignore[arg-type]
            cancelled_at = time.perf_counter()
        if event.is_terminal:
            ended_at = time.perf_counter()
    return events, cancelled_at, ended_at


async def test_async_tool_is_cancelled_at_once_and_the_history_is_repaired() -> None:
    seen: list[str] = []

    async def work() -> str:
        try:
            await anyio.sleep(5)
        except BaseException as exc:
            seen.append(type(exc).__name__)
            raise
        return "never"

    agent = Agent(model=tool_then_answer(), tools=[work])
    events, cancelled, ended = await cancel_when_tool_starts(agent)
    assert ended - cancelled < 0.05
    assert seen == ["CancelledError"]
    assert [e.event for e in events][-3:] == [
        RunEvent.tool_call_started,
        RunEvent.tool_call_completed,
        RunEvent.run_cancelled,
    ]
    completed = events[-2]
    assert (completed.tool_call_id, completed.error, completed.status) == (
        "call_w",
        "Cancelled: stop",
        RunStatus.cancelled,
    )  # type: ignore[attr-defined]
    assert events[-1].content == "On it. "


async def test_repaired_history_in_the_output() -> None:
    async def work() -> str:
        await anyio.sleep(5)
        return "never"

    agent = Agent(model=tool_then_answer(), tools=[work])
    stream = agent.arun("go", stream=True)
    async for event in stream:
        if event.event == RunEvent.tool_call_started:
            agent.cancel_run(stream.run_id, reason="user pressed stop")
    out = stream.output
    assert out is not None and out.status is RunStatus.cancelled
    assert [(m.role, m.content, m.tool_call_id) for m in out.messages] == [
        ("user", "go", None),
        ("assistant", "On it. ", None),
        ("tool", "Cancelled: user pressed stop", "call_w"),
    ]


async def test_sync_tool_run_ends_at_once_thread_is_told_and_late_result_is_discarded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    observed = threading.Event()
    finished = threading.Event()

    def work(ctx: RunContext) -> str:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not ctx.cancelled:
            time.sleep(0.005)
        if ctx.cancelled:
            observed.set()
        time.sleep(0.05)  # keeps going a little after the cancel, then returns a late result
        finished.set()
        return "late result"

    caplog.set_level(logging.INFO, logger="tether.tools")
    agent = Agent(model=tool_then_answer(), tools=[work])
    events, cancelled, ended = await cancel_when_tool_starts(agent)
    assert ended - cancelled < 0.05, "a sync tool must not hold the run"
    assert await anyio.to_thread.run_sync(observed.wait, 2), "the thread is told through RunContext"
    assert await anyio.to_thread.run_sync(finished.wait, 2)
    await anyio.sleep(0.05)
    assert "late result" not in [getattr(e, "content", None) for e in events]
    assert "discarded the late result of tool work" in caplog.text


async def test_raise_if_cancelled_in_a_sync_tool() -> None:
    raised: list[str] = []

    def work(ctx: RunContext) -> str:
        for _ in range(500):
            try:
                ctx.raise_if_cancelled()
            except Exception as exc:
                raised.append(f"{type(exc).__name__}: {exc}")
                raise
            time.sleep(0.01)
        return "done"

    agent = Agent(model=tool_then_answer(), tools=[work])
    events, _, _ = await cancel_when_tool_starts(agent, reason="enough")
    for _ in range(100):
        if raised:
            break
        await anyio.sleep(0.01)
    assert raised and raised[0].startswith("ToolCancelledError: run ") and raised[0].endswith("enough")
    assert events[-1].event == RunEvent.run_cancelled


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_shielded_tool_runs_to_completion_and_its_result_is_recorded(kind: str) -> None:
    charged: list[str] = []
    if kind == "async":

        @tool(shield=True, name="work")
        async def work() -> str:
            await anyio.sleep(0.3)
            charged.append("yes")
            return "charged 10 EUR"

    else:

        @tool(shield=True, name="work")
        def work() -> str:
            time.sleep(0.3)
            charged.append("yes")
            return "charged 10 EUR"

    model = tool_then_answer()
    agent = Agent(model=model, tools=[work])
    stream = agent.arun("pay", stream=True)
    events = []
    async for event in stream:
        events.append(event)
        if event.event == RunEvent.tool_call_started:
            cancelled = time.perf_counter()
            agent.cancel_run(stream.run_id, reason="stop")
    assert time.perf_counter() - cancelled >= 0.25, "the shielded tool finished first"
    assert charged == ["yes"]
    completed = [e for e in events if e.event == RunEvent.tool_call_completed]
    assert [(e.content, e.error) for e in completed] == [("charged 10 EUR", None)]  # type: ignore[attr-defined]
    assert events[-1].event == RunEvent.run_cancelled
    out = stream.output
    assert out is not None and out.messages[-1].content == "charged 10 EUR"
    assert len(model.calls) == 1, "no model request after the cancel"


async def test_a_call_whose_start_was_read_completes_even_if_its_completion_was_unread() -> None:
    async def work() -> str:
        await anyio.sleep(0.01)  # returns after its start was read
        return "found"

    agent = Agent(model=tool_then_answer(), tools=[work])
    stream = agent.arun("go", stream=True)
    events = []
    async for event in stream:
        events.append(event)
        if event.event == RunEvent.tool_call_started:
            await anyio.sleep(0.2)  # the tool has returned; the run waits for this reader to catch up
            assert agent.cancel_run(stream.run_id, reason="stop") is True
            await anyio.sleep(0.1)  # the run ends before this reader takes the completion
    completed = [e for e in events if e.event == RunEvent.tool_call_completed]
    assert [(e.tool_call_id, e.content, e.error) for e in completed] == [("call_w", "found", None)]  # type: ignore[attr-defined]
    assert events[-1].event == RunEvent.run_cancelled


async def test_repaired_history_is_accepted_by_a_server_that_checks_tool_results(
    loopback_server: LoopbackServer, openai_model: OpenAIChat
) -> None:
    async def work() -> str:
        await anyio.sleep(5)
        return "never"

    loopback_server.push(Reply(chunks=["Looking. "], tool_calls=CALL), Reply(chunks=["Fine, ", "stopping."]))
    agent = Agent(model=openai_model, tools=[work])
    stream = agent.arun("go", stream=True)
    async for event in stream:
        if event.event == RunEvent.tool_call_started:
            agent.cancel_run(stream.run_id, reason="stop")
    first = stream.output
    assert first is not None and first.status is RunStatus.cancelled

    second = await agent.arun("what happened?", history=first.messages)
    assert second.status is RunStatus.completed and second.content == "Fine, stopping."
    sent = loopback_server.requests[-1].body["messages"]
    assert sent[-2:] == [
        {"role": "tool", "content": "Cancelled: stop", "tool_call_id": "call_w"},
        {"role": "user", "content": "what happened?"},
    ]

    # Control: the same history without the synthesized result is rejected by the server.
    broken = [m for m in first.messages if m.role != "tool"]
    rejected = await agent.arun("what happened?", history=broken)
    assert rejected.status is RunStatus.error and rejected.error_type == "ModelStatusError"
    assert "HTTP 400" in (rejected.error or "") and "call_w" in (rejected.error or "")

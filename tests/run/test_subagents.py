"""Sub-agents: a child run of its own, cancelled first with the parent; cancelled alone, a tool error."""

from __future__ import annotations

import anyio
import pytest

from tether import Agent, RunEvent, RunStatus, ToolCallCompletedEvent
from tether._run import RunHandle, registry
from tether._run._lifecycle import Phase
from tether.testing import Reply, ScriptedModel, ScriptedToolCall

pytestmark = pytest.mark.anyio


def researcher(stall: float = 5) -> Agent:
    return Agent(
        name="Researcher",
        description="Finds facts.",
        model=ScriptedModel(["Fact: "], stall=stall, stall_at=1),
    )


def lead(child: Agent, answer: str = "Summary.") -> Agent:
    call = ScriptedToolCall("ask_researcher", '{"input": "find facts"}', id="call_r")
    model = ScriptedModel(turns=[Reply(chunks=["Asking. "], tool_calls=[call]), Reply(chunks=[answer])])
    return Agent(name="Lead", model=model, tools=[child.as_tool()])


async def child_of(parent_run_id: str) -> RunHandle:
    for _ in range(200):
        children = [h for h in registry.handles() if h.parent_run_id == parent_run_id]
        if children:
            return children[0]
        await anyio.sleep(0.005)
    raise AssertionError("no child run appeared")


def test_as_tool_spec() -> None:
    spec = researcher().as_tool().spec()["function"]
    assert spec["name"] == "ask_researcher" and spec["description"] == "Finds facts."
    assert spec["parameters"]["properties"] == {
        "input": {"type": "string", "description": "What to ask the agent, in plain language."}
    }


async def test_cancelling_the_parent_cancels_the_child_first() -> None:
    child_agent = researcher()
    parent = lead(child_agent)
    stream = parent.arun("report", stream=True)
    order: list[str] = []
    async for event in stream:
        if event.event == RunEvent.tool_call_started:
            child = await child_of(stream.run_id)
            assert child.parent_run_id == stream.run_id and child.agent_id == "researcher"
            assert parent.cancel_run(stream.run_id, reason="stop all") is True
            assert child.cancel_requested and child.cancel_source == "parent"
        if event.is_terminal:
            order.append("parent" if child.life.phase is Phase.ENDED else "parent-before-child")
    assert order == ["parent"], "the child ended before the parent's terminal event"
    assert (child.status, child.cancel_source, child.cancel_reason) == (
        RunStatus.cancelled,
        "parent",
        "stop all",
    )
    out = stream.output
    assert out is not None and (out.status, out.cancel_source) == (RunStatus.cancelled, "user")
    assert out.messages[-1].content == "Cancelled: stop all"
    assert registry.handles() == []


async def test_cancelling_the_child_alone_gives_the_parent_a_tool_error_and_it_goes_on() -> None:
    child_agent = researcher()
    parent = lead(child_agent, answer="The researcher was stopped; here is what I know.")
    stream = parent.arun("report", stream=True)
    events = []
    async for event in stream:
        events.append(event)
        if event.event == RunEvent.tool_call_started:
            child = await child_of(stream.run_id)
            assert child_agent.cancel_run(child.run_id, reason="too slow") is True
    completed = [e for e in events if e.event == RunEvent.tool_call_completed]
    assert [(e.tool_name, e.error) for e in completed] == [("ask_researcher", "Cancelled: too slow")]  # type: ignore[attr-defined]
    out = stream.output
    assert out is not None and out.status is RunStatus.completed
    assert out.content == "Asking. The researcher was stopped; here is what I know."
    assert child.status is RunStatus.cancelled and child.cancel_source == "user"


async def test_a_sub_agent_answer_is_the_tool_result() -> None:
    parent = lead(researcher(stall=0))
    out = await parent.arun("report")
    assert out.status is RunStatus.completed
    assert [m.content for m in out.messages if m.role == "tool"] == ["Fact: "]


async def test_after_turn_lets_a_sub_agent_tool_call_finish_and_keeps_its_answer() -> None:
    child = Agent(name="child", model=ScriptedModel([f"c{i} " for i in range(30)], delay=0.01))
    parent = Agent(
        name="parent",
        model=ScriptedModel(
            turns=[
                Reply(chunks=["p "], tool_calls=[ScriptedToolCall("ask_child", '{"input": "go"}')]),
                Reply(chunks=["done"]),
            ]
        ),
        tools=[child.as_tool()],
    )
    stream = parent.arun("x", stream=True)
    completed = []
    async for event in stream:
        if event.event == RunEvent.tool_call_started:
            parent.cancel_run(stream.run_id, "gentle", mode="after_turn")
        elif isinstance(event, ToolCallCompletedEvent):
            completed.append(event.error)
    assert stream.output is not None
    tool_results = [m.content for m in stream.output.messages if m.role == "tool"]
    assert (completed, tool_results) == ([None], ["".join(f"c{i} " for i in range(30))])
    assert stream.output.status is RunStatus.cancelled

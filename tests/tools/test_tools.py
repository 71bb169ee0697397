"""Function tools: schema from the signature, validation, errors as results, concurrency, max_steps."""

from __future__ import annotations

import json
import time
from typing import Annotated

import anyio
import pytest
from pydantic import BaseModel, Field

import tether
from tether import Agent, ConfigurationError, RunContext, RunEvent, RunStatus, tool
from tether.testing import Reply, ScriptedModel, ScriptedToolCall
from tether.tools import Tool

pytestmark = pytest.mark.anyio


def calls(*pairs: tuple[str, str]) -> list[ScriptedToolCall]:
    return [ScriptedToolCall(name, args, id=f"call_{i}") for i, (name, args) in enumerate(pairs)]


def two_turns(*pairs: tuple[str, str], answer: str = "Done.") -> ScriptedModel:
    return ScriptedModel(turns=[Reply(chunks=[], tool_calls=calls(*pairs)), Reply(chunks=[answer])])


def test_schema_comes_from_signature_hints_and_docstring() -> None:
    def search(
        query: str, limit: Annotated[int, Field(ge=1, le=50)] = 10, ctx: RunContext | None = None
    ) -> str:
        """Search the catalogue.

        Args:
            query: Words to look for.
            limit: Most results to return.

        Returns:
            The matches.
        """
        return query

    spec = Tool(search).spec()
    assert spec == {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the catalogue.",
            "parameters": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "query": {"type": "string", "description": "Words to look for."},
                    "limit": {
                        "type": "integer",
                        "default": 10,
                        "minimum": 1,
                        "maximum": 50,
                        "description": "Most results to return.",
                    },
                },
                "required": ["query"],
            },
        },
    }


def test_run_context_parameter_is_hidden_from_the_model() -> None:
    def note(text: str, ctx: RunContext) -> str:
        return text

    made = Tool(note)
    assert made.context_param == "ctx"
    assert list(made.parameters["properties"]) == ["text"]


def test_bad_tool_definitions_are_clear_errors() -> None:
    def spread(*args: int) -> int:
        return 0

    with pytest.raises(ConfigurationError, match=r"\*args and \*\*kwargs"):
        Tool(spread)
    with pytest.raises(ConfigurationError, match="invalid tool name"):
        Tool(lambda: 1)
    with pytest.raises(ConfigurationError, match="two tools are named 'f'"):
        Agent(model=ScriptedModel(), tools=[tool(name="f")(lambda: 1), tool(name="f")(lambda: 2)])
    with pytest.raises(ConfigurationError, match="max_steps"):
        Agent(model=ScriptedModel(), max_steps=0)


async def test_tool_loop_events_messages_and_specs() -> None:
    async def weather(city: str) -> dict[str, object]:
        """Weather for a city."""
        return {"city": city, "sky": "sunny"}

    model = ScriptedModel(
        turns=[
            Reply(chunks=["Checking. "], tool_calls=calls(("weather", '{"city": "Paris"}'))),
            Reply(chunks=["Sunny in Paris."]),
        ]
    )
    agent = Agent(name="w", model=model, tools=[weather])
    stream = agent.arun("Weather in Paris?", stream=True)
    events = [e async for e in stream]
    assert [e.event for e in events] == [
        RunEvent.run_started,
        RunEvent.run_content,
        RunEvent.tool_call_started,
        RunEvent.tool_call_completed,
        RunEvent.run_content,
        RunEvent.run_completed,
    ]
    started, completed = events[2], events[3]
    assert (started.tool_name, started.tool_call_id, started.tool_args) == (
        "weather",
        "call_0",
        {"city": "Paris"},
    )  # type: ignore[attr-defined]
    assert completed.content == '{"city": "Paris", "sky": "sunny"}' and completed.error is None  # type: ignore[attr-defined]
    assert completed.duration is not None and completed.duration >= 0  # type: ignore[attr-defined]
    assert events[-1].content == "Checking. Sunny in Paris."
    out = stream.output
    assert out is not None
    assert [(m.role, m.content, m.tool_call_id) for m in out.messages] == [
        ("user", "Weather in Paris?", None),
        ("assistant", "Checking. ", None),
        ("tool", '{"city": "Paris", "sky": "sunny"}', "call_0"),
        ("assistant", "Sunny in Paris.", None),
    ]
    assert out.messages[1].tool_calls is not None and out.messages[1].tool_calls[0].function.name == "weather"
    assert model.tools_seen[0] == [agent.tools[0].spec()]
    assert [m.role for m in model.calls[1]] == [
        "user",
        "assistant",
        "tool",
    ]  # the second request sees the result


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ('{"a": 1, "b": "x"}', "Error: invalid arguments for add: b: Input should be a valid integer"),
        ('{"a": 1}', "Error: invalid arguments for add: b: Field required"),
        ('{"a": 1, "b": 2, "c": 3}', "Error: invalid arguments for add: c: Extra inputs are not permitted"),
        ("{not json", "Error: invalid arguments for add: not JSON"),
    ],
)
async def test_invalid_arguments_go_back_to_the_model(args: str, expected: str) -> None:
    def add(a: int, b: int) -> int:
        return a + b

    agent = Agent(model=two_turns(("add", args)), tools=[add])
    out = await agent.arun("add")
    assert out.status is RunStatus.completed and out.content == "Done."
    assert out.messages[2].role == "tool" and (out.messages[2].content or "").startswith(expected)


async def test_tool_failures_are_results_not_crashed_runs(caplog: pytest.LogCaptureFixture) -> None:
    def broken(x: int) -> int:
        raise RuntimeError("disk full")

    async def polite(x: int) -> int:
        raise tether.ToolError("no such customer")

    @tool(timeout=0.05)
    async def slow(x: int) -> int:
        await anyio.sleep(5)
        return x

    model = two_turns(("broken", '{"x": 1}'), ("polite", '{"x": 1}'), ("slow", '{"x": 1}'), ("missing", "{}"))
    agent = Agent(model=model, tools=[broken, polite, slow])
    stream = agent.arun("go", stream=True)
    events = [e async for e in stream]
    errors = {e.tool_name: e.error for e in events if e.event == RunEvent.tool_call_completed}  # type: ignore[attr-defined]
    assert errors == {
        "broken": "RuntimeError: disk full",
        "polite": "no such customer",
        "slow": "tool slow timed out after 0.05 s",
        "missing": "unknown tool 'missing'; available tools: broken, polite, slow",
    }
    assert stream.output is not None and stream.output.status is RunStatus.completed
    assert [m.content for m in stream.output.messages if m.role == "tool"] == [
        "Error: RuntimeError: disk full",
        "Error: no such customer",
        "Error: tool slow timed out after 0.05 s",
        "Error: unknown tool 'missing'; available tools: broken, polite, slow",
    ]
    assert "tool broken raised RuntimeError: disk full" in caplog.text


async def test_tool_calls_of_one_response_run_concurrently() -> None:
    async def nap(n: int) -> int:
        await anyio.sleep(0.3)
        return n

    def doze(n: int) -> int:
        time.sleep(0.3)
        return n

    model = two_turns(("nap", '{"n": 1}'), ("nap", '{"n": 2}'), ("doze", '{"n": 3}'), ("doze", '{"n": 4}'))
    agent = Agent(model=model, tools=[nap, doze])
    started = time.monotonic()
    out = await agent.arun("go")
    assert time.monotonic() - started < 0.55, "four 0.3 s tools must overlap"
    assert [m.content for m in out.messages if m.role == "tool"] == ["1", "2", "3", "4"]


async def test_results_are_converted_to_text_and_context_is_given() -> None:
    class Order(BaseModel):
        id: int
        total: float

    def order(id: int) -> Order:
        return Order(id=id, total=9.5)

    def whoami(ctx: RunContext) -> str:
        return f"{ctx.agent_id}/{ctx.run_id}/{ctx.cancelled}"

    agent = Agent(
        name="shop", model=two_turns(("order", '{"id": 7}'), ("whoami", "{}")), tools=[order, whoami]
    )
    out = await agent.arun("go", run_id="ctx-run")
    assert [m.content for m in out.messages if m.role == "tool"] == [
        '{"id":7,"total":9.5}',
        "shop/ctx-run/False",
    ]


async def test_max_steps_ends_the_run_with_a_clear_error() -> None:
    def again() -> str:
        return "more"

    model = ScriptedModel(turns=[Reply(chunks=[], tool_calls=calls(("again", "{}")))])
    agent = Agent(model=model, tools=[again], max_steps=3)
    out = await agent.arun("loop forever")
    assert out.status is RunStatus.error and out.error_type == "MaxStepsExceededError"
    assert out.error == "the model asked for tools in 3 consecutive steps without answering (max_steps=3)"
    assert len(model.calls) == 3
    assert json.loads(json.dumps([m.to_provider() for m in out.messages]))[-1]["role"] == "tool"

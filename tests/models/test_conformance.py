"""One conformance suite every model adapter passes: deltas then one ModelTurnEnd, and cancellation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing

import anyio
import pytest

from tether import Message
from tether.models import Model, ModelTurnEnd
from tether.models.openai import OpenAIChat
from tether.testing import LoopbackServer, Reply, ScriptedModel, ScriptedToolCall

pytestmark = pytest.mark.anyio

CHUNKS = ["Alpha", " beta", " gamma"]
CALL = ("lookup", '{"city": "Paris"}')
Factory = Callable[..., Model]


@pytest.fixture(params=["scripted", "openai"])
def make_model(request: pytest.FixtureRequest, loopback_server: LoopbackServer) -> Iterator[Factory]:
    """``make_model(chunks, stall=0.0, tool_call=False)`` for each adapter."""

    def scripted(chunks: list[str], stall: float = 0.0, tool_call: bool = False) -> Model:
        calls = [ScriptedToolCall(name=CALL[0], arguments=CALL[1], id="call_1")]
        return ScriptedModel(chunks, stall=stall, tool_calls=calls if tool_call else [])

    def openai(chunks: list[str], stall: float = 0.0, tool_call: bool = False) -> Model:
        calls = [ScriptedToolCall(name=CALL[0], arguments=CALL[1], id="call_1")] if tool_call else []
        loopback_server.default = Reply(chunks=chunks, stall=stall, tool_calls=calls)
        return OpenAIChat(id="loopback", base_url=loopback_server.base_url, max_retries=0)

    yield scripted if request.param == "scripted" else openai


async def collect(stream: AsyncIterator[object]) -> list[object]:
    """The deltas, with each ``list[str]`` (the texts of one network read) spread out."""
    deltas: list[object] = []
    async for delta in stream:
        deltas.extend(delta) if isinstance(delta, list) else deltas.append(delta)
    return deltas


async def test_text_deltas_then_one_turn_end(make_model: Factory) -> None:
    model = make_model(CHUNKS)
    deltas = await collect(model.stream([Message(role="user", content="hi")]))
    assert deltas[:-1] == CHUNKS
    end = deltas[-1]
    assert isinstance(end, ModelTurnEnd) and end.finish_reason == "stop" and end.tool_calls == []
    assert isinstance(model.id, str) and model.id


async def test_tool_calls_are_reassembled(make_model: Factory) -> None:
    model = make_model(["Let me check."], tool_call=True)
    deltas = await collect(model.stream([Message(role="user", content="weather?")]))
    end = deltas[-1]
    assert deltas[:-1] == ["Let me check."]
    assert isinstance(end, ModelTurnEnd)
    assert [(c.id, c.function.name, c.function.arguments) for c in end.tool_calls] == [("call_1", *CALL)]


async def test_cancellation_in_a_stall_propagates_promptly(make_model: Factory) -> None:
    model = make_model(CHUNKS, stall=30)
    with anyio.move_on_after(0.2) as scope:
        await collect(model.stream([Message(role="user", content="hi")]))
    assert scope.cancelled_caught, "an adapter must not swallow cancellation"


async def test_closing_mid_stream_releases_the_stream(make_model: Factory) -> None:
    model = make_model(CHUNKS)
    async with aclosing(model.stream([Message(role="user", content="hi")])) as stream:  # type: ignore[type-var]
        first = await stream.__anext__()
    assert first in ("Alpha", CHUNKS)  # one chunk, or the texts of the first network read
    if isinstance(model, ScriptedModel):
        assert model.open_streams == 0

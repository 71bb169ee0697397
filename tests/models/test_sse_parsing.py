"""OpenAIChat's SSE reader: whatever way the bytes are cut into network reads, the payloads are the same."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx2
import pytest

from tether import Agent
from tether.models.base import ModelTurnEnd
from tether.models.openai import _sse_payloads

pytestmark = pytest.mark.anyio

TEXTS = ["Grüße", " 🌍", " line\nbreak", ' "quoted"', " [DONE]"]


def sse_body(line_end: str) -> bytes:
    events = [
        "data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": text}}]}, ensure_ascii=False)
        for text in TEXTS
    ]
    events.insert(1, ": keep-alive comment")
    events.append("data: [DONE]")
    return (line_end * 2).join(events).encode() + (line_end * 2).encode()


async def payloads(body: bytes, cut: int) -> list[str]:
    async def reads() -> AsyncIterator[bytes]:
        for at in range(0, len(body), cut):
            yield body[at : at + cut]

    response = httpx2.Response(200, content=reads())
    return [payload async for batch in _sse_payloads(response) for payload in batch]


@pytest.mark.parametrize("line_end", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("cut", [1, 2, 3, 7, 64, 100_000])
async def test_payloads_survive_any_split_and_line_ending(line_end: str, cut: int) -> None:
    found = await payloads(sse_body(line_end), cut)
    assert [json.loads(p)["choices"][0]["delta"]["content"] for p in found[:-1]] == TEXTS
    assert found[-1].strip() == "[DONE]"


async def test_a_last_line_without_a_newline_is_still_read() -> None:
    assert await payloads(b'data: {"a": 1}\n\ndata: [DONE]', 4) == [' {"a": 1}', " [DONE]"]


class Batches:
    """A model yielding each network read's texts as one list, as OpenAIChat does."""

    id = "batches"

    def __init__(self, *deltas: object) -> None:
        self.deltas = deltas

    def __repr__(self) -> str:
        return "Batches model"

    async def stream(self, messages: object, tools: object = ()) -> AsyncIterator[object]:
        for delta in self.deltas:
            yield delta


async def test_a_list_of_texts_becomes_one_content_event_each() -> None:
    model = Batches(["Hel", "", "lo"], " there", [], ModelTurnEnd(finish_reason="stop"))
    events = [e async for e in Agent(name="a", model=model).arun("hi", stream=True)]  # type: ignore[arg-type]
    assert [e.content for e in events if e.event == "RunContent"] == ["Hel", "lo", " there"]
    assert events[-1].event == "RunCompleted" and events[-1].content == "Hello there"


async def test_a_model_yielding_something_else_ends_the_run_with_a_clear_error() -> None:
    model = Batches("ok", 42, ModelTurnEnd(finish_reason="stop"))
    output = await Agent(name="a", model=model).arun("hi")  # type: ignore[arg-type]
    assert output.status == "ERROR" and output.content == "ok"
    assert (
        output.error
        == "TypeError: Batches model yielded a int; a model yields str, list[str] or ModelTurnEnd"
    )

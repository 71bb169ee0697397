"""OpenAIChat's SSE reader: whatever way the bytes are cut into network reads, the payloads are the same."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator

import httpx2
import openai
import pytest

from tether import Agent, Message
from tether.models.base import ModelTurnEnd
from tether.models.openai import OpenAIChat, _Turn

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


def payloads(body: bytes, cut: int) -> list[str]:
    turn = _Turn()
    found = [p for at in range(0, len(body), cut) for p in turn.payloads(body[at : at + cut])]
    return found + turn.payloads(None)


@pytest.mark.parametrize("line_end", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("cut", [1, 2, 3, 7, 64, 100_000])
def test_payloads_survive_any_split_and_line_ending(line_end: str, cut: int) -> None:
    found = payloads(sse_body(line_end), cut)
    assert [json.loads(p)["choices"][0]["delta"]["content"] for p in found[:-1]] == TEXTS
    assert found[-1].strip() == "[DONE]"


def test_a_last_line_without_a_newline_is_still_read() -> None:
    assert payloads(b'data: {"a": 1}\n\ndata: [DONE]', 4) == [' {"a": 1}', " [DONE]"]


@pytest.mark.parametrize("encoding", [None, "gzip"])
async def test_openai_chat_reads_a_plain_or_compressed_body_to_its_unterminated_last_line(
    encoding: str | None,
) -> None:
    body = sse_body("\n").rstrip(b"\n")  # ends with "data: [DONE]" and no newline

    async def reads(data: bytes) -> AsyncIterator[bytes]:
        for at in range(0, len(data), 7):
            yield data[at : at + 7]

    def answer(request: httpx2.Request) -> httpx2.Response:
        headers = {"content-type": "text/event-stream"}
        if encoding:
            headers["content-encoding"] = encoding
        return httpx2.Response(200, headers=headers, content=reads(gzip.compress(body) if encoding else body))

    http = httpx2.AsyncClient(transport=httpx2.MockTransport(answer))
    client = openai.AsyncOpenAI(base_url="http://model.test/v1", api_key="k", max_retries=0, http_client=http)
    model = OpenAIChat(id="m", client=client)
    async with client:
        deltas = [d async for d in model.stream([Message(role="user", content="hi")])]
    assert [text for delta in deltas[:-1] for text in delta] == TEXTS
    assert isinstance(deltas[-1], ModelTurnEnd)


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

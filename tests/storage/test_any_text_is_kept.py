"""Issue 12 item 4: any text a model, a tool or a caller produces is storable and comes back as streamed.

A lone UTF-16 surrogate (half an emoji, as a provider splitting a character between two JSON chunks
produces) cannot be encoded as UTF-8. tether joins a pair split between two deltas and replaces a
surrogate left alone by U+FFFD, once, where the text enters the run: the stream, the output and the
row then carry the same text.
"""

from __future__ import annotations

import pytest

from tether import Agent, Message, RunEvent, RunStatus
from tether.models.openai import OpenAIChat
from tether.storage import Storage
from tether.testing import LoopbackServer, Reply, ScriptedModel, ScriptedToolCall

pytestmark = pytest.mark.anyio

SPLIT = ["a\ud83d", "\ude00b", "c\ud83d"]  # 😀 split over two chunks, then half of one at the end
KEPT = "a\U0001f600bc\ufffd"


def content_of(events: list) -> str:  # type: ignore[type-arg]
    return "".join(e.content for e in events if e.event == RunEvent.run_content)


async def test_split_and_lone_surrogates_from_a_model_are_streamed_stored_and_read_back_alike(
    storage: Storage,
) -> None:
    agent = Agent(name="u", model=ScriptedModel(SPLIT), storage=storage)
    stream = agent.arun("go", stream=True, run_id="sur-1", session_id="sur-s")
    events = [event async for event in stream]
    assert [e.content for e in events if e.event == RunEvent.run_content] == [
        "a",
        "\U0001f600b",
        "c",
        "\ufffd",
    ]
    assert events[-1].event == RunEvent.run_completed and events[-1].content == KEPT
    stored = await storage.get_run("sur-1")
    assert stored is not None and stored == stream.output
    assert (stored.status, stored.content) == (RunStatus.completed, KEPT)
    assert stored.messages[-1] == Message(role="assistant", content=KEPT)
    # ...and the next run of the session sends it back as history
    again = await agent.arun("more", session_id="sur-s", run_id="sur-2")
    assert again.status is RunStatus.completed
    assert agent.model.calls[-1][1] == Message(role="assistant", content=KEPT, from_history=True)  # type: ignore[attr-defined]


async def test_surrogates_from_the_caller_a_tool_a_reason_and_an_error_are_replaced_alike(
    storage: Storage,
) -> None:
    def echo() -> str:
        return "tool \udfff said"

    model = ScriptedModel(
        turns=[Reply(chunks=["x "], tool_calls=[ScriptedToolCall("echo", id="t1")]), Reply(chunks=["y"])]
    )
    agent = Agent(name="u", model=model, tools=[echo], storage=storage, instructions="be \ud800 brief")
    out = await agent.arun("hi \udc00", run_id="sur-3", history=[Message(role="user", content="old \ud83d")])
    assert out.status is RunStatus.completed
    contents = [m.content for m in out.messages]
    assert contents == ["be \ufffd brief", "old \ufffd", "hi \ufffd", "x ", "tool \ufffd said", "y"]
    assert await storage.get_run("sur-3") == out

    stalled = Agent(name="u", model=ScriptedModel(["z"], stall=5), storage=storage)
    stream = stalled.arun("go", stream=True, run_id="sur-4")
    async for event in stream:
        if event.event == RunEvent.run_started:
            stalled.cancel_run("sur-4", reason="stop \ud800 now")
    assert stream.output is not None and stream.output.cancel_reason == "stop \ufffd now"
    assert await storage.get_run("sur-4") == stream.output

    failing = Agent(
        name="u", model=ScriptedModel(["q"], error=RuntimeError("bad \udbff"), error_at=1), storage=storage
    )
    failed = await failing.arun("go", run_id="sur-5")
    assert (failed.status, failed.error) == (RunStatus.error, "RuntimeError: bad \ufffd")
    assert await storage.get_run("sur-5") == failed


async def test_an_openai_compatible_provider_splitting_an_emoji_between_chunks(storage: Storage) -> None:
    async with LoopbackServer(Reply(chunks=["a\ud83d", "\ude00b", "\ud83d"])) as server:
        model = OpenAIChat(id="loopback", base_url=server.base_url, api_key="k", max_retries=0)
        agent = Agent(name="u", model=model, storage=storage)
        out = await agent.arun("go", run_id="sur-6")
    assert (out.status, out.content) == (RunStatus.completed, "a\U0001f600b\ufffd")
    assert await storage.get_run("sur-6") == out

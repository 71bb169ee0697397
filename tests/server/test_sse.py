"""The SSE response itself: frames byte for byte pydantic's, coalesced sends, the terminal event last."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import pytest

from tether import Agent
from tether._run import (
    BaseRunEvent,
    RunCancelledEvent,
    RunCompletedEvent,
    RunContentEvent,
    RunErrorEvent,
    RunEvent,
    RunStartedEvent,
    RunStatus,
    ToolCallCompletedEvent,
    ToolCallStartedEvent,
)
from tether._run._events import construct
from tether.models.base import ModelDelta, ModelTurnEnd, ToolSpec
from tether.server._frames import FrameEncoder, frame
from tether.server._sse import OUTBOX_BYTES, EventStreamResponse, Outbox, Relays

from .conftest import parse_sse

pytestmark = pytest.mark.anyio

COMMON: dict[str, Any] = {"run_id": "r-1", "agent_id": "a", "agent_name": "A", "session_id": None}
TEXTS = [
    "plain",
    "",
    'quote " and \\ backslash',
    "tab\tnew\nline\r\x00\x1f\x7f",
    "é 😀 \u2028\u2029 </script>",
]


def pydantic_frame(event: BaseRunEvent) -> bytes:
    return (
        f"id: {event.event_index}\nevent: {event.event.value}\ndata: {event.model_dump_json()}\n\n".encode()
    )


def content(text: str, created_at: int = 1_700_000_000, **fields: Any) -> RunContentEvent:
    values = {"event_index": 0, **COMMON, **fields}
    return construct(
        RunContentEvent,
        {
            "event": RunEvent.run_content,
            **values,
            "created_at": created_at,
            "status": RunStatus.running,
            "content": text,
        },
    )


class Burst:
    """A model whose whole answer arrives in one network read (once ``after`` is set, if given);
    ``hang``: then it never ends."""

    id = "burst"

    def __init__(self, texts: Sequence[str], *, after: anyio.Event | None = None, hang: bool = False) -> None:
        self.texts, self.after, self.hang = list(texts), after, hang

    def stream(self, messages: Sequence[Any], tools: Sequence[ToolSpec] = ()) -> AsyncIterator[ModelDelta]:
        return self._stream()

    async def _stream(self) -> AsyncIterator[ModelDelta]:
        if self.after is not None:
            await self.after.wait()
        yield list(self.texts)
        if self.hang:
            await anyio.sleep_forever()
        yield ModelTurnEnd(finish_reason="stop")


async def never_disconnects() -> Any:
    await anyio.sleep_forever()


def test_every_event_kind_encodes_exactly_as_pydantic() -> None:
    events: list[BaseRunEvent] = [
        RunStartedEvent(**COMMON, status=RunStatus.running, model="m"),
        *(content(text, event_index=i) for i, text in enumerate(TEXTS, 1)),
        content("next second", created_at=1_700_000_001, event_index=6),
        content("same second", created_at=1_700_000_001, event_index=7),
        content("a big index", created_at=1_700_000_001, event_index=10**12),
        content("x", created_at=1_800_000_000, session_id="s-1"),  # other fields: learnt again
        content("y", agent_name=None),
        content("z", agent_name='quo"ted, "created_at":1, "event_index":2,'),
        ToolCallStartedEvent(
            **COMMON, status=RunStatus.running, tool_call_id="c", tool_name="t", tool_args={"k": [1]}
        ),
        ToolCallCompletedEvent(
            **COMMON, status=RunStatus.running, tool_call_id="c", tool_name="t", content="ok"
        ),
        RunCompletedEvent(**COMMON, status=RunStatus.completed, content="all"),
        RunCancelledEvent(**COMMON, status=RunStatus.cancelled, reason="r", source="user"),
        RunErrorEvent(**COMMON, status=RunStatus.error, error="e", error_type="E"),
    ]
    encoder = FrameEncoder()
    assert [encoder.encode([event]) for event in events] == [pydantic_frame(event) for event in events]
    assert encoder.encode(events) == b"".join(pydantic_frame(event) for event in events)


def test_text_pydantic_cannot_encode_is_escaped_not_lost() -> None:
    event = content("half an emoji \ud83d")
    for encoded in (FrameEncoder().encode([event]), frame(event)):
        ((name, data),) = parse_sse(encoded.decode())
        assert (name, data["content"]) == ("RunContent", "half an emoji \ud83d")


async def test_a_burst_is_one_message_ending_with_the_terminal_event() -> None:
    texts = [f"w{i} " for i in range(300)]
    stream = Agent(name="Burst", model=Burst(texts)).arun("go", stream=True)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    response = EventStreamResponse.of_run(stream, Relays(), keepalive=0, on_gone=lambda: None)
    await response({"type": "http"}, never_disconnects, send)
    start, *bodies = sent
    assert start["type"] == "http.response.start"
    assert len(bodies) <= 3  # RunStarted, the 300 chunks and the end: not a message per event
    assert [body["more_body"] for body in bodies] == [True] * (len(bodies) - 1) + [False]
    frames = parse_sse(b"".join(body["body"] for body in bodies).decode())
    assert [name for name, _ in frames] == ["RunStarted", *["RunContent"] * 300, "RunCompleted"]
    assert [data["content"] for _, data in frames[1:-1]] == texts
    assert bodies[-1]["body"].endswith(b"\n\n") and b"event: RunCompleted" in bodies[-1]["body"]


async def test_a_backlog_and_the_cancel_leave_together() -> None:
    """A client behind by a whole burst gets it and RunCancelled in one message, the response's last."""
    texts = [f"w{i} " for i in range(200)]
    writing, unblock = anyio.Event(), anyio.Event()
    stream = Agent(name="Burst", model=Burst(texts, after=writing, hang=True)).arun("go", stream=True)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not writing.is_set():
            writing.set()
            await unblock.wait()  # a slow client: writing RunStarted takes a while

    relays = Relays()
    async with anyio.create_task_group() as group:
        response = EventStreamResponse.of_run(stream, relays, keepalive=0, on_gone=lambda: None)
        group.start_soon(response, {"type": "http"}, never_disconnects, send)
        with anyio.fail_after(5):
            await writing.wait()
            snapshot = stream.handle.snapshot
            while snapshot is None or not snapshot().content:  # noqa: ASYNC110 - the run's own state
                await anyio.sleep(0.005)  # the burst is queued behind the first write meanwhile
            stream.handle.request_cancel("enough", "user")
            while relays.tasks:  # noqa: ASYNC110 - the relay ends once RunCancelled is queued too
                await anyio.sleep(0.005)
        unblock.set()
    first, backlog = (parse_sse(m["body"].decode()) for m in sent if m["type"] == "http.response.body")
    assert [name for name, _ in first] == ["RunStarted"]
    assert [name for name, _ in backlog] == [*["RunContent"] * 200, "RunCancelled"]
    assert sent[-1]["more_body"] is False


async def test_the_outbox_holds_the_relay_back_only_when_the_client_is_far_behind() -> None:
    outbox = Outbox()
    outbox.put(b"x" * (OUTBOX_BYTES - 1))
    assert not outbox.full
    outbox.put(b"y")
    assert outbox.full
    with anyio.move_on_after(0.05) as waited:
        await outbox.wait_for_room()
    assert waited.cancelled_caught
    async with anyio.create_task_group() as group:
        group.start_soon(outbox.wait_for_room)
        await anyio.sleep(0.01)
        assert await outbox.take() == (b"x" * (OUTBOX_BYTES - 1) + b"y", False)
    outbox.put(b"z" * OUTBOX_BYTES)
    outbox.close()  # the client left: the relay drops frames and never waits
    assert not outbox.full
    outbox.put(b"dropped", last=True)
    assert await outbox.take() == (b"", True)

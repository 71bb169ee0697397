"""The client parses SSE as the spec says, and every way an answer can go wrong is an APIError.

Content goes through a real uvicorn server; the malformed answers come from a raw TCP server on
loopback that sends canned bytes, so each failure is exactly the one named.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether import Agent, APIError, RunContentEvent, RunEvent, RunStatus
from tether.client import AsyncTetherClient, TetherClient
from tether.models.base import ModelDelta, ModelTurnEnd, ToolSpec
from tether.server import create_app
from tether.storage import SqliteStorage
from tether.testing import ScriptedModel

from .conftest import LiveServer

pytestmark = pytest.mark.anyio

# Every character str.splitlines() or a naive parser treats as a line break, every other control
# character, and text outside the BMP, each in a chunk of its own and all together.
SEPARATORS = ["\n", "\r", "\r\n", "\n\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
CONTROLS = [chr(c) for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]]
OTHERS = ["🐉", "👩\u200d💻", "\ufeff", "\ufffe", "\uffff", "\U0010ffff", "data: x\n\nevent: y", ": ", "é"]
TRICKY = [*SEPARATORS, *CONTROLS, *OTHERS, "".join(SEPARATORS + CONTROLS + OTHERS)]


class SetModel:
    """Streams whatever the test put in ``chunks`` (each run reads it when it starts)."""

    id = "set-by-the-test"

    def __init__(self) -> None:
        self.chunks: list[str] = []

    async def stream(
        self, messages: Sequence[object], tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[ModelDelta]:
        for chunk in list(self.chunks):
            yield chunk
        yield ModelTurnEnd(finish_reason="stop")


@pytest.fixture
def echo(live: Callable[..., LiveServer], make_app: Callable[..., FastAPI]) -> tuple[LiveServer, SetModel]:
    model = SetModel()
    return live(make_app([Agent(id="echo", model=model)])), model


def received(events: list[object]) -> list[str]:
    return [e.content for e in events if isinstance(e, RunContentEvent) and e.content is not None]


async def test_every_line_separator_and_control_character_round_trips_async(
    echo: tuple[LiveServer, SetModel],
) -> None:
    server, model = echo
    model.chunks = TRICKY
    async with AsyncTetherClient(server.url) as client:
        events = [event async for event in client.stream("echo", "hi", run_id="tricky-async")]
        assert received(events) == TRICKY
        assert (events[-1].event, events[-1].content) == (RunEvent.run_completed, "".join(TRICKY))
        assert (await client.get_run("echo", "tricky-async")).content == "".join(TRICKY)
        assert (await client.run("echo", "hi")).content == "".join(TRICKY)


def test_every_line_separator_and_control_character_round_trips_blocking(
    echo: tuple[LiveServer, SetModel],
) -> None:
    server, model = echo
    model.chunks = TRICKY
    with TetherClient(server.url) as client:
        events = list(client.stream("echo", "hi", run_id="tricky-sync"))
        assert received(events) == TRICKY
        assert (events[-1].event, events[-1].content) == (RunEvent.run_completed, "".join(TRICKY))
        assert client.get_run("echo", "tricky-sync").content == "".join(TRICKY)
        assert client.run("echo", "hi").content == "".join(TRICKY)


# Any text but lone surrogates (not valid UTF-8; issue 12 item 4 is about those on the server side),
# with line separators and control characters each drawn as often as all the rest.
CHARACTERS = st.one_of(
    st.sampled_from([c for c in SEPARATORS if len(c) == 1]),
    st.sampled_from(CONTROLS),
    st.characters(exclude_categories=["Cs"]),
)
TEXT = st.text(CHARACTERS, min_size=1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(TEXT, max_size=6))
def test_any_text_round_trips_exactly(echo: tuple[LiveServer, SetModel], chunks: list[str]) -> None:
    server, model = echo
    model.chunks = chunks
    with TetherClient(server.url) as client:
        events = list(client.stream("echo", "hi"))
    assert received(events) == chunks
    assert (events[-1].status, events[-1].content) == (RunStatus.completed, "".join(chunks))


# --- malformed answers: a raw HTTP server on loopback that sends canned bytes -------------------

STARTED = (
    b'{"event":"RunStarted","run_id":"r","agent_id":"a","agent_name":null,"session_id":"s",'
    b'"status":"RUNNING","created_at":1,"model":"m"}'
)


def sse(body: bytes, *, status: str = "200 OK", content_type: bytes = b"text/event-stream") -> bytes:
    head = b"HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
    return head % (status.encode(), content_type, len(body)) + body


def read_request(conn: socket.socket) -> None:
    """All of one request (headers and a Content-Length body), so closing sends no reset."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.lower().split(b"\r\n")
            if line.startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        body += conn.recv(65536)


@contextmanager
def canned(answer: bytes) -> Iterator[str]:
    """A server that reads one request, sends ``answer`` and closes; yields its base URL."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with listener:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed without a request
            with conn:
                read_request(conn)
                conn.sendall(answer)
                conn.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=serve, name="canned-http")
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        thread.join(10)


async def stream_all(url: str) -> list[object]:
    """A canned server answers once: no reconnects here (see test_client_resume.py)."""
    async with AsyncTetherClient(url, reconnects=0) as client:
        return [event async for event in client.stream("a", "hi")]


FAILURES = {
    "bad JSON": (
        sse(b"event: RunStarted\ndata: {not json\n\n"),
        "answered something unexpected: 1 validation error",
        ValueError,
    ),
    "unknown event": (
        sse(b'event: RunExploded\ndata: {"event":"RunExploded"}\n\n'),
        "answered something unexpected",
        ValueError,
    ),
    "event name and data disagree": (
        sse(b"event: RunCompleted\ndata: " + STARTED + b"\n\n"),
        "an SSE event named 'RunCompleted' carries a RunStarted event",
        ValueError,
    ),
    "no terminal event": (
        sse(b"event: RunStarted\ndata: " + STARTED + b"\n\n"),
        "ended before the run's terminal event",
        httpx.RemoteProtocolError,
    ),
    "connection broken mid-body": (
        sse(b"event: RunStarted\ndata: " + STARTED + b"\n\n" + b"x" * 1000)[:-900],
        "the connection to the tether server at http://127.0.0.1:",
        httpx.RemoteProtocolError,
    ),
    "not an event stream": (
        sse(b"{}", content_type=b"application/json"),
        "did not answer with events: Expected response header Content-Type",
        httpx.TransportError,
    ),
    "error status without JSON": (
        sse(b"upstream gone", status="502 Bad Gateway", content_type=b"text/plain"),
        "upstream gone (HTTP 502, None)",
        None,
    ),
}


@pytest.mark.parametrize("case", list(FAILURES))
async def test_every_failure_of_a_stream_is_an_api_error(case: str) -> None:
    answer, message, cause = FAILURES[case]
    with canned(answer) as url, pytest.raises(APIError) as caught:
        await stream_all(url)
    assert message in str(caught.value)
    if cause is not None:
        assert isinstance(caught.value.__cause__, cause)


@pytest.mark.parametrize(
    "answer",
    [
        sse(b"[1, 2", content_type=b"application/json"),
        sse(b'[{"nope": 1}]', content_type=b"application/json"),
    ],
    ids=["bad JSON", "wrong shape"],
)
async def test_a_malformed_json_answer_is_an_api_error(answer: bytes) -> None:
    with canned(answer) as url:
        async with AsyncTetherClient(url) as client:
            with pytest.raises(APIError, match="answered something unexpected") as caught:
                await client.list_agents()
    assert isinstance(caught.value.__cause__, ValueError)


def test_a_connection_refused_is_an_api_error_from_the_blocking_client_too() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()  # nothing listens there now
    expected = f"could not reach the tether server at {url}"
    with TetherClient(url) as client, pytest.raises(APIError, match=expected) as caught:
        list(client.stream("a", "hi"))
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert caught.value.status_code is None


def test_the_client_replaces_a_lone_surrogate_in_the_message_as_the_library_does(tmp_path: Path) -> None:
    agent = Agent(name="echo", model=ScriptedModel(["ok"]))
    app = create_app([agent], storage=SqliteStorage(tmp_path / "server.db"))
    with LiveServer(app) as server, TetherClient(server.url) as client:
        output = client.run("echo", "half \ud83d")
        events = list(client.stream("echo", "more \udc00"))
    assert (output.status, output.content) == (RunStatus.completed, "ok")
    assert output.messages[-2].content == "half \ufffd"
    assert events[-1].event == RunEvent.run_completed

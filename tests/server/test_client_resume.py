"""The client's background runs, resume, and a stream that reconnects by itself after its connection was
cut (a TCP proxy on loopback between the client and a real uvicorn server)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi import FastAPI

from tether import Agent, APIError, BaseRunEvent, RunEvent, RunStatus
from tether.client import AsyncTetherClient, TetherClient
from tether.testing import ScriptedModel

from .conftest import LiveServer

pytestmark = pytest.mark.anyio

WORDS = [f"w{i} " for i in range(60)]
TEXT = "".join(WORDS)
EVENTS = len(WORDS) + 2


def quick(delay: float = 0.005, **options: Any) -> Agent:
    return Agent(name="Teller", model=ScriptedModel(WORDS, delay=delay, **options))


def check_whole(events: list[BaseRunEvent], terminal: RunEvent = RunEvent.run_completed) -> None:
    """Every index exactly once and in order; the texts join to the terminal event's content."""
    assert [e.event_index for e in events] == list(range(len(events)))
    assert events[0].event == RunEvent.run_started and events[-1].event == terminal
    assert "".join(e.content or "" for e in events if e.event == RunEvent.run_content) == events[-1].content


class CutProxy:
    """A TCP proxy to ``target`` on loopback whose connections the test can cut (``cut()``), and which
    can refuse new ones (``refuse``: accepted, then closed at once)."""

    def __init__(self, target: str) -> None:
        url = urlsplit(target)
        assert url.hostname is not None and url.port is not None
        self.target = (url.hostname, url.port)
        self.refuse = False
        self.accepted = 0
        self._open: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.close()
            self.cut()
            await server.wait_closed()
            if self._tasks:
                await asyncio.wait(self._tasks)

    def cut(self) -> None:
        """Abort every open connection, both sides (the client gets a reset, the server a disconnect)."""
        for writer in list(self._open):
            writer.transport.abort()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.refuse:
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._open.update((writer, up_writer))
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for side in (writer, up_writer):
                self._open.discard(side)
                side.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()  # one side ended: so does the other


async def test_background_run_then_resume_with_the_async_client(
    live: Callable[..., LiveServer], make_app: Callable[..., FastAPI]
) -> None:
    server = live(make_app([quick()]))
    async with AsyncTetherClient(server.url) as client:
        started = await client.run("teller", "go", background=True, run_id="c-bg", session_id="c-s")
        assert (started.run_id, started.agent_id, started.session_id, started.status, started.content) == (
            "c-bg",
            "teller",
            "c-s",
            RunStatus.pending,
            "",
        )
        events = [event async for event in client.resume("teller", "c-bg")]
        check_whole(events)
        assert len(events) == EVENTS and events[-1].content == TEXT
        rest = [
            event async for event in client.resume("teller", "c-bg", last_event_index=10, session_id="c-s")
        ]
        assert [(e.event_index, e.content) for e in rest] == [(e.event_index, e.content) for e in events[11:]]
        assert [event async for event in client.resume("teller", "c-bg", last_event_index=EVENTS - 1)] == []
        with pytest.raises(APIError) as missing:
            async for _ in client.resume("teller", "c-bg", session_id="other"):
                pass
        assert (missing.value.status_code, missing.value.error_code, missing.value.detail) == (
            404,
            "NOT_FOUND",
            "Run not found",
        )


@pytest.mark.parametrize("background", [True, False])
async def test_a_stream_cut_mid_run_reconnects_with_no_gap_and_no_repeat(
    live: Callable[..., LiveServer], make_app: Callable[..., FastAPI], background: bool
) -> None:
    server = live(make_app([quick()], on_disconnect="continue"))
    proxy = CutProxy(server.url)
    async with proxy.serving() as url, AsyncTetherClient(url) as client:
        events: list[BaseRunEvent] = []
        async for event in client.stream("teller", "go", background=background):
            events.append(event)
            if len(events) in (5, 30):
                proxy.cut()  # what the client has buffered still comes, then the reset
    check_whole(events)
    assert events[-1].content == TEXT and len(events) == EVENTS
    assert proxy.accepted == 3  # the POST, then one GET .../events per cut


async def test_without_background_a_cut_stream_gets_the_cancel_its_disconnect_caused(
    live: Callable[..., LiveServer], make_app: Callable[..., FastAPI]
) -> None:
    server = live(make_app([quick(delay=0.02)], on_disconnect="cancel"))
    proxy = CutProxy(server.url)
    async with proxy.serving() as url, AsyncTetherClient(url) as client:
        events: list[BaseRunEvent] = []
        async for event in client.stream("teller", "go"):
            events.append(event)
            if len(events) == 5:
                proxy.cut()
    check_whole(events, RunEvent.run_cancelled)
    assert (events[-1].source, events[-1].reason) == ("consumer", "client disconnected")
    assert TEXT.startswith(events[-1].content or "-")


async def test_reconnects_are_bounded_then_the_stream_raises(
    live: Callable[..., LiveServer], make_app: Callable[..., FastAPI]
) -> None:
    server = live(make_app([quick(delay=0.01)]))
    proxy = CutProxy(server.url)
    async with proxy.serving() as url, AsyncTetherClient(url, reconnects=2) as client:
        events: list[BaseRunEvent] = []
        with pytest.raises(APIError, match=r"was lost \(.+\) and 2 reconnect\(s\) failed: ") as lost:
            async for event in client.stream("teller", "go", background=True, run_id="c-gone"):
                events.append(event)
                if len(events) == 3:
                    proxy.refuse = True
                    proxy.cut()
                    cut_at = time.monotonic()
        waited = time.monotonic() - cut_at
        assert lost.value.status_code is None
        assert proxy.accepted == 3  # the POST, then two reconnects refused
        assert 0.6 <= waited < 5  # after 0.2 and 0.4 s of backoff
        proxy.refuse = False
        rest = [
            event
            async for event in client.resume("teller", "c-gone", last_event_index=events[-1].event_index)
        ]
    check_whole(events + rest)


async def test_keep_alive_comments_are_not_events_for_the_client(
    live: Callable[..., LiveServer], make_app: Callable[..., FastAPI]
) -> None:
    agent = Agent(name="Teller", model=ScriptedModel(["a ", "b ", "c "], stall=0.6, stall_at=2))
    server = live(make_app([agent], sse_keepalive=0.05))
    async with AsyncTetherClient(server.url) as client:
        events = [event async for event in client.stream("teller", "go")]
    assert [(e.event_index, e.event, e.content) for e in events] == [
        (0, RunEvent.run_started, None),
        (1, RunEvent.run_content, "a "),
        (2, RunEvent.run_content, "b "),
        (3, RunEvent.run_content, "c "),
        (4, RunEvent.run_completed, "a b c "),
    ]


def test_the_blocking_client_runs_in_the_background_and_resumes(
    live: Callable[..., LiveServer], make_app: Callable[..., FastAPI]
) -> None:
    server = live(make_app([quick()]))
    with TetherClient(server.url) as client:
        started = client.run("teller", "go", background=True)
        assert started.status is RunStatus.pending
        events = list(client.resume("teller", started.run_id))
        check_whole(events)
        streamed = client.stream("teller", "again", background=True)
        first = [next(streamed), next(streamed)]
        streamed.close()  # type: ignore[attr-defined]
        rest = list(client.resume("teller", first[-1].run_id, first[-1].event_index))
        check_whole(first + rest)
        assert rest[-1].content == TEXT

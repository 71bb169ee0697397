"""Server-sent events for a run, with an explicit policy for a client that goes away.

The events are read by a *relay* task the server owns, never by the HTTP response itself. For the
stream of ``POST /agents/{agent_id}/runs`` the relay is the run's own consumer, so a client disconnect
can only do what the policy says (:mod:`._disconnect`). ``"cancel"``: the run is cancelled with
``source="consumer"`` (and stored). ``"continue"`` (and any ``background=true`` run): it finishes in
the background, its events dropped, fetchable with GET, resumable, cancellable with POST cancel. For
the resume routes the relay is an attached reader (:class:`tether._run.RunReader`): the client leaving
stops it, and never touches the run. Frames are ``id: <event_index>`` + ``event: <RunEvent>`` +
``data: <JSON>`` (:mod:`._frames`).

Whatever is ready goes out together: the relay takes every event the run has queued, encodes them
into one piece, and the response sends everything encoded since its last send as one ASGI message
(one socket write). So a backlog, e.g. the chunks ahead of a RunCancelled, leaves in one write, not
one frame per event-loop turn, and the terminal event ends the response in the same message.

A stream with nothing to send for a while gets an SSE comment (``: keep-alive``), so that proxies and
load balancers do not close an idle connection under a run that waits for a slow model or tool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, Self, TypeVar

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .._run import BaseRunEvent
from .._run._channel import wake
from ._disconnect import until_disconnect
from ._frames import FrameEncoder

logger = logging.getLogger("tether.server")

T = TypeVar("T")
OUTBOX_BYTES = 64 * 1024
"""Encoded bytes the relay may have waiting for a slow client before it stops reading the run."""
KEEPALIVE = b": keep-alive\n\n"
"""The SSE comment an idle stream sends every ``sse_keepalive`` seconds (clients ignore comments)."""
HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class Batches(Protocol):
    """What a relay reads: a run's stream (its consumer) or an attached reader."""

    @property
    def run_id(self) -> str: ...

    async def next_batch(self) -> list[BaseRunEvent]: ...


class Outbox:
    """Frames from the relay to the response: put without waiting, taken all at once.

    The relay waits only when the client is ``OUTBOX_BYTES`` behind; the run's own channel then fills
    and the run waits in turn. One producer, one consumer, one event loop.
    """

    __slots__ = ("_parts", "_ready", "_room", "_size", "closed", "ended", "fresh")

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self._ready: asyncio.Future[None] | None = None  # the response waits for frames
        self._room: asyncio.Future[None] | None = None  # the relay waits for the response
        self.ended = False  # the relay has put its last frames
        self.closed = False  # the response takes no more: frames are dropped
        self.fresh = False  # frames were put since the keep-alive last looked

    @property
    def full(self) -> bool:
        return self._size >= OUTBOX_BYTES and not self.closed

    def put(self, data: bytes, *, last: bool = False) -> None:
        if not self.closed:
            self._parts.append(data)
            self._size += len(data)
        self.ended = self.ended or last
        self.fresh = True
        wake(self._ready)

    def keep_alive(self) -> None:
        """Called every keep-alive period: a comment if no frame was put during the last one."""
        if self.fresh:
            self.fresh = False
        elif not self.ended and not self.closed:
            self._parts.append(KEEPALIVE)
            self._size += len(KEEPALIVE)
            wake(self._ready)

    def end(self) -> None:
        self.ended = True
        wake(self._ready)

    def close(self) -> None:
        self.closed = True
        self._parts.clear()
        self._size = 0
        wake(self._room)

    async def wait_for_room(self) -> None:
        while self.full:
            self._room = asyncio.get_running_loop().create_future()
            await self._room

    async def take(self) -> tuple[bytes, bool]:
        """Everything put since the last take (waiting for something), and whether it is the last."""
        while not self._parts and not self.ended:
            self._ready = asyncio.get_running_loop().create_future()
            await self._ready
        data = b"".join(self._parts)
        self._parts.clear()
        self._size = 0
        wake(self._room)
        return data, self.ended


class Relays:
    """The server's tasks reading runs (strong references), so runs outlive the requests that started them."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()

    def start(self, source: Batches) -> tuple[Outbox, asyncio.Task[None]]:
        """Relay ``source`` as SSE frames into a new outbox, from a task of the server's."""
        outbox = Outbox()
        return outbox, self.spawn(_relay(source, outbox), f"tether-relay-{source.run_id}")

    def hold(self, task: asyncio.Task[Any]) -> None:
        """Keep a reference to ``task`` (a background run's) until it ends."""
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def spawn(self, work: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        """Run ``work`` in a task the server holds until it ends."""
        task = asyncio.get_running_loop().create_task(work, name=name)
        self.hold(task)
        return task


async def _relay(source: Batches, outbox: Outbox) -> None:
    """Read the run to its end; forward frames while the client listens, drop them after."""
    encoder = FrameEncoder()
    try:
        while events := await source.next_batch():
            last = events[-1].is_terminal
            if not outbox.closed:
                outbox.put(encoder.encode(events), last=last)
                if outbox.full:
                    await outbox.wait_for_room()
            if last:
                return
    finally:
        outbox.end()


class EventStreamResponse(Response):
    """An ASGI response streaming one run's events as SSE.

    Build it with :meth:`of_run` (the run's own stream: the relay reads it to its end whatever the
    client does, and ``on_gone`` applies the disconnect policy) or :meth:`of_reader` (an attached
    reader: the relay stops with the response). ``keepalive``: seconds of silence before a comment
    (0: none).
    """

    media_type = "text/event-stream"

    def __init__(
        self, source: Batches, relays: Relays, *, keepalive: float, on_gone: Callable[[], None] | None
    ) -> None:
        super().__init__(status_code=200)
        self.source = source
        self.relays = relays
        self.keepalive = keepalive
        self.on_gone = on_gone

    @classmethod
    def of_run(
        cls, source: Batches, relays: Relays, *, keepalive: float, on_gone: Callable[[], None]
    ) -> Self:
        """The stream of the run's consumer: the relay reads the run to its end (see the module doc)."""
        return cls(source, relays, keepalive=keepalive, on_gone=on_gone)

    @classmethod
    def of_reader(cls, reader: Batches, relays: Relays, *, keepalive: float) -> Self:
        """The stream of an attached reader: it stops when the client leaves; the run goes on."""
        return cls(reader, relays, keepalive=keepalive, on_gone=None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        outbox, relay = self.relays.start(self.source)
        ticker = _KeepAlive(outbox, self.keepalive) if self.keepalive > 0 else None
        try:
            await self._respond(outbox, receive, send)
        finally:
            # Only now, with the pump stopped: the relay drops what follows and reads the run to its end.
            outbox.close()
            if ticker is not None:
                ticker.cancel()
            if self.on_gone is None:
                relay.cancel()  # a reader: nothing more to read for anyone

    async def _respond(self, outbox: Outbox, receive: Receive, send: Send) -> None:
        ended = gone = False
        try:
            await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        except OSError:
            gone = True
            self._client_gone()
        if not gone:
            async with anyio.create_task_group() as group:
                group.start_soon(self._watch, receive, group.cancel_scope)
                try:
                    ended = await self._pump(outbox, send)
                except OSError:  # the client went away while we wrote
                    gone = True
                    self._client_gone()
                group.cancel_scope.cancel()
        if not ended and not gone:
            with contextlib.suppress(OSError):  # gone between the last frame and the end
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _pump(self, outbox: Outbox, send: Send) -> bool:
        """Send what the relay encodes, each take as one message; True once the last one is sent."""
        while True:
            body, last = await outbox.take()
            await send({"type": "http.response.body", "body": body, "more_body": not last})
            if last:
                return True

    async def _watch(self, receive: Receive, scope: anyio.CancelScope) -> None:
        await until_disconnect(receive)
        self._client_gone()
        scope.cancel()

    def _client_gone(self) -> None:
        if self.on_gone is not None:
            self.on_gone()


class _KeepAlive:
    """Asks the outbox for a keep-alive comment every ``interval`` seconds (one timer, nothing per frame)."""

    __slots__ = ("_handle", "_interval", "_loop", "_outbox")

    def __init__(self, outbox: Outbox, interval: float) -> None:
        self._outbox = outbox
        self._interval = interval
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_later(interval, self._tick)

    def _tick(self) -> None:
        self._outbox.keep_alive()
        self._handle = self._loop.call_later(self._interval, self._tick)

    def cancel(self) -> None:
        self._handle.cancel()

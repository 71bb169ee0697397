"""Server-sent events for a run, with an explicit policy for a client that goes away.

The run is consumed by a *relay* task the server owns, never by the HTTP response itself: so a
client disconnect can only do what the policy says (:mod:`._disconnect`). ``"cancel"``: the run is
cancelled with ``source="consumer"`` (and stored). ``"continue"``: it finishes in the background, its
events dropped, fetchable with GET and cancellable with POST cancel. Frames are ``event: <RunEvent>`` +
``data: <JSON>``.

Whatever is ready goes out together: the relay takes every event the run has queued, encodes them
into one piece, and the response sends everything encoded since its last send as one ASGI message
(one socket write). So a backlog, e.g. the chunks ahead of a RunCancelled, leaves in one write, not
one frame per event-loop turn, and the terminal event ends the response in the same message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .._run import RunStream
from .._run._channel import wake
from ._disconnect import DisconnectPolicy, client_gone, until_disconnect
from ._frames import FrameEncoder

logger = logging.getLogger("tether.server")

T = TypeVar("T")
OUTBOX_BYTES = 64 * 1024
"""Encoded bytes the relay may have waiting for a slow client before it stops reading the run."""
HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class Outbox:
    """Frames from the relay to the response: put without waiting, taken all at once.

    The relay waits only when the client is ``OUTBOX_BYTES`` behind; the run's own channel then fills
    and the run waits in turn. One producer, one consumer, one event loop.
    """

    __slots__ = ("_parts", "_ready", "_room", "_size", "closed", "ended")

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self._ready: asyncio.Future[None] | None = None  # the response waits for frames
        self._room: asyncio.Future[None] | None = None  # the relay waits for the response
        self.ended = False  # the relay has put its last frames
        self.closed = False  # the response takes no more: frames are dropped

    @property
    def full(self) -> bool:
        return self._size >= OUTBOX_BYTES and not self.closed

    def put(self, data: bytes, *, last: bool = False) -> None:
        if not self.closed:
            self._parts.append(data)
            self._size += len(data)
        self.ended = self.ended or last
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

    def start(self, stream: RunStream) -> Outbox:
        """Relay ``stream`` as SSE frames into a new outbox, from a task of the server's."""
        outbox = Outbox()
        self.spawn(_relay(stream, outbox), f"tether-relay-{stream.run_id}")
        return outbox

    def spawn(self, work: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        """Run ``work`` in a task the server holds until it ends."""
        task = asyncio.get_running_loop().create_task(work, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task


async def _relay(stream: RunStream, outbox: Outbox) -> None:
    """Read the run to its end; forward frames while the client listens, drop them after."""
    encoder = FrameEncoder()
    try:
        while events := await stream.next_batch():
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
    """An ASGI response streaming one run as SSE, honouring the disconnect policy."""

    media_type = "text/event-stream"

    def __init__(self, stream: RunStream, relays: Relays, on_disconnect: DisconnectPolicy) -> None:
        super().__init__(status_code=200)
        self.stream = stream
        self.relays = relays
        self.on_disconnect = on_disconnect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        outbox = self.relays.start(self.stream)
        try:
            await self._respond(outbox, receive, send)
        finally:
            # Only now, with the pump stopped: the relay drops what follows and reads the run to its end.
            outbox.close()

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
        client_gone(self.stream, self.on_disconnect)

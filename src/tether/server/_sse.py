"""Server-sent events for a run, with an explicit policy for a client that goes away.

The run is consumed by a *relay* task the server owns, never by the HTTP response itself: so a
client disconnect can only do what the policy says. ``"cancel"``: the run is cancelled with
``source="consumer"`` (and stored). ``"continue"``: it finishes in the background, its events dropped,
fetchable with GET and cancellable with POST cancel. Frames are ``event: <RunEvent>`` + ``data: <JSON>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Literal

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .._run import BaseRunEvent, RunStream

logger = logging.getLogger("tether.server")

DisconnectPolicy = Literal["cancel", "continue"]
RELAY_FRAMES = 64
BATCH_FRAMES = 128
HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def frame(event: BaseRunEvent) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (event.event.value.encode(), event.model_dump_json().encode())


class Relays:
    """The server's relay tasks (strong references), so runs outlive the requests that started them."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[None]] = set()

    def start(self, stream: RunStream) -> MemoryObjectReceiveStream[bytes]:
        send, receive = anyio.create_memory_object_stream[bytes](RELAY_FRAMES)
        task = asyncio.get_running_loop().create_task(
            _relay(stream, send), name=f"tether-relay-{stream.run_id}"
        )
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return receive


async def _relay(stream: RunStream, send: MemoryObjectSendStream[bytes]) -> None:
    """Read the run to its end; forward frames while the client listens, drop them after."""
    listening = True
    async with send:
        async for event in stream:
            if listening:
                try:
                    await send.send(frame(event))
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    listening = False


class EventStreamResponse(Response):
    """An ASGI response streaming one run as SSE, honouring the disconnect policy."""

    media_type = "text/event-stream"

    def __init__(self, stream: RunStream, relays: Relays, on_disconnect: DisconnectPolicy) -> None:
        super().__init__(status_code=200)
        self.stream = stream
        self.relays = relays
        self.on_disconnect = on_disconnect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.frames = self.relays.start(self.stream)
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        gone = False
        async with anyio.create_task_group() as group:
            group.start_soon(self._watch, receive, group.cancel_scope)
            try:
                await self._pump(send)
            except OSError:  # the client went away while we wrote
                gone = True
                self._client_gone()
            group.cancel_scope.cancel()
        # Only now, with the pump stopped: the relay drops what follows and reads the run to its end.
        self.frames.close()
        if not gone:
            with contextlib.suppress(OSError):  # gone between the last frame and the end
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _pump(self, send: Send) -> None:
        async for first in self.frames:
            batch = [first]
            while len(batch) < BATCH_FRAMES:
                try:
                    batch.append(self.frames.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
            await send({"type": "http.response.body", "body": b"".join(batch), "more_body": True})

    async def _watch(self, receive: Receive, scope: anyio.CancelScope) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._client_gone()
                scope.cancel()
                return

    def _client_gone(self) -> None:
        if self.on_disconnect == "cancel":
            self.stream.handle.request_cancel("client disconnected", "consumer")

"""The HTTP/1.1 side of the loopback server: one asyncio Protocol per connection, one task per request.

Just enough HTTP for the `openai` client: keep-alive, Content-Length request bodies, chunked responses.

Disconnects are seen through `eof_received`/`connection_lost`, never by reading ahead (which would eat
the next keep-alive request); they cancel the request's task, so stalls and pacing end at once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Protocol, cast

from tether.testing._loopback_openai import error_body, route

if TYPE_CHECKING:
    from tether.testing._loopback import Outcome, RecordedRequest, Reply

_MAX_HEAD = 64 * 1024
_MAX_BODY = 64 * 1024 * 1024


class Hooks(Protocol):
    """What the wire side needs from the server state (`_State`); called on the server thread only."""

    validate_tool_history: bool

    def connection_opened(self) -> None: ...
    def connection_closed(self) -> None: ...
    def begin_request(
        self, method: str, path: str, headers: dict[str, str], body: dict[str, Any]
    ) -> RecordedRequest: ...
    def pick_reply(self, record: RecordedRequest) -> Reply: ...
    def next_call_id(self) -> str: ...
    def add_chunks(self, record: RecordedRequest, count: int) -> None: ...
    def finish(self, record: RecordedRequest, outcome: Outcome, status: int | None) -> None: ...
    def client_gone(self, record: RecordedRequest) -> None: ...


@dataclass
class Request:
    """One parsed HTTP request."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


class Connection(asyncio.Protocol):
    """One client connection: takes requests one after another and answers each in its own task."""

    def __init__(self, hooks: Hooks, registry: set[Connection]) -> None:
        self.hooks = hooks
        self._registry = registry
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._writable: asyncio.Future[None] | None = None  # pending while the transport is paused
        self.task: asyncio.Task[None] | None = None
        self.record: RecordedRequest | None = None
        self.gone = False
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._registry.add(self)
        self.hooks.connection_opened()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self.task is None:  # otherwise the running task picks it up when its reply is done
            self._next_request()

    def eof_received(self) -> bool:
        # HTTP clients do not half-close while they still want the answer: treat EOF as gone.
        self._client_gone()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._client_gone()
        self._registry.discard(self)
        if not self.lost.done():
            self.lost.set_result(None)
        self.hooks.connection_closed()

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self._release_writer()

    def _release_writer(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    def _client_gone(self) -> None:
        if self.gone:
            return
        self.gone = True
        if self.record is not None:
            self.hooks.client_gone(self.record)
        if self.task is not None:
            self.task.cancel()
        self._release_writer()

    # -- used by the handlers ------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self.gone and self._transport is not None:
            self._transport.write(data)

    async def drain(self) -> None:
        # Yield even when not paused, so a disconnect during a long burst is seen within one batch.
        if self._writable is None:
            await asyncio.sleep(0)
        else:
            await self._writable

    def respond(
        self, request: Request, status: int, payload: bytes, extra: Sequence[tuple[str, str]] = ()
    ) -> None:
        """Send a whole response with a Content-Length."""
        headers = [("content-type", "application/json"), ("content-length", str(len(payload))), *extra]
        self.write(head(status, headers, request.keep_alive) + payload)

    def start_chunked(
        self, request: Request, content_type: str, extra: Sequence[tuple[str, str]] = ()
    ) -> None:
        """Send the head of a chunked response; the caller writes the chunks."""
        headers = [("content-type", content_type), ("transfer-encoding", "chunked"), *extra]
        self.write(head(200, headers, request.keep_alive))

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # -- request cycle -------------------------------------------------------------------------------

    def _next_request(self) -> None:
        request = _parse_request(self._buffer)
        if request is None:
            return
        if isinstance(request, int):  # unparseable: answer and hang up, nothing to record
            payload = error_body(request, HTTPStatus(request).phrase)
            headers = [("content-type", "application/json"), ("content-length", str(len(payload)))]
            self.write(head(request, headers, keep_alive=False) + payload)
            if self._transport is not None:
                self._transport.close()
            return
        self.task = asyncio.get_running_loop().create_task(self._answer(request))

    async def _answer(self, request: Request) -> None:
        body = _load_object(request.body)
        record = self.hooks.begin_request(request.method, request.path, request.headers, body or {})
        self.record = record
        try:
            await route(self, request, record, body)
        except Exception:
            self.hooks.finish(record, "failed", None)
            self.abort()
            raise
        self.record, self.task = None, None
        transport = self._transport
        if transport is None or transport.is_closing() or self.gone:
            return
        if request.keep_alive:
            self._next_request()
        else:
            transport.close()


async def shutdown(server: asyncio.Server, connections: set[Connection]) -> None:
    """Stop listening, abort every connection, and wait (bounded) until their tasks have ended."""
    server.close()
    current = list(connections)
    waiting: list[asyncio.Future[None]] = [conn.lost for conn in current]
    waiting += [conn.task for conn in current if conn.task is not None]
    for conn in current:
        conn.abort()
    if waiting:
        await asyncio.wait(waiting, timeout=2.0)
    await server.wait_closed()


def _parse_request(buffer: bytearray) -> Request | int | None:
    """Take one whole request off the front of `buffer`: None if incomplete, an HTTP status if bad."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return 431 if len(buffer) > _MAX_HEAD else None
    lines = buffer[:end].decode("latin-1").split("\r\n")
    request_line = lines[0].split(" ")
    if len(request_line) != 3 or not request_line[2].startswith("HTTP/1."):
        return 400
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            return 400
        headers[name.strip().lower()] = value.strip()
    if "transfer-encoding" in headers:  # clients send JSON with a Content-Length; no need for more
        return 501
    length = headers.get("content-length", "0")
    if not length.isdigit() or int(length) > _MAX_BODY:
        return 400
    start, stop = end + 4, end + 4 + int(length)
    if len(buffer) < stop:
        return None
    body = bytes(buffer[start:stop])
    del buffer[:stop]
    method, target, version = request_line
    connection = headers.get("connection", "").lower()
    keep_alive = "close" not in connection and (version != "HTTP/1.0" or "keep-alive" in connection)
    return Request(method, target.split("?", 1)[0], headers, body, keep_alive)


def _load_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def head(status: int, headers: Sequence[tuple[str, str]], keep_alive: bool) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{name}: {value}" for name, value in headers)]
    lines.append(f"connection: {'keep-alive' if keep_alive else 'close'}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

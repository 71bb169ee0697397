"""A loopback OpenAI-compatible chat-completions server for tests and the offline demo.

`LoopbackServer` speaks just enough HTTP/1.1 (keep-alive, chunked SSE) for the `openai` client, plays
scripted `Reply` objects, and records every request. It runs its own event loop in a daemon thread, so
it works from sync code, from async tests, and from any other event loop. Standard library only.

Example::

    with LoopbackServer(Reply(chunks=("Hi", " there"))) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x")
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hey"}])
        assert server.requests[0].outcome == "completed"
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import anyio.to_thread

from tether.testing._loopback_http import Connection, shutdown

__all__ = ["LoopbackServer", "RecordedRequest", "Reply", "ScriptedToolCall"]

Outcome = Literal["pending", "completed", "disconnected", "failed", "rejected"]
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0
_BACKLOG = 4096


@dataclass(frozen=True)
class ScriptedToolCall:
    """A tool call the loopback model makes, streamed after the text as OpenAI does."""

    name: str
    arguments: str = "{}"  # JSON text, streamed in a few pieces
    id: str | None = None  # a fresh "call_<n>" (unique per server) when None


@dataclass(frozen=True)
class Reply:
    """One scripted model response: its content, its timing, and how it fails (if it does).

    Timing fields are in seconds. For non-streaming requests all delays are served before the
    response headers, since headers and body leave together.
    """

    chunks: Sequence[str] = ("Hello", " from", " the", " loopback", " model.")  # one SSE event each
    pace: float = 0.0  # between streamed events (text and tool-call deltas)
    stall: float = 0.0  # after the response headers, before the first event
    header_delay: float = 0.0  # before the response headers
    status: int = 200  # non-200: OpenAI-style JSON error body, no stream
    error_message: str = "loopback error"
    fail_after: int | None = None  # after this many text chunks, fail as `failure` says
    failure: Literal["disconnect", "error_event", "malformed"] = "disconnect"
    finish_reason: str = "stop"  # "tool_calls" replaces the default "stop" when tool_calls are set
    tool_calls: Sequence[ScriptedToolCall] = ()
    headers: Sequence[tuple[str, str]] = ()  # extra response headers, e.g. ("retry-after", "0")


@dataclass
class RecordedRequest:
    """What the server saw of one HTTP request, and how answering it ended.

    `chunks_sent` counts text chunks actually handed to the socket. `disconnected_at` is set only when
    the client went away before the reply finished (outcome "disconnected").
    """

    index: int
    path: str
    body: dict[str, Any]  # parsed JSON request body ({} when absent or malformed)
    headers: dict[str, str]  # lower-cased names
    started_at: float  # time.monotonic()
    finished_at: float | None = None
    outcome: Outcome = "pending"
    chunks_sent: int = 0
    disconnected_at: float | None = None
    method: str = "POST"
    status: int | None = None  # HTTP status sent, None until then
    reply: Reply | None = field(default=None, repr=False)  # the script it was answered with


class _State:
    """Everything the server thread mutates and other threads read; guarded by one lock.

    The HTTP side calls the hook methods (on the server thread); each change wakes `wait_until` and
    `await_until` waiters.
    """

    def __init__(self, default: Reply, validate_tool_history: bool) -> None:
        self.lock = threading.RLock()  # re-entrant: wait_until predicates read properties under it
        self.changed = threading.Condition(self.lock)
        self.default = default
        self.validate_tool_history = validate_tool_history
        self.closing = False
        self.fifo: deque[Reply] = deque()
        self.routes: dict[str, Reply] = {}
        self.records: list[RecordedRequest] = []
        self.open_connections = 0
        self.total_connections = 0
        self.wakers: set[Callable[[], None]] = set()
        self._call_ids = 0

    def notify(self) -> None:
        with self.lock:
            self.changed.notify_all()
            for wake in list(self.wakers):
                wake()

    def connection_opened(self) -> None:
        with self.lock:
            self.open_connections += 1
            self.total_connections += 1
            self.notify()

    def connection_closed(self) -> None:
        with self.lock:
            self.open_connections -= 1
            self.notify()

    def begin_request(
        self, method: str, path: str, headers: dict[str, str], body: dict[str, Any]
    ) -> RecordedRequest:
        with self.lock:
            record = RecordedRequest(len(self.records), path, body, headers, time.monotonic(), method=method)
            self.records.append(record)
            self.notify()
            return record

    def pick_reply(self, record: RecordedRequest) -> Reply:
        """FIFO first, then a route for the request's model, then the default."""
        with self.lock:
            if self.fifo:
                reply = self.fifo.popleft()
            else:
                reply = self.routes.get(str(record.body.get("model")), self.default)
            record.reply = reply
            return reply

    def next_call_id(self) -> str:
        with self.lock:
            self._call_ids += 1
            return f"call_{self._call_ids}"

    def add_chunks(self, record: RecordedRequest, count: int) -> None:
        with self.lock:
            record.chunks_sent += count
            self.notify()

    def finish(self, record: RecordedRequest, outcome: Outcome, status: int | None) -> None:
        with self.lock:
            if record.outcome == "pending":
                record.outcome, record.finished_at = outcome, time.monotonic()
            if status is not None and record.status is None:
                record.status = status
            self.notify()

    def client_gone(self, record: RecordedRequest) -> None:
        # A shutdown abort is not the client's doing, so it is a failure rather than a disconnect.
        with self.lock:
            if record.outcome != "pending":
                return
            now = time.monotonic()
            record.finished_at = now
            if self.closing:
                record.outcome = "failed"
            else:
                record.outcome, record.disconnected_at = "disconnected", now
            self.notify()


class LoopbackServer:
    """An OpenAI-compatible chat-completions server on localhost, scripted with `Reply` objects.

    Each chat request takes the next `push`-ed reply, else the `route` for its model, else `default`.
    Requests rejected before a reply is chosen (bad JSON, invalid tool history, 404) consume nothing.
    All methods are thread-safe; `start` and `stop` block (use `async with` from async code).
    """

    def __init__(
        self,
        reply: Reply | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        validate_tool_history: bool = True,
    ) -> None:
        self._state = _State(reply if reply is not None else Reply(), validate_tool_history)
        self._host = host
        self._requested_port = port
        self._port: int | None = None
        self._lifecycle = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._startup_error: BaseException | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> LoopbackServer:
        """Bind and serve in a daemon thread; returns self. A no-op when already running."""
        with self._lifecycle:
            if self._thread is not None:
                return self
            self._state.closing = False
            self._startup_error = None
            ready = threading.Event()
            thread = threading.Thread(target=self._run, args=(ready,), name="tether-loopback", daemon=True)
            thread.start()
            if not ready.wait(_START_TIMEOUT):
                raise RuntimeError("loopback server did not start in time")
            if self._startup_error is not None:
                thread.join(_STOP_TIMEOUT)
                raise RuntimeError("loopback server failed to start") from self._startup_error
            self._thread = thread
            return self

    def stop(self) -> None:
        """Close the listener and every connection, then join the thread (bounded). Idempotent."""
        with self._lifecycle:
            thread, self._thread = self._thread, None
            if thread is None:
                return
            loop, stop_event = self._loop, self._stop_event
            if loop is not None and stop_event is not None:
                with contextlib.suppress(RuntimeError):  # the loop already ended (it crashed)
                    loop.call_soon_threadsafe(stop_event.set)
            thread.join(_STOP_TIMEOUT)

    def _run(self, ready: threading.Event) -> None:
        try:
            asyncio.run(self._serve(ready))
        except Exception as exc:  # reported by start() when startup is what failed
            self._startup_error = exc
        finally:
            ready.set()

    async def _serve(self, ready: threading.Event) -> None:
        loop = asyncio.get_running_loop()
        self._loop, self._stop_event = loop, asyncio.Event()
        connections: set[Connection] = set()
        server = await loop.create_server(
            lambda: Connection(self._state, connections),
            self._host,
            self._requested_port,
            # asyncio's default of 100 drops connection attempts when thousands of runs start at once
            # (the client then retries after 1 s, 3 s, ...); the kernel caps it at net.core.somaxconn.
            backlog=_BACKLOG,
        )
        self._port = server.sockets[0].getsockname()[1]
        ready.set()
        await self._stop_event.wait()
        self._state.closing = True
        await shutdown(server, connections)

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> LoopbackServer:
        return await anyio.to_thread.run_sync(self.start)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await anyio.to_thread.run_sync(self.stop)

    # -- scripting ---------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, e.g. "http://127.0.0.1:5123/v1"; valid once started."""
        if self._port is None:
            raise RuntimeError("LoopbackServer is not started")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}/v1"

    @property
    def default(self) -> Reply:
        """The reply used when the FIFO is empty and no route matches."""
        with self._state.lock:
            return self._state.default

    @default.setter
    def default(self, reply: Reply) -> None:
        with self._state.lock:
            self._state.default = reply

    def push(self, *replies: Reply) -> None:
        """Queue replies: each next chat request takes the next one."""
        with self._state.lock:
            self._state.fifo.extend(replies)

    def route(self, model: str, reply: Reply) -> None:
        """Answer requests for `model` with `reply` (once the FIFO is empty)."""
        with self._state.lock:
            self._state.routes[model] = reply

    def reset(self) -> None:
        """Forget recorded requests and queued replies; routes, default and connections stay."""
        with self._state.lock:
            self._state.records.clear()
            self._state.fifo.clear()
            self._state.notify()

    # -- observing ---------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot (copies) of every request seen so far, in arrival order."""
        with self._state.lock:
            return [copy.copy(record) for record in self._state.records]

    @property
    def disconnects(self) -> list[RecordedRequest]:
        """The requests whose client went away before the reply finished."""
        return [record for record in self.requests if record.outcome == "disconnected"]

    @property
    def open_connections(self) -> int:
        with self._state.lock:
            return self._state.open_connections

    @property
    def total_connections(self) -> int:
        with self._state.lock:
            return self._state.total_connections

    def wait_until(self, predicate: Callable[[LoopbackServer], bool], timeout: float = 5.0) -> bool:
        """Block until `predicate(self)` holds; False on timeout. Re-checked on every record change."""
        with self._state.changed:
            return bool(self._state.changed.wait_for(lambda: predicate(self), timeout))

    async def await_until(
        self,
        predicate: Callable[[LoopbackServer], bool],
        timeout: float = 5.0,  # noqa: ASYNC109 - mirrors wait_until; returns False rather than raising
    ) -> bool:
        """Like `wait_until`, without blocking the running asyncio loop."""
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the waiting loop has closed; nobody to wake
                loop.call_soon_threadsafe(changed.set)

        with self._state.lock:
            self._state.wakers.add(wake)
        try:
            deadline = loop.time() + timeout
            while True:
                changed.clear()  # before the check, so a change racing with it still wakes us
                if predicate(self):
                    return True
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                try:
                    async with asyncio.timeout(remaining):
                        await changed.wait()
                except TimeoutError:
                    return bool(predicate(self))
        finally:
            with self._state.lock:
                self._state.wakers.discard(wake)

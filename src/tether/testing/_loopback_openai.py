"""The OpenAI side of the loopback server: routes, chat-completion JSON, streaming, scripted failures.

Chunk JSON comes from a per-response template (only the delta is serialized per event), and unpaced
events leave in batches, one HTTP chunk per write: 20,000 chunks take a few tens of milliseconds.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tether.testing._loopback import Outcome, RecordedRequest, Reply
    from tether.testing._loopback_http import Connection, Request

_BATCH = 64  # SSE events per write when unpaced: a write per event would be the main cost
_CHAT_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})
_MODELS_PATHS = frozenset({"/v1/models", "/models"})
_MODELS = {
    "object": "list",
    "data": [{"id": "loopback", "object": "model", "created": 0, "owned_by": "tether"}],
}
_SSE_EXTRA = (("cache-control", "no-cache"),)
_LAST_CHUNK = b"0\r\n\r\n"
_DONE = "data: [DONE]\n\n"
_MALFORMED = "data: {not json\n\n"
_BAD_JSON = "We could not parse the JSON body of your request."
_ERROR_CODES = {401: "invalid_api_key", 404: "unknown_url", 429: "rate_limit_exceeded"}
_DANGLING = (
    "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
    "'tool_call_id'. The following tool_call_ids did not have response messages: {ids}"
)
_ORPHAN = (  # "preceeding" is OpenAI's own spelling
    "Invalid parameter: messages with role 'tool' must be a response to a preceeding message "
    "with 'tool_calls'."
)
_encode = json.JSONEncoder(separators=(",", ":")).encode


def error_body(status: int, message: str, *, param: str | None = None) -> bytes:
    kind = "invalid_request_error" if status < 500 else "server_error"
    error = {"message": message, "type": kind, "param": param, "code": _ERROR_CODES.get(status, kind)}
    return _encode({"error": error}).encode()


def _tool_history_problem(messages: object) -> str | None:
    """OpenAI's complaint about `messages`, if any: each tool call answered, each tool message asked for."""
    if not isinstance(messages, list):
        return None
    pending: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        if message.get("role") == "tool":
            if message.get("tool_call_id") not in pending:
                return _ORPHAN
            pending.remove(message["tool_call_id"])
            continue
        if pending:
            return _DANGLING.format(ids=", ".join(pending))
        if message.get("role") == "assistant":
            calls = message.get("tool_calls")
            calls = calls if isinstance(calls, list) else []
            pending = [str(call.get("id")) for call in calls if isinstance(call, dict)]
    return _DANGLING.format(ids=", ".join(pending)) if pending else None


async def route(
    conn: Connection, request: Request, record: RecordedRequest, body: dict[str, Any] | None
) -> None:
    """Answer one request: the model list, a chat completion, or an OpenAI-style error."""
    if request.path in _MODELS_PATHS and request.method == "GET":
        conn.hooks.finish(record, "completed", 200)
        conn.respond(request, 200, _encode(_MODELS).encode())
    elif request.path not in _CHAT_PATHS or request.method != "POST":
        _reject(conn, request, record, 404, f"Invalid URL ({request.method} {request.path})")
    elif body is None:
        _reject(conn, request, record, 400, _BAD_JSON)
    elif conn.hooks.validate_tool_history and (problem := _tool_history_problem(body.get("messages"))):
        _reject(conn, request, record, 400, problem, param="messages")
    else:  # only now is a reply taken, so rejected requests leave the script as it was
        await _chat(_Exchange(conn, request, record, body, conn.hooks.pick_reply(record)))


def _reject(
    conn: Connection,
    request: Request,
    record: RecordedRequest,
    status: int,
    message: str,
    param: str | None = None,
) -> None:
    conn.hooks.finish(record, "rejected", status)
    conn.respond(request, status, error_body(status, message, param=param))


class _ChatFormat:
    """The JSON of one response. Chunks come from a template: per event only the delta is serialized."""

    def __init__(self, body: dict[str, Any], reply: Reply, call_ids: list[str]) -> None:
        self.body, self.reply, self.call_ids = body, reply, call_ids
        self.id, self.created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        self.model = body.get("model", "loopback")
        meta = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
        }
        self._head = _encode(meta)[:-1]
        self._open = f'data: {self._head},"choices":[{{"index":0,"delta":'

    @property
    def finish_reason(self) -> str:
        reply = self.reply
        return "tool_calls" if reply.tool_calls and reply.finish_reason == "stop" else reply.finish_reason

    @property
    def wants_usage(self) -> bool:
        options = self.body.get("stream_options")
        return isinstance(options, dict) and options.get("include_usage") is True

    def delta(self, delta: str, finish_reason: str | None = None) -> str:
        finish = "null" if finish_reason is None else _encode(finish_reason)
        return f'{self._open}{delta},"finish_reason":{finish}}}]}}\n\n'

    def role_event(self) -> str:
        return self.delta('{"role":"assistant","content":""}')

    def finish_event(self) -> str:
        return self.delta("{}", self.finish_reason)

    def error_event(self) -> str:
        return (
            f"data: {_encode({'error': {'message': self.reply.error_message, 'type': 'server_error'}})}\n\n"
        )

    def usage_event(self) -> str:
        return f'data: {self._head},"choices":[],"usage":{_encode(self.usage())}}}\n\n'

    def body_events(self) -> Iterator[tuple[str, bool]]:
        """(SSE event, is a text chunk): the text deltas, then the tool calls as OpenAI streams them."""
        head = self._open
        for text in self.reply.chunks:
            yield f'{head}{{"content":{_encode(text)}}},"finish_reason":null}}]}}\n\n', True
        for index, (call, call_id) in enumerate(zip(self.reply.tool_calls, self.call_ids, strict=True)):
            function = {"name": call.name, "arguments": ""}
            opening = {"index": index, "id": call_id, "type": "function", "function": function}
            yield self.delta(_encode({"tool_calls": [opening]})), False
            size = max(1, -(-len(call.arguments) // 3))  # three pieces, as a model writes them out
            for start in range(0, len(call.arguments), size):
                piece = {"index": index, "function": {"arguments": call.arguments[start : start + size]}}
                yield self.delta(_encode({"tool_calls": [piece]})), False

    def completion(self) -> bytes:
        """The whole `chat.completion` object, for a request that did not ask to stream."""
        reply = self.reply
        text = "".join(reply.chunks)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": text if text or not reply.tool_calls else None,
        }
        if reply.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call, call_id in zip(reply.tool_calls, self.call_ids, strict=True)
            ]
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish_reason}
        meta = {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model}
        return _encode({**meta, "choices": [choice], "usage": self.usage()}).encode()

    def usage(self) -> dict[str, int]:
        """Word counts: deterministic, and close enough to tokens for tests."""
        prompt = sum(_words(message) for message in _as_list(self.body.get("messages")))
        completion = len("".join(self.reply.chunks).split())
        completion += sum(1 + len(call.arguments.split()) for call in self.reply.tool_calls)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _as_list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _words(message: object) -> int:
    content = message.get("content") if isinstance(message, dict) else None
    parts = [content] if isinstance(content, str) else _as_list(content)
    texts = (part.get("text") if isinstance(part, dict) else part for part in parts)
    return sum(len(text.split()) for text in texts if isinstance(text, str))


@dataclass
class _Exchange:
    """One chat request being answered with one reply."""

    conn: Connection
    request: Request
    record: RecordedRequest
    body: dict[str, Any]
    reply: Reply
    fmt: _ChatFormat = field(init=False)

    def __post_init__(self) -> None:
        call_ids = [call.id or self.conn.hooks.next_call_id() for call in self.reply.tool_calls]
        self.fmt = _ChatFormat(self.body, self.reply, call_ids)

    def respond(self, status: int, payload: bytes, outcome: Outcome) -> None:
        """Record the outcome, then send the whole response (so a fast client never sees a stale record)."""
        self.finish(outcome, status)
        self.conn.respond(self.request, status, payload, self.reply.headers)

    def finish(self, outcome: Outcome, status: int | None) -> None:
        self.conn.hooks.finish(self.record, outcome, status)


async def _chat(ex: _Exchange) -> None:
    reply = ex.reply
    if reply.header_delay > 0:
        await asyncio.sleep(reply.header_delay)
    if reply.status != 200:
        ex.respond(reply.status, error_body(reply.status, reply.error_message), "failed")
    elif ex.body.get("stream") is True:
        await _stream(ex)
    else:
        await _complete(ex)


class _Batch:
    """SSE events waiting to leave as one HTTP chunk, in one transport write."""

    def __init__(self, ex: _Exchange) -> None:
        self._ex = ex
        self.parts: list[str] = []
        self.texts = 0  # text events added so far
        self._unreported = 0  # text events not yet counted in the record

    def add(self, event: str, is_text: bool = False) -> None:
        self.parts.append(event)
        if is_text:
            self.texts += 1
            self._unreported += 1

    def flush(self, end: Outcome | None = None) -> None:
        """Write what is waiting; ``end``: also close the stream, recording that outcome first."""
        data = "".join(self.parts).encode()
        self.parts.clear()
        frame = b"%x\r\n%b\r\n" % (len(data), data) if data else b""
        # Account before writing: once written, a fast client may look at the record.
        if self._unreported and not self._ex.conn.gone:
            self._ex.conn.hooks.add_chunks(self._ex.record, self._unreported)
        self._unreported = 0
        if end is not None:
            self._ex.finish(end, 200)
        self._ex.conn.write(frame + _LAST_CHUNK if end is not None else frame)


async def _stream(ex: _Exchange) -> None:
    reply, fmt = ex.reply, ex.fmt
    ex.conn.start_chunked(ex.request, "text/event-stream; charset=utf-8", [*_SSE_EXTRA, *reply.headers])
    if reply.stall > 0:
        await asyncio.sleep(reply.stall)
    out = _Batch(ex)
    out.add(fmt.role_event())
    if await _pump(ex, out):
        _fail_stream(ex, out)
        return
    out.add(fmt.finish_event())
    if fmt.wants_usage:
        out.add(fmt.usage_event())
    out.add(_DONE)
    out.flush(end="completed")


async def _pump(ex: _Exchange, out: _Batch) -> bool:
    """Send the text and tool-call events; True when the script says to fail before the end."""
    reply, conn = ex.reply, ex.conn
    limit = 1 if reply.pace > 0 else _BATCH
    for position, (event, is_text) in enumerate(ex.fmt.body_events()):
        if reply.fail_after is not None and out.texts >= reply.fail_after:
            return True
        if position and reply.pace > 0:
            await asyncio.sleep(reply.pace)
        out.add(event, is_text)
        if len(out.parts) >= limit:
            out.flush()
            await conn.drain()
    return reply.fail_after is not None


def _fail_stream(ex: _Exchange, out: _Batch) -> None:
    if ex.reply.failure == "disconnect":
        out.flush()
        ex.finish("failed", 200)
        ex.conn.abort()
        return
    out.add(ex.fmt.error_event() if ex.reply.failure == "error_event" else _MALFORMED)
    out.flush(end="failed")


async def _complete(ex: _Exchange) -> None:
    reply = ex.reply
    delay = reply.stall + reply.pace * max(len(reply.chunks) - 1, 0)
    if delay > 0:  # headers and body leave together, so the whole stream's time is spent up front
        await asyncio.sleep(delay)
    if reply.fail_after is None:
        ex.conn.hooks.add_chunks(ex.record, len(reply.chunks))
        ex.respond(200, ex.fmt.completion(), "completed")
    elif reply.failure == "disconnect":
        ex.finish("failed", None)
        ex.conn.abort()
    elif reply.failure == "error_event":
        ex.respond(500, error_body(500, reply.error_message), "failed")
    else:
        ex.respond(200, b"{not json", "failed")

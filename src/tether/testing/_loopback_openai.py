"""OpenAI's chat-completion JSON for the loopback server: chunks, completions, errors, validation.

Pure functions over a request body and a `Reply`; the HTTP side decides when each piece is sent.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tether.testing._loopback import Reply

MODELS = {
    "object": "list",
    "data": [{"id": "loopback", "object": "model", "created": 0, "owned_by": "tether"}],
}
DONE = "data: [DONE]\n\n"
MALFORMED = "data: {not json\n\n"
BAD_JSON = "We could not parse the JSON body of your request."
_ERROR_CODES = {401: "invalid_api_key", 404: "unknown_url", 429: "rate_limit_exceeded"}
_DANGLING = (
    "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
    "'tool_call_id'. The following tool_call_ids did not have response messages: {ids}"
)
# "preceeding" is OpenAI's own spelling; tests may match the message.
_ORPHAN = "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'."

encode = json.JSONEncoder(separators=(",", ":")).encode


def error_body(status: int, message: str, *, param: str | None = None) -> bytes:
    kind = "invalid_request_error" if status < 500 else "server_error"
    error = {"message": message, "type": kind, "param": param, "code": _ERROR_CODES.get(status, kind)}
    return encode({"error": error}).encode()


def error_event(message: str) -> str:
    return f"data: {encode({'error': {'message': message, 'type': 'server_error'}})}\n\n"


def tool_history_problem(messages: object) -> str | None:
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
            calls = message.get("tool_calls") or ()
            pending = [str(call.get("id")) for call in calls if isinstance(call, dict)]
    return _DANGLING.format(ids=", ".join(pending)) if pending else None


class ChatFormat:
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
        self._head = encode(meta)[:-1]
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
        finish = "null" if finish_reason is None else encode(finish_reason)
        return f'{self._open}{delta},"finish_reason":{finish}}}]}}\n\n'

    def role_event(self) -> str:
        return self.delta('{"role":"assistant","content":""}')

    def finish_event(self) -> str:
        return self.delta("{}", self.finish_reason)

    def usage_event(self) -> str:
        return f'data: {self._head},"choices":[],"usage":{encode(self.usage())}}}\n\n'

    def body_events(self) -> Iterator[tuple[str, bool]]:
        """(SSE event, is a text chunk): the text deltas, then the tool calls as OpenAI streams them."""
        head = self._open
        for text in self.reply.chunks:
            yield f'{head}{{"content":{encode(text)}}},"finish_reason":null}}]}}\n\n', True
        for index, (call, call_id) in enumerate(zip(self.reply.tool_calls, self.call_ids, strict=True)):
            function = {"name": call.name, "arguments": ""}
            opening = {"index": index, "id": call_id, "type": "function", "function": function}
            yield self.delta(encode({"tool_calls": [opening]})), False
            size = max(1, -(-len(call.arguments) // 3))  # three pieces, as a model writes them out
            for start in range(0, len(call.arguments), size):
                piece = {"index": index, "function": {"arguments": call.arguments[start : start + size]}}
                yield self.delta(encode({"tool_calls": [piece]})), False

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
        return encode({**meta, "choices": [choice], "usage": self.usage()}).encode()

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

"""OpenAIChat: any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama, llama.cpp).

It uses the official ``openai`` client for the request (auth, retries, errors) and reads the SSE
stream itself: one ``json.loads`` per chunk and plain ``str`` deltas, no per-chunk objects.
On cancel it closes the HTTP response (shielded, bounded), so the provider sees the disconnect.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import anyio
import httpx2
import openai

from .._loopbound import LoopBound
from .._messages import Message, ToolCall, ToolCallFunction
from ..exceptions import (
    ConfigurationError,
    ModelConnectionError,
    ModelError,
    ModelResponseError,
    ModelStatusError,
    ModelTimeoutError,
)
from ._clients import ClientSet
from .base import ModelDelta, ModelTurnEnd, ModelUsage, ToolSpec

CLOSE_TIMEOUT = 2.0


class OpenAIChat:
    """A chat model behind an OpenAI-compatible endpoint.

    ``api_key`` defaults to ``OPENAI_API_KEY`` and ``base_url`` to ``OPENAI_BASE_URL``; a local
    server (Ollama, vLLM, llama.cpp) needs only ``base_url``. ``client`` lets you pass your own
    ``openai.AsyncOpenAI`` (you then own its lifetime, its event loop and its connection limits).

    Without ``client``, each event loop gets its own clients, and a client carries at most
    ``streams_per_client`` concurrent streams (one connection each); more streams open more
    clients. httpx's connection pool spends time in proportion to its size on every request and
    every close, so thousands of live streams are faster to start and to cancel in small pools.

    Example::

        model = OpenAIChat(id="llama3.2", base_url="http://localhost:11434/v1")
    """

    def __init__(
        self,
        id: str = "gpt-5-mini",
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        organization: str | None = None,
        timeout: float | None = None,
        max_retries: int = 2,
        temperature: float | None = None,
        max_tokens: int | None = None,
        include_usage: bool = True,
        extra_body: dict[str, Any] | None = None,
        client: openai.AsyncOpenAI | None = None,
        streams_per_client: int = 100,
    ) -> None:
        if not id or not isinstance(id, str):
            raise ConfigurationError("OpenAIChat needs a model id, e.g. OpenAIChat(id='gpt-5-mini')")
        if type(streams_per_client) is not int or streams_per_client < 1:
            raise ConfigurationError(f"streams_per_client must be an int >= 1 (got {streams_per_client!r})")
        self._id = id
        self.base_url = base_url
        self.api_key = api_key
        self.organization = organization
        self.timeout = timeout
        self.max_retries = max_retries
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.include_usage = include_usage
        self.extra_body = dict(extra_body or {})
        self.streams_per_client = streams_per_client
        self._own_client = client
        self._ssl_context: ssl.SSLContext | None = None
        self._clients = LoopBound(lambda: ClientSet(self._new_client, streams_per_client), ClientSet.close)

    @property
    def id(self) -> str:
        return self._id

    def __repr__(self) -> str:
        return f"OpenAIChat(id={self._id!r}, base_url={self._base_url()!r})"

    def stream(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[ModelDelta]:
        """Stream one response: text deltas, then a :class:`ModelTurnEnd`."""
        return self._stream(messages, tools)

    def _base_url(self) -> str | None:
        return self.base_url or os.environ.get("OPENAI_BASE_URL") or None

    def _new_client(self, connections: int) -> openai.AsyncOpenAI:
        base_url = self._base_url()
        api_key = self.api_key or os.environ.get("OPENAI_API_KEY")
        if not api_key:
            if base_url is None:
                raise ConfigurationError(
                    "no API key for OpenAIChat: pass api_key=... or set OPENAI_API_KEY "
                    "(for a local server such as Ollama or vLLM, pass base_url=... or set OPENAI_BASE_URL)"
                )
            api_key = "not-needed"  # local OpenAI-compatible servers ignore it; the client wants one
        if self._ssl_context is None:  # one for all clients: each would load the CA bundle again
            self._ssl_context = httpx2.create_ssl_context()
        limits = httpx2.Limits(max_connections=connections, max_keepalive_connections=connections)
        http = openai.DefaultAsyncHttpxClient(limits=limits, verify=self._ssl_context)
        kwargs: dict[str, Any] = {
            "api_key": api_key,
            "base_url": base_url,
            "max_retries": self.max_retries,
            "http_client": http,
        }
        if self.organization:
            kwargs["organization"] = self.organization
        if self.timeout is not None:
            kwargs["timeout"] = self.timeout
        return openai.AsyncOpenAI(**kwargs)

    def _body(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self._id,
            "messages": [m.to_provider() for m in messages],
            "stream": True,
        }
        if tools:
            body["tools"] = list(tools)
        if self.include_usage:
            body["stream_options"] = {"include_usage": True}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body["max_completion_tokens"] = self.max_tokens
        return body

    async def _stream(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec]
    ) -> AsyncGenerator[ModelDelta, None]:
        # One generator step per network read (a list of texts), not per chunk: the step is most of
        # the per-chunk cost once the JSON is parsed.
        client, lease = self._own_client, None
        if client is None:
            lease = (await self._clients.get()).lease()
            client = lease.client
        try:
            response = await self._open(client, messages, tools)
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        turn = _Turn()
        # SSE usually comes uncompressed: then the raw reads, without aiter_bytes' decoding layer.
        raw = not response.is_stream_consumed and "content-encoding" not in response.headers
        reads = response.aiter_raw() if raw else response.aiter_bytes()
        try:
            async for block in reads:
                texts, failure = turn.read(block)
                if texts:
                    yield texts  # what came before a failure in the same read is still delivered
                if failure is not None:
                    raise failure
                if turn.done:
                    break
            else:  # the body ended: its last line may have come without a newline
                texts, failure = turn.read(None)
                if texts:
                    yield texts
                if failure is not None:
                    raise failure
            yield turn.end()
        except ModelError:
            raise
        except Exception as exc:
            raise self._translate(exc) from exc
        finally:
            # A read that failed or was cancelled has closed the response on its way out; else
            # close the reads now rather than leave a suspended generator for the event loop to
            # finalize in a task of its own later.
            if not response.is_closed or getattr(reads, "ag_frame", None) is not None:
                with anyio.move_on_after(CLOSE_TIMEOUT, shield=True):
                    await reads.aclose()
                    await response.aclose()
            if lease is not None:
                lease.release()

    async def _open(
        self, client: openai.AsyncOpenAI, messages: Sequence[Message], tools: Sequence[ToolSpec]
    ) -> httpx2.Response:
        """Send the request; the response is open for streaming."""
        try:
            # The client's generic ``post`` (its auth, retries, timeout and status errors) returning the
            # raw response: ``chat.completions.create`` would add a per-request wrapper, a transformed
            # copy of the body and parsing machinery that a live stream keeps alive for its whole life.
            return await client.post(
                "/chat/completions",
                cast_to=httpx2.Response,
                body=self._body(messages, tools),
                options={"extra_json": self.extra_body} if self.extra_body else {},
                stream=True,
            )
        except Exception as exc:
            raise self._translate(exc) from exc

    def _translate(self, exc: Exception) -> Exception:
        where = self._base_url() or "the OpenAI API"
        if isinstance(exc, ModelError | ConfigurationError):
            return exc
        if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException):
            return ModelTimeoutError(f"the model endpoint ({where}) timed out")
        if isinstance(exc, openai.APIConnectionError | httpx2.ConnectError):
            cause = exc.__cause__ or exc
            return ModelConnectionError(f"could not connect to the model endpoint ({where}): {cause}")
        if isinstance(exc, openai.APIStatusError):
            return ModelStatusError(
                f"the model endpoint ({where}) answered HTTP {exc.status_code}: {_status_detail(exc)}",
                status_code=exc.status_code,
            )
        if isinstance(exc, httpx2.RequestError):
            return ModelResponseError(
                f"the response stream from {where} broke off: {exc or type(exc).__name__}"
            )
        if isinstance(exc, ValueError | TypeError | AttributeError | KeyError | IndexError):
            return ModelResponseError(f"malformed response stream from {where}: {type(exc).__name__}: {exc}")
        if isinstance(exc, openai.OpenAIError):
            return ModelError(f"the OpenAI client failed: {exc}")
        return exc


class _Turn:
    """What one streamed response says besides its text: finish reason, tool calls, usage."""

    __slots__ = ("calls", "done", "finish_reason", "pending", "usage")

    def __init__(self) -> None:
        self.done = False
        self.finish_reason: str | None = None
        self.usage: ModelUsage | None = None
        self.calls: dict[int, dict[str, str]] = {}
        self.pending = b""  # the start of a line whose end has not arrived yet

    def read(self, block: bytes | None) -> tuple[list[str], Exception | None]:
        """The texts of one network read (None: the body ended), and the failure that cut it short."""
        texts: list[str] = []
        try:
            for data in self.payloads(block):
                if self.take(data, texts):
                    break
        except Exception as exc:
            return texts, exc
        return texts, None

    def payloads(self, block: bytes | None) -> list[str]:
        """The ``data:`` payloads completed by one network read (None: the body ended).

        Leaner than ``aiter_lines`` (layers of generators and an incremental decoder): each read is
        split into lines once. Events here are single-line JSON, so other fields, comments and blank
        lines are skipped.
        """
        if block is None:
            block = b"\n"  # a last line may come without its newline
        if self.pending:
            block = self.pending + block
        if b"\r" in block:  # CRLF or bare CR line ends (the SSE spec allows both)
            block = block.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        cut = block.rfind(b"\n") + 1
        self.pending = block[cut:]
        # Decoding only up to a newline never splits a UTF-8 character (no multibyte one holds 0x0A).
        text = block[:cut].decode()
        return [line[5:] for line in text.split("\n") if line.startswith("data:")]

    def take(self, data: str, texts: list[str]) -> bool:
        """Read one ``data:`` payload, appending its text to ``texts``; True at ``[DONE]``."""
        try:
            chunk = json.loads(data)
        except ValueError:
            # "[DONE]" is not JSON: checked only when parsing fails, once per stream.
            if data.strip() == "[DONE]":
                self.done = True
                return True
            raise
        choices = chunk.get("choices")
        if choices:
            choice = choices[0]
            delta = choice.get("delta")
            if delta:
                text = delta.get("content")
                if text:
                    texts.append(text)
                if delta.get("tool_calls"):
                    _merge_tool_calls(self.calls, delta["tool_calls"])
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        elif "error" in chunk:
            raise ModelResponseError(f"the model endpoint reported an error: {_error_text(chunk)}")
        if chunk.get("usage"):
            self.usage = _usage(chunk["usage"])
        return False

    def end(self) -> ModelTurnEnd:
        if not self.done and self.finish_reason is None:
            raise ModelResponseError("the response stream ended before the model finished")
        calls = _tool_calls(self.calls)
        return ModelTurnEnd(finish_reason=self.finish_reason, tool_calls=calls, usage=self.usage)


def _merge_tool_calls(calls: dict[int, dict[str, str]], deltas: list[dict[str, Any]]) -> None:
    for item in deltas:
        call = calls.setdefault(int(item.get("index", 0)), {"id": "", "name": "", "arguments": ""})
        if item.get("id"):
            call["id"] = item["id"]
        function = item.get("function") or {}
        if function.get("name"):
            call["name"] += function["name"]
        if function.get("arguments"):
            call["arguments"] += function["arguments"]


def _tool_calls(calls: dict[int, dict[str, str]]) -> list[ToolCall]:
    return [
        ToolCall(
            id=c["id"] or f"call_{i}",
            function=ToolCallFunction(name=c["name"], arguments=c["arguments"] or "{}"),
        )
        for i, c in sorted(calls.items())
    ]


def _usage(raw: dict[str, Any]) -> ModelUsage:
    return ModelUsage(
        input_tokens=raw.get("prompt_tokens"),
        output_tokens=raw.get("completion_tokens"),
        total_tokens=raw.get("total_tokens"),
    )


def _error_text(chunk: dict[str, Any]) -> str:
    error = chunk.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error)


def _status_detail(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return exc.message

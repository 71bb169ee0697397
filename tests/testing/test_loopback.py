"""The loopback OpenAI server, over real HTTP: wire format, scripting, failures, disconnects, speed."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import anyio
import httpx2
import openai
import pytest
from openai.types.chat import (
    ChatCompletionMessageFunctionToolCallParam,
    ChatCompletionMessageParam,
    ChatCompletionStreamOptionsParam,
    ChatCompletionToolMessageParam,
)

from tether.testing import pytest_plugin
from tether.testing._loopback import LoopbackServer, Reply, ScriptedToolCall

# The pytest11 entry point provides this fixture once tether is installed; binding it here keeps these
# tests runnable from a bare checkout too (a module-level fixture simply takes precedence).
loopback_server = pytest_plugin.loopback_server

pytestmark = pytest.mark.timeout(10)

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "say hello to the test"}]
DEFAULT_TEXT = ["Hello", " from", " the", " loopback", " model."]
CALL: ChatCompletionMessageFunctionToolCallParam = {
    "id": "call_9",
    "type": "function",
    "function": {"name": "f", "arguments": "{}"},
}
ASKED: list[ChatCompletionMessageParam] = [
    *USER,
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
]
ANSWER: ChatCompletionToolMessageParam = {"role": "tool", "tool_call_id": "call_9", "content": "42"}


def _body(stream: bool = False, messages: list[Any] | None = None) -> dict[str, Any]:
    return {"model": "loopback", "messages": messages or USER, "stream": stream}


def _client(server: LoopbackServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0)


def _sse_data(text: str) -> list[str]:
    """The `data:` payloads of an SSE body, in order."""
    return [event.removeprefix("data: ") for event in text.split("\n\n") if event]


async def _raw_stream(server: LoopbackServer) -> list[str]:
    async with httpx2.AsyncClient(base_url=server.base_url) as http:
        response = await http.post("/chat/completions", json=_body(stream=True))
        assert response.headers["content-type"].startswith("text/event-stream")
        return _sse_data(response.text)


# -- wire format -----------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_stream_parses_into_the_scripted_deltas_and_usage(loopback_server: LoopbackServer) -> None:
    async with _client(loopback_server) as client:
        options: ChatCompletionStreamOptionsParam = {"include_usage": True}
        stream = await client.chat.completions.create(
            model="m", messages=USER, stream=True, stream_options=options
        )
        chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].delta.content for c in chunks[:-2]] == ["", *DEFAULT_TEXT]
    assert all(c.choices[0].finish_reason is None for c in chunks[:-2])
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (5, 5)
    assert chunks[-1].usage.total_tokens == 10
    assert {c.model for c in chunks} == {"m"} and len({c.id for c in chunks}) == 1
    (record,) = loopback_server.requests
    assert (record.outcome, record.chunks_sent, record.status) == ("completed", 5, 200)
    assert record.body["messages"] == USER and record.headers["authorization"] == "Bearer test"


@pytest.mark.anyio
async def test_raw_chunks_have_openai_shape_and_end_with_done(loopback_server: LoopbackServer) -> None:
    data = await _raw_stream(loopback_server)
    assert data[-1] == "[DONE]"
    first = json.loads(data[1])
    assert set(first) == {"id", "object", "created", "model", "choices"}
    assert first["object"] == "chat.completion.chunk" and first["model"] == "loopback"
    assert first["choices"] == [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": None}]
    assert json.loads(data[-2])["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]


@pytest.mark.anyio
async def test_non_stream_reply_is_a_chat_completion(loopback_server: LoopbackServer) -> None:
    loopback_server.push(Reply(chunks=["Hi", " there"], finish_reason="length"))
    async with _client(loopback_server) as client:
        completion = await client.chat.completions.create(model="m", messages=USER)
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "Hi there"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 2
    assert loopback_server.requests[0].chunks_sent == 2


@pytest.mark.anyio
async def test_tool_calls_are_streamed_and_reassemble(loopback_server: LoopbackServer) -> None:
    calls = [ScriptedToolCall("lookup", '{"city": "Paris", "days": 3}'), ScriptedToolCall("noop", id="c-7")]
    loopback_server.push(Reply(chunks=["Let me check."], tool_calls=calls))
    async with _client(loopback_server) as client:
        stream = await client.chat.completions.create(model="m", messages=USER, stream=True)
        chunks = [chunk async for chunk in stream]
    assembled: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for delta in chunk.choices[0].delta.tool_calls or []:
            call = assembled.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += delta.id or ""
            call["name"] += (delta.function and delta.function.name) or ""
            call["arguments"] += (delta.function and delta.function.arguments) or ""
    assert assembled == {
        0: {"id": "call_1", "name": "lookup", "arguments": '{"city": "Paris", "days": 3}'},
        1: {"id": "c-7", "name": "noop", "arguments": "{}"},
    }
    argument_pieces = [
        c for c in chunks if c.choices[0].delta.tool_calls and not c.choices[0].delta.tool_calls[0].id
    ]
    assert len(argument_pieces) > 2  # arguments really arrive in pieces
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert loopback_server.requests[0].chunks_sent == 1


@pytest.mark.anyio
async def test_non_stream_tool_calls_are_in_the_message(loopback_server: LoopbackServer) -> None:
    loopback_server.push(Reply(chunks=(), tool_calls=[ScriptedToolCall("lookup", '{"q": 1}')]))
    async with _client(loopback_server) as client:
        completion = await client.chat.completions.create(model="m", messages=USER)
    message = completion.choices[0].message
    assert message.content is None and completion.choices[0].finish_reason == "tool_calls"
    assert message.tool_calls is not None
    calls = [
        (c.id, c.function.name, c.function.arguments) for c in message.tool_calls if c.type == "function"
    ]
    assert calls == [("call_1", "lookup", '{"q": 1}')]


@pytest.mark.anyio
async def test_models_list_unknown_path_and_bad_json(loopback_server: LoopbackServer) -> None:
    async with httpx2.AsyncClient(base_url=loopback_server.base_url) as http:
        models = await http.get("/models")
        missing = await http.post("/embeddings", json={})
        bad = await http.post(
            "/chat/completions", content=b"{nope", headers={"content-type": "application/json"}
        )
    assert models.json() == {
        "object": "list",
        "data": [{"id": "loopback", "object": "model", "created": 0, "owned_by": "tether"}],
    }
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "Invalid URL (POST /v1/embeddings)"
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    assert [r.outcome for r in loopback_server.requests] == ["completed", "rejected", "rejected"]
    assert loopback_server.total_connections == 1  # error responses keep the connection alive


# -- scripting -----------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_fifo_then_route_then_default(loopback_server: LoopbackServer) -> None:
    loopback_server.push(Reply(chunks=["one"]), Reply(chunks=["two"]))
    loopback_server.route("special", Reply(chunks=["routed"]))
    loopback_server.default = Reply(chunks=["fallback"])
    async with _client(loopback_server) as client:
        texts = [
            (await client.chat.completions.create(model=model, messages=USER)).choices[0].message.content
            for model in ("special", "other", "special", "other")
        ]
    assert texts == ["one", "two", "routed", "fallback"]
    loopback_server.reset()
    assert loopback_server.requests == []


@pytest.mark.anyio
async def test_status_500_raises_internal_server_error(loopback_server: LoopbackServer) -> None:
    loopback_server.push(Reply(status=500, error_message="the model fell over"))
    async with _client(loopback_server) as client:
        with pytest.raises(openai.InternalServerError, match="the model fell over") as caught:
            await client.chat.completions.create(model="m", messages=USER, stream=True)
    assert caught.value.status_code == 500
    assert loopback_server.requests[0].outcome == "failed" and loopback_server.requests[0].status == 500


@pytest.mark.anyio
async def test_dangling_tool_call_is_rejected_and_answered_one_accepted(
    loopback_server: LoopbackServer,
) -> None:
    loopback_server.push(Reply(chunks=["kept for the valid request"]))
    async with _client(loopback_server) as client:
        with pytest.raises(openai.BadRequestError, match="did not have response messages: call_9"):
            await client.chat.completions.create(model="m", messages=ASKED)
        with pytest.raises(openai.BadRequestError, match="must be a response to a preceeding message"):
            await client.chat.completions.create(model="m", messages=[*USER, ANSWER])
        completion = await client.chat.completions.create(model="m", messages=[*ASKED, ANSWER])
    assert completion.choices[0].message.content == "kept for the valid request"
    assert [r.outcome for r in loopback_server.requests] == ["rejected", "rejected", "completed"]
    assert loopback_server.requests[0].status == 400


def test_tool_history_validation_can_be_turned_off() -> None:
    with (
        LoopbackServer(validate_tool_history=False) as server,
        httpx2.Client(base_url=server.base_url) as http,
    ):
        assert http.post("/chat/completions", json=_body(messages=[*ASKED])).status_code == 200


# -- failures ------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_failure_modes_as_a_raw_client_sees_them(loopback_server: LoopbackServer) -> None:
    loopback_server.push(
        Reply(fail_after=2, failure="error_event", error_message="overloaded"),
        Reply(fail_after=2, failure="malformed"),
        Reply(fail_after=2, failure="disconnect"),
    )
    error_event = await _raw_stream(loopback_server)
    deltas = [json.loads(d)["choices"][0]["delta"] for d in error_event[1:3]]
    assert deltas == [{"content": "Hello"}, {"content": " from"}]
    assert json.loads(error_event[-1]) == {"error": {"message": "overloaded", "type": "server_error"}}
    assert (await _raw_stream(loopback_server))[-1] == "{not json"
    with pytest.raises(httpx2.RemoteProtocolError):
        await _raw_stream(loopback_server)
    assert [(r.outcome, r.chunks_sent) for r in loopback_server.requests] == [("failed", 2)] * 3
    assert loopback_server.disconnects == []  # the server hung up, not the client


@pytest.mark.anyio
async def test_failure_modes_through_the_openai_client(loopback_server: LoopbackServer) -> None:
    loopback_server.push(Reply(fail_after=1, failure="error_event", error_message="overloaded"))
    loopback_server.push(Reply(fail_after=0, failure="disconnect"))
    async with _client(loopback_server) as client:
        stream = await client.chat.completions.create(model="m", messages=USER, stream=True)
        with pytest.raises(openai.APIError, match="overloaded"):
            _ = [chunk async for chunk in stream]
        with pytest.raises(openai.APIConnectionError):
            await client.chat.completions.create(model="m", messages=USER)


# -- connections and disconnects -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_keep_alive_reuses_one_connection(loopback_server: LoopbackServer) -> None:
    async with _client(loopback_server) as client:
        await client.chat.completions.create(model="m", messages=USER)
        stream = await client.chat.completions.create(model="m", messages=USER, stream=True)
        _ = [chunk async for chunk in stream]
        await client.chat.completions.create(model="m", messages=USER)
    assert len(loopback_server.requests) == 3
    assert loopback_server.total_connections == 1


def test_connection_close_is_honoured(loopback_server: LoopbackServer) -> None:
    with httpx2.Client(base_url=loopback_server.base_url, headers={"connection": "close"}) as http:
        assert http.get("/models").headers["connection"] == "close"
    assert loopback_server.wait_until(lambda s: s.open_connections == 0, timeout=2.0)


@pytest.mark.anyio
async def test_disconnect_during_stall_is_recorded_promptly(loopback_server: LoopbackServer) -> None:
    loopback_server.push(Reply(stall=5.0))
    async with httpx2.AsyncClient(base_url=loopback_server.base_url) as http:
        async with http.stream("POST", "/chat/completions", json=_body(stream=True)) as response:
            assert response.status_code == 200
        closed_at = time.monotonic()
    assert await loopback_server.await_until(lambda s: len(s.disconnects) == 1, timeout=1.0)
    (record,) = loopback_server.disconnects
    assert record.chunks_sent == 0 and record.disconnected_at is not None
    assert record.disconnected_at - closed_at < 1.0


@pytest.mark.anyio
async def test_disconnect_while_waiting_for_headers(loopback_server: LoopbackServer) -> None:
    loopback_server.push(Reply(header_delay=5.0))
    async with httpx2.AsyncClient(base_url=loopback_server.base_url, timeout=0.2) as http:
        with pytest.raises(httpx2.ReadTimeout):
            await http.post("/chat/completions", json=_body())
    assert await loopback_server.await_until(lambda s: len(s.disconnects) == 1, timeout=1.0)
    assert loopback_server.requests[0].status is None


@pytest.mark.anyio
async def test_disconnect_mid_stream_stops_the_writes(loopback_server: LoopbackServer) -> None:
    total = 40
    loopback_server.push(Reply(chunks=[f"t{i} " for i in range(total)], pace=0.02))
    async with (
        httpx2.AsyncClient(base_url=loopback_server.base_url) as http,
        http.stream("POST", "/chat/completions", json=_body(stream=True)) as response,
    ):
        seen = 0
        async for line in response.aiter_lines():
            seen += '"content":"t' in line
            if seen == 3:
                break
    assert await loopback_server.await_until(lambda s: len(s.disconnects) == 1, timeout=1.0)
    sent = loopback_server.disconnects[0].chunks_sent
    assert 1 <= sent <= total - 1
    await anyio.sleep(0.1)  # would-be writes after the disconnect would show up here
    assert loopback_server.requests[0].chunks_sent == sent


def test_slow_reader_gets_backpressure_then_everything(loopback_server: LoopbackServer) -> None:
    loopback_server.push(Reply(chunks=["x" * 50] * 20_000))
    payload = json.dumps(_body(stream=True)).encode()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", int(loopback_server.base_url.rsplit(":", 1)[1].split("/")[0])))
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\n")
        sock.sendall(b"content-length: %d\r\n\r\n%b" % (len(payload), payload))
        time.sleep(0.2)  # not reading: the server must stop and wait, not buffer 1.5 MB
        (stalled,) = loopback_server.requests
        assert stalled.outcome == "pending" and stalled.chunks_sent < 20_000
        received = bytearray()
        while data := sock.recv(1 << 16):
            received += data
    assert received.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
    assert received.count(b'"content":"' + b"x" * 50 + b'"') == 20_000
    assert loopback_server.requests[0].outcome == "completed"


@pytest.mark.anyio
async def test_twenty_thousand_chunks_arrive_quickly_and_exactly(loopback_server: LoopbackServer) -> None:
    chunks = [f"w{i} " for i in range(20_000)]
    loopback_server.push(Reply(chunks=chunks))
    started = time.monotonic()
    data = await _raw_stream(loopback_server)
    elapsed = time.monotonic() - started
    texts = [json.loads(d)["choices"][0]["delta"].get("content") for d in data[1:-2]]
    assert texts == chunks
    assert elapsed < 10.0
    record = loopback_server.requests[0]
    assert record.chunks_sent == 20_000 and record.finished_at is not None
    assert record.finished_at - record.started_at < 5.0


# -- lifecycle -----------------------------------------------------------------------------------------


def test_stop_closes_everything_and_is_idempotent() -> None:
    server = LoopbackServer(Reply(stall=30.0)).start()
    assert server.start() is server  # already running: no second thread
    result: dict[str, Any] = {}

    def stalled_request() -> None:
        with httpx2.Client(base_url=server.base_url) as http:
            try:
                http.post("/chat/completions", json=_body(stream=True)).read()
            except httpx2.HTTPError as exc:
                result["error"] = exc

    thread = threading.Thread(target=stalled_request)
    thread.start()
    assert server.wait_until(lambda s: s.open_connections == 1 and len(s.requests) == 1)
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 5.0
    server.stop()
    thread.join(5.0)
    assert server.open_connections == 0 and isinstance(result.get("error"), httpx2.HTTPError)
    assert server.requests[0].outcome == "failed"  # the server went away, not the client


@pytest.mark.anyio
async def test_async_context_manager_and_wait_timeouts() -> None:
    async with LoopbackServer() as server:
        async with _client(server) as client:
            await client.chat.completions.create(model="m", messages=USER)
        assert await server.await_until(lambda s: len(s.requests) == 1)
        assert not await server.await_until(lambda s: len(s.requests) == 2, timeout=0.05)
        assert not server.wait_until(lambda s: len(s.requests) == 2, timeout=0.05)
    assert server.open_connections == 0
    with pytest.raises(RuntimeError, match="not started"):
        _ = LoopbackServer().base_url


def test_sync_openai_client_against_the_loopback() -> None:
    with (
        LoopbackServer(Reply(chunks=["sync", " works"])) as server,
        openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0) as client,
    ):
        stream = client.chat.completions.create(model="m", messages=USER, stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert text == "sync works"

"""Cancellation contract over real HTTP: points 1, 3, 4, 5 and 10, with OpenAIChat on the loopback server."""

from __future__ import annotations

import socket
import time

import anyio
import pytest

from tether import Agent, RunEvent, RunStatus, active_runs
from tether.models.openai import OpenAIChat
from tether.testing import LoopbackServer, Reply

pytestmark = pytest.mark.anyio

STORY = [f"word{i} " for i in range(200)]


def content_of(events: list) -> str:  # type: ignore[type-arg]
    return "".join(e.content for e in events if e.event == RunEvent.run_content)


async def test_completed_run_over_http(loopback_server: LoopbackServer, openai_model: OpenAIChat) -> None:
    loopback_server.default = Reply(chunks=["Hello", ", ", "world", "!"])
    agent = Agent(name="Greeter", model=openai_model, instructions="Greet.")
    out = await agent.arun("Say hello")
    assert out.status is RunStatus.completed and out.content == "Hello, world!"
    assert out.metrics.total_tokens is not None
    body = loopback_server.requests[-1].body
    assert body["model"] == "loopback" and body["stream"] is True
    assert body["messages"] == [
        {"role": "system", "content": "Greet."},
        {"role": "user", "content": "Say hello"},
    ]


async def test_request_settings_and_extra_body_reach_the_provider(loopback_server: LoopbackServer) -> None:
    model = OpenAIChat(
        id="loopback",
        base_url=loopback_server.base_url,
        api_key="test-key",
        max_retries=0,
        temperature=0.2,
        max_tokens=64,
        extra_body={"top_k": 5, "temperature": 0.7},
    )
    out = await Agent(name="a", model=model).arun("go")
    assert out.status is RunStatus.completed
    record = loopback_server.requests[-1]
    assert record.headers["authorization"] == "Bearer test-key"
    body = record.body
    assert body["top_k"] == 5 and body["temperature"] == 0.7, "extra_body is merged in, and wins"
    assert body["max_completion_tokens"] == 64 and body["stream_options"] == {"include_usage": True}
    assert "extra_body" not in body


@pytest.mark.parametrize("max_retries", [0, 1])
async def test_a_retryable_status_is_retried_before_the_stream_starts(
    loopback_server: LoopbackServer, max_retries: int
) -> None:
    loopback_server.push(Reply(status=503, error_message="busy", headers=[("retry-after-ms", "1")]))
    loopback_server.default = Reply(chunks=["fine"])
    model = OpenAIChat(id="x", base_url=loopback_server.base_url, api_key="k", max_retries=max_retries)
    with anyio.fail_after(5):
        out = await Agent(name="a", model=model).arun("go")
    assert len(loopback_server.requests) == 1 + max_retries
    if max_retries:
        assert out.status is RunStatus.completed and out.content == "fine"
    else:
        assert out.status is RunStatus.error and out.error_type == "ModelStatusError"
        assert "HTTP 503: busy" in (out.error or "")


async def _cancel_when(
    agent: Agent, stream_reply: Reply, server: LoopbackServer, *, after_chunks: int
) -> tuple[list, float, float]:  # type: ignore[type-arg]
    """Run, cancel after ``after_chunks`` content events; return events, cancel time, terminal time."""
    server.push(stream_reply)
    stream = agent.arun("go", stream=True)
    events = []
    cancelled_at = terminal_at = 0.0
    seen = 0
    async for event in stream:
        events.append(event)
        if event.is_terminal:
            terminal_at = time.perf_counter()
        elif (event.event == RunEvent.run_started and after_chunks == 0) or (
            event.event == RunEvent.run_content and (seen := seen + 1) == after_chunks
        ):
            if after_chunks == 0:
                await anyio.sleep(0.05)  # let the request reach the server and stall there
            assert agent.cancel_run(stream.run_id, reason="stop") is True
            cancelled_at = time.perf_counter()
    return events, cancelled_at, terminal_at


async def test_mid_stream_cancel_is_prompt_exact_and_closes_upstream(
    loopback_server: LoopbackServer, openai_model: OpenAIChat
) -> None:
    agent = Agent(name="a", model=openai_model)
    for _ in range(5):
        events, cancelled, ended = await _cancel_when(
            agent, Reply(chunks=STORY, pace=0.01), loopback_server, after_chunks=7
        )
        assert ended - cancelled < 0.05, "terminal event must reach the consumer within 50 ms"
        assert [e.event for e in events[-2:]] == [RunEvent.run_content, RunEvent.run_cancelled]
        assert content_of(events) == "".join(STORY[:7]) == events[-1].content
    assert await loopback_server.await_until(lambda s: len(s.disconnects) == 5, timeout=1.0)
    assert all(0 < r.chunks_sent < len(STORY) for r in loopback_server.disconnects)


@pytest.mark.parametrize("where", ["stall", "header_delay"])
async def test_cancel_during_a_stall_is_prompt_and_the_server_sees_the_disconnect(
    loopback_server: LoopbackServer, openai_model: OpenAIChat, where: str
) -> None:
    agent = Agent(name="a", model=openai_model)
    reply = Reply(chunks=STORY, stall=30) if where == "stall" else Reply(chunks=STORY, header_delay=30)
    for _ in range(3):
        events, cancelled, ended = await _cancel_when(agent, reply, loopback_server, after_chunks=0)
        assert ended - cancelled < 0.05
        assert [e.event for e in events] == [RunEvent.run_started, RunEvent.run_cancelled]
        assert events[-1].content == ""
        seen = await loopback_server.await_until(lambda s: len(s.disconnects) >= 1, timeout=1.0)
        assert seen, "the loopback server must see the client go away"
        record = loopback_server.disconnects[-1]
        assert record.chunks_sent == 0 and record.disconnected_at is not None
        assert record.disconnected_at - record.started_at < 1.0
        loopback_server.reset()


@pytest.mark.timeout(180)
async def test_a_thousand_cancelled_runs_leak_no_connection(
    loopback_server: LoopbackServer, openai_model: OpenAIChat
) -> None:
    loopback_server.default = Reply(chunks=STORY, pace=0.002)
    agent = Agent(name="a", model=openai_model)
    for i in range(1000):
        stream = agent.arun("go", stream=True)
        async for event in stream:
            if event.event == RunEvent.run_content:
                agent.cancel_run(stream.run_id)
        assert stream.output is not None and stream.output.status is RunStatus.cancelled, i
    assert await loopback_server.await_until(lambda s: len(s.disconnects) == 1000, timeout=5)
    assert await loopback_server.await_until(lambda s: s.open_connections <= 1, timeout=5)
    # The pool still works: no exhausted or poisoned connections.
    loopback_server.default = Reply(chunks=["still", " fine"])
    out = await agent.arun("again")
    assert out.status is RunStatus.completed and out.content == "still fine"


@pytest.mark.parametrize(
    ("reply", "error_type", "message", "partial"),
    [
        (
            Reply(status=500, error_message="upstream exploded"),
            "ModelStatusError",
            "HTTP 500: upstream exploded",
            "",
        ),
        (Reply(status=400, error_message="bad model"), "ModelStatusError", "HTTP 400: bad model", ""),
        (Reply(status=401, error_message="Incorrect API key"), "ModelStatusError", "HTTP 401", ""),
        (Reply(chunks=STORY[:10], fail_after=4, failure="disconnect"), "ModelResponseError", "broke off", 4),
        (Reply(chunks=STORY[:10], fail_after=3, failure="malformed"), "ModelResponseError", "malformed", 3),
        (
            Reply(chunks=STORY[:10], fail_after=2, failure="error_event", error_message="overloaded"),
            "ModelResponseError",
            "overloaded",
            2,
        ),
    ],
)
async def test_provider_failures_end_in_run_error_with_partial_content(
    loopback_server: LoopbackServer,
    openai_model: OpenAIChat,
    reply: Reply,
    error_type: str,
    message: str,
    partial: int | str,
) -> None:
    loopback_server.default = reply
    agent = Agent(name="a", model=openai_model)
    stream = agent.arun("go", stream=True)
    with anyio.fail_after(5):
        events = [e async for e in stream]
    terminal = events[-1]
    assert [e.is_terminal for e in events].count(True) == 1
    assert terminal.event == RunEvent.run_error and terminal.status is RunStatus.error
    assert terminal.error_type == error_type  # type: ignore[attr-defined]
    assert message in terminal.error and "Traceback" not in terminal.error  # type: ignore[attr-defined]
    expected = "".join(STORY[:partial]) if isinstance(partial, int) else partial
    assert terminal.content == content_of(events) == expected
    out = stream.output
    assert out is not None and out.status is RunStatus.error and out.error == terminal.error  # type: ignore[attr-defined]


async def test_connection_refused_is_a_clear_error_not_a_hang() -> None:
    with socket.socket() as probe:  # a port with nothing listening on it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    model = OpenAIChat(id="x", base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)
    with anyio.fail_after(5):
        out = await Agent(name="a", model=model).arun("go")
    assert out.status is RunStatus.error and out.error_type == "ModelConnectionError"
    assert out.error is not None and f"127.0.0.1:{port}" in out.error


async def test_read_timeout_is_a_clear_error(loopback_server: LoopbackServer) -> None:
    loopback_server.default = Reply(chunks=["a", "b"], stall=10)
    model = OpenAIChat(id="x", base_url=loopback_server.base_url, api_key="k", max_retries=0, timeout=0.3)
    with anyio.fail_after(5):
        out = await Agent(name="a", model=model).arun("go")
    assert out.status is RunStatus.error and out.error_type == "ModelTimeoutError"
    assert "timed out" in (out.error or "")


async def test_missing_api_key_is_a_clear_error() -> None:
    out = await Agent(name="a", model=OpenAIChat(id="gpt-5-mini")).arun("go")
    assert out.status is RunStatus.error and out.error_type == "ConfigurationError"
    assert "OPENAI_API_KEY" in (out.error or "")
    assert active_runs() == []

"""Clients that leave early, over a real uvicorn server: mid-body, and during a non-streaming run."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import httpx
import pytest
from fastapi import FastAPI

from tether import Agent, RunStatus
from tether._run import registry
from tether.models.openai import OpenAIChat
from tether.server._disconnect import REASON
from tether.storage import SqliteStorage
from tether.testing import LoopbackServer, Reply

from .conftest import LiveServer

pytestmark = pytest.mark.anyio


def address(server: LiveServer) -> tuple[str, int]:
    url = urlsplit(server.url)
    assert url.hostname is not None and url.port is not None
    return url.hostname, url.port


async def records_until(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    """The log records once one has ``message`` (the server thread logs it), within a few seconds."""
    with anyio.fail_after(5):
        while not any(record.getMessage() == message for record in caplog.records):  # noqa: ASYNC110
            await anyio.sleep(0.01)
    return list(caplog.records)


@pytest.mark.parametrize("path", ["/agents/teller/runs", "/agents/teller/runs/r-gone/cancel"])
async def test_a_client_leaving_while_its_body_arrives_is_no_error(
    live: Callable[..., LiveServer], caplog: pytest.LogCaptureFixture, path: str
) -> None:
    caplog.set_level(logging.INFO)
    server = live()
    half = b'{"message": "Write a story", "run_id": "r-gone", "stre'
    head = (
        f"POST {path} HTTP/1.1\r\nHost: tether\r\nContent-Type: application/json\r\n"
        f"Content-Length: {2 * len(half)}\r\n\r\n"
    ).encode()
    async with await anyio.connect_tcp(*address(server)) as client:
        await client.send(head + half)
    records = await records_until(caplog, f"client disconnected during POST {path} before its body was read")
    assert [r.getMessage() for r in records if r.levelno >= logging.WARNING] == []
    assert [r.getMessage() for r in records if r.exc_info is not None] == []
    assert registry.get("r-gone") is None and registry.handles() == []
    agent = server.server.config.app.state.tether.agents["teller"]
    assert await agent.storage.get_run("r-gone") is None


STORY = [f"w{i} " for i in range(300)]


def story_agent(loopback_server: LoopbackServer) -> Agent:
    model = OpenAIChat(id="loopback", base_url=loopback_server.base_url, api_key="test-key", max_retries=0)
    return Agent(name="Teller", model=model)


async def stored(server: LiveServer, run_id: str) -> dict[str, Any]:
    """The run's row once it has ended (GET answers it live before), within a few seconds."""
    async with httpx.AsyncClient(base_url=server.url) as client:
        with anyio.fail_after(5):
            run = (await client.get(f"/agents/teller/runs/{run_id}")).json()
            while run["status"] == "RUNNING":
                await anyio.sleep(0.01)
                run = (await client.get(f"/agents/teller/runs/{run_id}")).json()
    return run


async def leave_during_run(server: LiveServer, loopback_server: LoopbackServer, run_id: str) -> None:
    """POST a non-streaming run on a raw socket, close it once the model has streamed 30 chunks."""
    body = json.dumps({"message": "Write a story", "stream": False, "run_id": run_id}).encode()
    head = (
        "POST /agents/teller/runs HTTP/1.1\r\nHost: tether\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    async with await anyio.connect_tcp(*address(server)) as client:
        await client.send(head + body)
        streaming = await loopback_server.await_until(lambda s: any(r.chunks_sent >= 30 for r in s.requests))
        assert streaming  # about 0.3 s into the 3 s of generation


async def test_a_non_streaming_client_that_leaves_cancels_its_run_and_the_upstream(
    live: Callable[..., LiveServer], make_app: Callable[..., FastAPI], loopback_server: LoopbackServer
) -> None:
    loopback_server.default = Reply(chunks=STORY, pace=0.01)
    server = live(make_app([story_agent(loopback_server)]))
    await leave_during_run(server, loopback_server, "r-left")
    left = time.monotonic()
    assert await loopback_server.await_until(lambda s: len(s.disconnects) == 1)
    (upstream,) = loopback_server.disconnects
    assert upstream.disconnected_at is not None and upstream.disconnected_at - left < 1.0
    assert 30 <= upstream.chunks_sent < len(STORY)
    run = await stored(server, "r-left")
    assert (run["status"], run["cancel_source"], run["cancel_reason"]) == ("CANCELLED", "consumer", REASON)
    assert run["content"] == "".join(STORY[: len(run["content"].split())]) and run["content"].startswith(
        "w0 w1 "
    )


async def test_with_continue_a_non_streaming_run_finishes_after_its_client_left(
    live: Callable[..., LiveServer], make_app: Callable[..., FastAPI], loopback_server: LoopbackServer
) -> None:
    loopback_server.default = Reply(chunks=STORY, pace=0.002)
    server = live(make_app([story_agent(loopback_server)], on_disconnect="continue"))
    await leave_during_run(server, loopback_server, "r-kept")
    run = await stored(server, "r-kept")
    assert (run["status"], run["content"], run["cancel_source"]) == ("COMPLETED", "".join(STORY), None)
    (upstream,) = loopback_server.requests
    assert (upstream.outcome, upstream.chunks_sent) == ("completed", len(STORY))


async def test_a_run_continued_after_its_client_left_is_stopped_and_stored_at_shutdown(
    live: Callable[..., LiveServer],
    make_app: Callable[..., FastAPI],
    loopback_server: LoopbackServer,
    tmp_path: Path,
) -> None:
    loopback_server.default = Reply(chunks=STORY, pace=0.01)
    server = live(make_app([story_agent(loopback_server)], on_disconnect="continue"))
    await leave_during_run(server, loopback_server, "r-bg")
    assert registry.get("r-bg") is not None  # still running, read by the server alone
    await anyio.to_thread.run_sync(server.__exit__, None, None, None)  # uvicorn's shutdown, then lifespan's
    storage = SqliteStorage(tmp_path / "server.db")
    await storage.open()
    try:
        run = await storage.get_run("r-bg")
    finally:
        await storage.aclose()
    assert run is not None and (run.status, run.cancel_source) == (RunStatus.cancelled, "shutdown")
    assert await loopback_server.await_until(lambda s: len(s.disconnects) == 1)

"""Clients that leave early, over a real uvicorn server: mid-body, and during a non-streaming run."""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import urlsplit

import anyio
import pytest

from tether._run import registry

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

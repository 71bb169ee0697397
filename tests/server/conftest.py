"""Server fixtures: an app through httpx's ASGI transport, and a real uvicorn server on a thread."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from tether import Agent
from tether.server import create_app
from tether.storage import SqliteStorage
from tether.testing import ScriptedModel

STORY = [f"word{i} " for i in range(400)]


def slow_agent(name: str = "Teller", delay: float = 0.01) -> Agent:
    return Agent(name=name, description=f"{name} tells stories", model=ScriptedModel(STORY, delay=delay))


@pytest.fixture
def make_app(tmp_path: Path) -> Callable[..., FastAPI]:
    def make(agents: Any = None, **options: Any) -> FastAPI:
        options.setdefault("storage", SqliteStorage(tmp_path / "server.db"))
        return create_app(agents if agents is not None else [slow_agent()], **options)

    return make


@pytest.fixture
async def asgi(make_app: Callable[..., FastAPI]) -> AsyncIterator[Callable[..., Any]]:
    """``await asgi(app)`` -> an httpx.AsyncClient on that app, lifespan started."""
    stack: list[Any] = []

    async def open_client(app: FastAPI, **headers: str) -> httpx.AsyncClient:
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
            base_url="http://tether.test",
            headers=headers,
        )
        stack.append((lifespan, client))
        return client

    yield open_client
    for lifespan, client in reversed(stack):
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


class LiveServer:
    """uvicorn serving an app on 127.0.0.1 from a background thread (its own event loop)."""

    def __init__(self, app: FastAPI) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="live-uvicorn", daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    @property
    def url(self) -> str:
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture
def live(make_app: Callable[..., FastAPI]) -> Iterator[Callable[..., LiveServer]]:
    servers: list[LiveServer] = []

    def start(app: FastAPI | None = None) -> LiveServer:
        server = LiveServer(app or make_app()).__enter__()
        servers.append(server)
        return server

    yield start
    for server in reversed(servers):
        server.__exit__(None, None, None)


def parse_sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    """``event:``/``data:`` frames as (event name, JSON data) pairs: the client side of SSE, by hand."""
    import json

    frames = []
    for block in text.split("\n\n"):
        lines = [line for line in block.split("\n") if line]
        if not lines:
            continue
        event = next(line[6:].strip() for line in lines if line.startswith("event:"))
        data = "\n".join(line[5:].strip() for line in lines if line.startswith("data:"))
        frames.append((event, json.loads(data)))
    return frames


@dataclass(frozen=True)
class Frame:
    """One SSE frame as sent: its ``id:``, ``event:`` and JSON ``data:``; a comment has only ``comment``."""

    id: int | None = None
    event: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    comment: str | None = None


def frames_of(lines: list[str]) -> list[Frame]:
    """The frames and comments of SSE ``lines``, by hand (each frame ends at a blank line)."""
    import json

    found: list[Frame] = []
    fields: dict[str, str] = {}
    for line in lines:
        if line.startswith(":"):
            found.append(Frame(comment=line[1:].strip()))
        elif line:
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        elif fields:
            data = json.loads(fields["data"])
            found.append(Frame(int(fields["id"]) if "id" in fields else None, fields.get("event"), data))
            fields = {}
    return found


async def sse_frames(response: httpx.Response) -> AsyncIterator[Frame]:
    """The frames of a streaming response as they arrive (comments left out)."""
    lines: list[str] = []
    async for line in response.aiter_lines():
        lines.append(line)
        if not line:
            for frame in frames_of(lines):
                if frame.comment is None:
                    yield frame
            lines = []

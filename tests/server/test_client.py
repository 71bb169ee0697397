"""TetherClient and AsyncTetherClient against a live server."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from fastapi import FastAPI

from tether import APIError, RunContentEvent, RunEvent, RunStatus
from tether._run import registry
from tether.client import AsyncTetherClient, TetherClient

from .conftest import LiveServer

pytestmark = pytest.mark.anyio


async def test_async_client_round_trip(
    live: Callable[..., LiveServer], make_app: Callable[..., FastAPI]
) -> None:
    server = live(make_app(security_key="k"))
    async with AsyncTetherClient(server.url, security_key="k") as client:
        assert [a.id for a in await client.list_agents()] == ["teller"]
        events = []
        async for event in client.stream("teller", "go", run_id="client-1", session_id="cs"):
            events.append(event)
            if isinstance(event, RunContentEvent) and len(events) == 4:
                result = await client.cancel_run("teller", "client-1", reason="enough")
                assert (result.run_id, result.agent_id, result.status) == (
                    "client-1",
                    "teller",
                    RunStatus.cancelled,
                )
        assert events[0].event == RunEvent.run_started and events[-1].event == RunEvent.run_cancelled
        assert events[-1].content == "".join(
            e.content or "" for e in events if isinstance(e, RunContentEvent)
        )
        stored = await client.get_run("teller", "client-1")
        assert (stored.status, stored.cancel_reason, stored.session_id) == (
            RunStatus.cancelled,
            "enough",
            "cs",
        )


async def test_async_client_errors_carry_the_error_code(
    live: Callable[..., LiveServer], make_app: Callable[..., FastAPI]
) -> None:
    server = live(make_app(security_key="k"))
    async with AsyncTetherClient(server.url, security_key="wrong") as bad:
        with pytest.raises(APIError) as caught:
            await bad.list_agents()
        assert (caught.value.status_code, caught.value.error_code) == (401, "UNAUTHENTICATED")
        assert caught.value.detail == "Invalid authentication token"
    async with AsyncTetherClient(server.url, security_key="k") as client:
        with pytest.raises(APIError) as missing:
            await client.cancel_run("teller", "no-such-run")
        assert (missing.value.status_code, missing.value.error_code, missing.value.detail) == (
            404,
            "NOT_FOUND",
            "Run not found",
        )
        with pytest.raises(APIError, match="NOT_FOUND"):
            async for _ in client.stream("nobody", "hi"):
                pass
    async with AsyncTetherClient("http://127.0.0.1:9") as unreachable:
        with pytest.raises(APIError, match="could not reach the tether server"):
            await unreachable.list_agents()


def test_blocking_client_from_threads(
    live: Callable[..., LiveServer], make_app: Callable[..., FastAPI]
) -> None:
    from tether import Agent
    from tether.testing import ScriptedModel

    server = live(make_app([Agent(name="quick", model=ScriptedModel(["a", "b"]))]))
    with TetherClient(server.url) as client:
        outputs = []

        def worker(index: int) -> None:
            outputs.append(client.run("quick", f"q{index}", run_id=f"sync-{index}"))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert sorted((o.run_id, o.status, o.content) for o in outputs) == [
            (f"sync-{i}", RunStatus.completed, "ab") for i in range(4)
        ]
        events = list(client.stream("quick", "again"))
        assert [e.event for e in events] == [
            RunEvent.run_started,
            RunEvent.run_content,
            RunEvent.run_content,
            RunEvent.run_completed,
        ]
        assert client.get_run("quick", "sync-0").content == "ab"


def test_leaving_a_blocking_stream_early_cancels_the_run(live: Callable[..., LiveServer]) -> None:
    server = live()
    with TetherClient(server.url) as client:
        stream = client.stream("teller", "go", run_id="early-leave")
        for event in stream:
            if event.event == RunEvent.run_content:
                break
        stream.close()  # type: ignore[attr-defined]
        import time

        deadline = time.monotonic() + 5
        while registry.get("early-leave") is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        stored = client.get_run("teller", "early-leave")
        assert (stored.status, stored.cancel_source) == (RunStatus.cancelled, "consumer")

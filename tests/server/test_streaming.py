"""Streaming over a real uvicorn server: cancel from another client, disconnects, live reads."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI

from tether import RunStatus, active_runs
from tether._run import registry

from .conftest import LiveServer, slow_agent

pytestmark = pytest.mark.anyio


async def sse_events(response: httpx.Response) -> Any:
    """The client side of SSE, by hand: pair ``event:`` and ``data:`` lines, dispatch on a blank line."""
    name, data = None, []
    async for line in response.aiter_lines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line and name:
            payload = json.loads("\n".join(data))
            assert payload["event"] == name
            yield payload
            name, data = None, []


async def wait_until(predicate: Callable[[], bool], seconds: float = 5) -> None:
    with anyio.fail_after(seconds):
        while not predicate():  # noqa: ASYNC110 - polls state owned by the server thread
            await anyio.sleep(0.01)


async def test_agno_style_form_post_streams_and_a_second_client_cancels_it(
    live: Callable[..., LiveServer],
) -> None:
    server = live()
    events = []
    async with (
        httpx.AsyncClient(base_url=server.url) as client,
        httpx.AsyncClient(base_url=server.url) as other,
    ):
        form = {"message": "Write a story", "stream": "true", "session_id": "s-live"}
        async with client.stream("POST", "/agents/teller/runs", data=form) as response:
            assert response.status_code == 200
            async for event in sse_events(response):
                events.append(event)
                if event["event"] == "RunContent" and sum(e["event"] == "RunContent" for e in events) == 5:
                    cancelled = await other.post(
                        f"/agents/teller/runs/{event['run_id']}/cancel", json={"reason": "stop button"}
                    )
                    assert cancelled.status_code == 200, cancelled.text
                    assert cancelled.json() == {
                        "run_id": event["run_id"],
                        "agent_id": "teller",
                        "status": "CANCELLED",
                    }
        stored = (await other.get(f"/agents/teller/runs/{events[0]['run_id']}")).json()
    last = events[-1]
    assert last["event"] == "RunCancelled" and (last["reason"], last["source"]) == ("stop button", "user")
    streamed = "".join(e["content"] for e in events if e["event"] == "RunContent")
    assert last["content"] == streamed == stored["content"] and stored["status"] == "CANCELLED"
    assert streamed.startswith("word0 word1 word2 word3 word4 ")


async def test_cancel_before_the_first_event_with_a_client_chosen_run_id(
    live: Callable[..., LiveServer],
) -> None:
    server = live()
    async with (
        httpx.AsyncClient(base_url=server.url) as client,
        httpx.AsyncClient(base_url=server.url) as other,
    ):
        form = {"message": "Write a story", "run_id": "chosen-1"}
        async with client.stream("POST", "/agents/teller/runs", data=form) as response:
            await wait_until(lambda: registry.get("chosen-1") is not None)
            answer = await other.post("/agents/teller/runs/chosen-1/cancel")
            assert (answer.status_code, answer.json()["status"]) == (200, "CANCELLED")
            events = [e async for e in sse_events(response)]
    assert events[0]["event"] == "RunStarted" and events[-1]["event"] == "RunCancelled"


async def test_client_disconnect_cancels_the_run_as_consumer_and_stores_it(
    live: Callable[..., LiveServer],
) -> None:
    server = live()
    async with httpx.AsyncClient(base_url=server.url) as client:
        async with client.stream("POST", "/agents/teller/runs", data={"message": "go"}) as response:
            async for event in sse_events(response):
                if event["event"] == "RunContent":
                    run_id = event["run_id"]
                    break
        # leaving the block closed the connection mid-stream
        await wait_until(lambda: registry.get(run_id) is None)
        stored = (await client.get(f"/agents/teller/runs/{run_id}")).json()
    assert (stored["status"], stored["cancel_source"], stored["cancel_reason"]) == (
        "CANCELLED",
        "consumer",
        "client disconnected",
    )
    assert stored["content"].startswith("word0 ")


async def test_continue_policy_finishes_in_the_background(
    live: Callable[..., LiveServer], make_app: Callable[..., FastAPI]
) -> None:
    server = live(make_app([slow_agent(delay=0.002)], on_disconnect="continue"))
    async with httpx.AsyncClient(base_url=server.url) as client:
        for attempt in ("finish", "cancel"):
            async with client.stream("POST", "/agents/teller/runs", data={"message": attempt}) as response:
                async for event in sse_events(response):
                    run_id = event["run_id"]
                    break
            live_view = (await client.get(f"/agents/teller/runs/{run_id}")).json()
            assert live_view["status"] == "RUNNING" and live_view["run_id"] == run_id
            if attempt == "cancel":
                answer = await client.post(
                    f"/agents/teller/runs/{run_id}/cancel", data={"reason": "later stop"}
                )
                assert answer.json()["status"] == "CANCELLED"
            await wait_until(lambda rid=run_id: registry.get(rid) is None, 10)
            stored = (await client.get(f"/agents/teller/runs/{run_id}")).json()
            expected = "COMPLETED" if attempt == "finish" else "CANCELLED"
            assert stored["status"] == expected, stored
    assert active_runs() == []


async def test_get_shows_a_running_run_live(live: Callable[..., LiveServer]) -> None:
    server = live()
    async with (
        httpx.AsyncClient(base_url=server.url) as client,
        httpx.AsyncClient(base_url=server.url) as other,
        client.stream("POST", "/agents/teller/runs", data={"message": "go", "run_id": "watch-1"}) as r,
    ):
        seen = 0
        async for event in sse_events(r):
            seen += event["event"] == "RunContent"
            if event["event"] == "RunContent" and seen == 3:
                view = (await other.get("/agents/teller/runs/watch-1")).json()
                assert view["status"] == RunStatus.running.value
                assert view["content"].startswith("word0 word1 word2 ")
                await other.post("/agents/teller/runs/watch-1/cancel")
    assert registry.get("watch-1") is None


async def test_cancel_latency_over_http_is_prompt(live: Callable[..., LiveServer]) -> None:
    server = live()
    started = 0.0
    async with (
        httpx.AsyncClient(base_url=server.url) as client,
        httpx.AsyncClient(base_url=server.url) as other,
        client.stream("POST", "/agents/teller/runs", data={"message": "go"}) as response,
    ):
        async for event in sse_events(response):
            if event["event"] == "RunContent" and not started:
                started = time.perf_counter()
                answer = await other.post(f"/agents/teller/runs/{event['run_id']}/cancel?wait=0")
                # wait=0 answers at once, with the status of that moment: the run is still ending.
                assert (answer.status_code, answer.json()["status"]) == (200, "RUNNING")
            if event["event"] == "RunCancelled":
                assert time.perf_counter() - started < 0.5
    assert started

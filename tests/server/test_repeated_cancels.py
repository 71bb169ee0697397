"""Issue 18 item 1: a Stop click during the final write never answers 404.

Between leaving the registry and its final row being readable, a run is still findable. Repeated and
concurrent cancels all answer 200 (stopping or stopped) or 400 (ended before any cancel); exactly one
RunCancelled is emitted and the first reason is kept. Real uvicorn, a real SQLite file on a slow disk.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx
import pytest
from fastapi import FastAPI

from tether import Agent, RunOutput
from tether.storage import SqliteStorage
from tether.testing import ScriptedModel

from .conftest import LiveServer

pytestmark = pytest.mark.anyio

STORY = [f"w{k} " for k in range(400)]


class SlowFinalWrites(SqliteStorage):
    """A real SQLite store on a slow disk: every final write takes half a second."""

    async def finish_run(self, output: RunOutput) -> None:
        await anyio.sleep(0.5)
        await super().finish_run(output)


@pytest.fixture
def slow_app(tmp_path: Path, make_app: Callable[..., FastAPI]) -> FastAPI:
    storage = SlowFinalWrites(tmp_path / "slow.db")
    agent = Agent(name="Teller", model=ScriptedModel(STORY, delay=0.01), storage=storage)
    return make_app([agent], storage=storage)


async def read_stream(client: httpx.AsyncClient, run_id: str, first: anyio.Event, terminals: list) -> None:  # type: ignore[type-arg]
    async with client.stream("POST", "/agents/teller/runs", data={"message": "go", "run_id": run_id}) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if not line.startswith("data:"):
                continue
            event = json.loads(line[5:])
            if event["event"] == "RunContent":
                first.set()
            if event["event"] in ("RunCompleted", "RunCancelled", "RunError"):
                terminals.append(event)


async def test_a_second_stop_during_the_final_write_answers_200(
    slow_app: FastAPI, live: Callable[..., LiveServer]
) -> None:
    server = live(slow_app)
    terminals: list[dict] = []  # type: ignore[type-arg]
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        first = anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(read_stream, client, "slow-1", first, terminals)
            await first.wait()
            one = await client.post("/agents/teller/runs/slow-1/cancel", json={"reason": "stop"})
            await anyio.sleep(0.1)  # the final write (0.5 s) is under way
            two = await client.post("/agents/teller/runs/slow-1/cancel", json={"reason": "again"})
        got = await client.get("/agents/teller/runs/slow-1")
    assert (one.status_code, one.json()["status"]) == (200, "CANCELLED")
    assert (two.status_code, two.json()["status"]) == (200, "CANCELLED")
    assert got.status_code == 200 and got.json()["status"] == "CANCELLED"
    assert len(terminals) == 1 and terminals[0]["reason"] == "stop"


async def test_five_concurrent_stops_on_each_of_twenty_runs_all_answer_200(
    slow_app: FastAPI, live: Callable[..., LiveServer]
) -> None:
    server = live(slow_app)
    answers: list[tuple[int, str]] = []
    terminals: list[dict] = []  # type: ignore[type-arg]

    async def stop(client: httpx.AsyncClient, run_id: str, click: int) -> None:
        answer = await client.post(f"/agents/teller/runs/{run_id}/cancel", json={"reason": f"click {click}"})
        answers.append((answer.status_code, answer.json().get("status") or answer.json()["detail"]))

    async def one_run(client: httpx.AsyncClient, index: int) -> None:
        first = anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(read_stream, client, f"many-{index}", first, terminals)
            await first.wait()
            for click in range(5):
                group.start_soon(stop, client, f"many-{index}", click)

    limits = httpx.Limits(max_connections=200)
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=20, limits=limits) as client,
        anyio.create_task_group() as group,
    ):
        for index in range(20):
            group.start_soon(one_run, client, index)
    assert len(answers) == 100
    assert set(answers) == {(200, "CANCELLED")}, sorted(set(answers))
    assert len(terminals) == 20 and all(t["event"] == "RunCancelled" for t in terminals)
    assert all(t["reason"].startswith("click ") for t in terminals)


async def test_a_stop_after_the_run_completed_answers_400(
    make_app: Callable[..., FastAPI], live: Callable[..., LiveServer], tmp_path: Path
) -> None:
    storage = SlowFinalWrites(tmp_path / "done.db")
    app = make_app([Agent(name="Teller", model=ScriptedModel(["done"]), storage=storage)], storage=storage)
    server = live(app)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        ran = await client.post(
            "/agents/teller/runs", data={"message": "go", "run_id": "done-1", "stream": "false"}
        )
        assert ran.status_code == 200 and ran.json()["status"] == "COMPLETED"
        during = await client.post("/agents/teller/runs/done-1/cancel")  # its final write is still under way
        await anyio.sleep(0.7)
        after = await client.post("/agents/teller/runs/done-1/cancel")
    for answer in (during, after):
        assert answer.status_code == 400
        assert answer.json()["detail"] == "Run done-1 has already ended with status COMPLETED"

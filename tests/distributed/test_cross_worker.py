"""Stop a run from any worker: real ``tether serve`` processes sharing the machine's Redis."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..server.test_serve import serving, sse, stored_run
from .conftest import free_port

MODULE = """
from tether import Agent
from tether.testing import ScriptedModel

slow = Agent(name="Slow", model=ScriptedModel([f"word{i} " for i in range(3000)], delay=0.01))
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "remote_agents.py").write_text(MODULE)
    return tmp_path


def settings(project: Path, redis_url: str, prefix: str) -> tuple[list[str], dict[str, str]]:
    args = ["remote_agents:slow", "--storage", f"sqlite:///{project / 'runs.db'}", "--redis-url", redis_url]
    return args, {"TETHER_REDIS_PREFIX": prefix}


@contextlib.contextmanager
def two_workers(
    project: Path, redis_url: str, prefix: str
) -> Iterator[tuple[Any, Any, httpx.Client, httpx.Client]]:
    """Two ``tether serve`` processes sharing Redis, and a client for each: (first, second, a, b)."""
    args, env = settings(project, redis_url, prefix)
    with (
        serving(*args, cwd=project, env=env) as first,
        serving(*args, cwd=project, env=env) as second,
        httpx.Client(base_url=first.url, timeout=30) as a,
        httpx.Client(base_url=second.url, timeout=30) as b,
    ):
        yield first, second, a, b


def stream_until_content(client: httpx.Client, run_id: str) -> tuple[httpx.Response, Iterator, list[str]]:  # type: ignore[type-arg]
    request = client.build_request("POST", "/agents/slow/runs", data={"message": "go", "run_id": run_id})
    response = client.send(request, stream=True)
    assert response.status_code == 200, response.read()
    frames = sse(response)
    deltas: list[str] = []
    for name, data in frames:
        if name == "RunContent":
            deltas.append(data["content"])
            break
    return response, frames, deltas


def finish(response: httpx.Response, frames: Iterator, deltas: list[str]) -> dict:  # type: ignore[type-arg]
    last: dict = {}  # type: ignore[type-arg]
    for name, data in frames:
        if name == "RunContent":
            deltas.append(data["content"])
        last = data
    response.close()
    return last


@pytest.mark.timeout(90)
def test_a_run_streamed_by_one_server_is_cancelled_through_another(
    project: Path, redis_url: str, prefix: str
) -> None:
    with two_workers(project, redis_url, prefix) as (_, _, a, b):
        response, frames, deltas = stream_until_content(a, "cross-1")
        started = time.perf_counter()
        answer = b.post("/agents/slow/runs/cross-1/cancel", json={"reason": "stopped elsewhere"})
        elapsed = time.perf_counter() - started
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"run_id": "cross-1", "agent_id": "slow", "status": "CANCELLED"}
        assert elapsed < 2
        last = finish(response, frames, deltas)
        assert last["event"] == "RunCancelled"
        assert (last["source"], last["reason"]) == ("remote", "stopped elsewhere")
        assert last["content"] == "".join(deltas) and deltas[0] == "word0 "
        # The run has ended cancelled: through either server, a second cancel answers it is stopped.
        for client in (a, b):
            again = client.post("/agents/slow/runs/cross-1/cancel")
            assert (again.status_code, again.json()["status"]) == (200, "CANCELLED")
        missing = b.post("/agents/slow/runs/no-such-run/cancel")
        assert (missing.status_code, missing.json()["detail"]) == (404, "Run not found")
        # mode and grace travel too: the one-turn story only stops when the grace escalates.
        response, frames, deltas = stream_until_content(a, "cross-2")
        started = time.perf_counter()
        soft = b.post(
            "/agents/slow/runs/cross-2/cancel", json={"mode": "after_turn", "grace": 0.3, "reason": "soft"}
        )
        assert soft.json()["status"] == "CANCELLED" and 0.25 < time.perf_counter() - started < 3
        last = finish(response, frames, deltas)
        assert (last["event"], last["source"], last["reason"]) == ("RunCancelled", "remote", "soft")


@pytest.mark.timeout(90)
def test_a_cancel_sent_to_one_worker_before_the_run_starts_on_another_stops_it_at_its_start(
    project: Path, redis_url: str, prefix: str
) -> None:
    with two_workers(project, redis_url, prefix) as (_, _, a, b):
        early = b.post("/agents/slow/runs/overtaken-1/cancel", json={"reason": "overtook the start"})
        assert (early.status_code, early.json()["detail"]) == (404, "Run not found")
        with a.stream(
            "POST", "/agents/slow/runs", data={"message": "go", "run_id": "overtaken-1"}
        ) as response:
            assert response.status_code == 200
            frames = list(sse(response))
        assert [name for name, _ in frames] == ["RunStarted", "RunCancelled"]
        last = frames[-1][1]
        assert (last["source"], last["reason"], last["content"]) == ("user", "overtook the start", "")
    stored = stored_run(project / "runs.db", "overtaken-1")
    assert stored is not None
    assert (stored.status.value, stored.cancel_reason, stored.cancel_source) == (
        "CANCELLED",
        "overtook the start",
        "user",
    )


@pytest.mark.timeout(180)
def test_fifty_runs_cancelled_through_random_workers_all_end_cancelled(
    project: Path, redis_url: str, prefix: str
) -> None:
    args, env = settings(project, redis_url, prefix)
    rng = random.Random(7)

    def one(index: int) -> tuple[int, str, str]:
        with (
            httpx.Client(base_url=server.url, timeout=30) as streamer,
            httpx.Client(base_url=server.url) as canceller,
        ):
            run_id = f"many-{index}"
            response, frames, deltas = stream_until_content(streamer, run_id)
            time.sleep(rng.random() * 0.05)
            answer = canceller.post(f"/agents/slow/runs/{run_id}/cancel", headers={"Connection": "close"})
            last = finish(response, frames, deltas)
            assert last["content"] == "".join(deltas)
            return answer.status_code, answer.json().get("status", ""), last["event"]

    with serving(*args, "--workers", "4", cwd=project, env=env) as server, ThreadPoolExecutor(10) as pool:
        results = list(pool.map(one, range(50)))
    assert results == [(200, "CANCELLED", "RunCancelled")] * 50


@pytest.mark.timeout(60)
def test_redis_down_runs_work_and_a_remote_cancel_fails_fast(project: Path, prefix: str) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    args, env = settings(project, dead, prefix)
    with (
        serving(*args, cwd=project, env=env) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        response, frames, deltas = stream_until_content(client, "local-1")
        assert client.post("/agents/slow/runs/local-1/cancel").json()["status"] == "CANCELLED"
        assert finish(response, frames, deltas)["event"] == "RunCancelled"
        started = time.perf_counter()
        remote = client.post("/agents/slow/runs/owned-elsewhere/cancel")
        assert time.perf_counter() - started < 2
        assert remote.status_code == 500
        assert remote.json() == {"detail": "Failed to cancel run", "error_code": "INTERNAL_SERVER_ERROR"}


@pytest.mark.timeout(90)
def test_a_cancel_for_a_run_whose_worker_was_killed_answers_that_it_ended_in_error(
    project: Path, redis_url: str, prefix: str
) -> None:
    with two_workers(project, redis_url, prefix) as (doomed, _, a, b):
        response, _frames, _deltas = stream_until_content(a, "orphan-1")
        os.killpg(doomed.proc.pid, signal.SIGKILL)
        doomed.proc.wait(10)
        response.close()
        started = time.perf_counter()
        answer = b.post("/agents/slow/runs/orphan-1/cancel", json={"reason": "too late"})
        assert time.perf_counter() - started < 15  # two missed heartbeats (2 s each) and margins
        assert (answer.status_code, answer.json()) == (
            400,
            {"detail": "Run orphan-1 has already ended with status ERROR", "error_code": "BAD_REQUEST"},
        )
        stored = b.get("/agents/slow/runs/orphan-1").json()
        assert (stored["status"], stored["error"], stored["error_type"]) == (
            "ERROR",
            "worker exited while the run was active",
            "WorkerExited",
        )
        again = b.post("/agents/slow/runs/orphan-1/cancel")  # decided by the stored row now, at once
        assert (again.status_code, again.json()) == (400, answer.json())

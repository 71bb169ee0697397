"""Background runs and resumed streams over a real uvicorn server (issue 13): the 202, the resume and
events routes, Last-Event-ID, many readers, runs replayed from storage (after a restart too), 404s."""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
from fastapi import FastAPI

from tether import Agent, ConfigurationError
from tether._run import registry
from tether.testing import ScriptedModel

from .conftest import Frame, LiveServer, frames_of, sse_frames

pytestmark = pytest.mark.anyio

WORDS = [f"w{i} " for i in range(40)]
TEXT = "".join(WORDS)
EVENTS = len(WORDS) + 2  # RunStarted, a RunContent per word, RunCompleted
NOT_FOUND = {"detail": "Run not found", "error_code": "NOT_FOUND"}


def quick(name: str = "Teller", delay: float = 0.005, words: list[str] = WORDS, **options: Any) -> Agent:
    return Agent(name=name, model=ScriptedModel(words, delay=delay, **options))


def summary(frames: list[Frame]) -> list[tuple[int | None, str | None, str | None]]:
    return [(f.id, f.event, f.data.get("content")) for f in frames]


def check_whole(frames: list[Frame], terminal: str = "RunCompleted", text: str = TEXT) -> None:
    """Every index once, in order, each frame's id its event_index; the texts join to the terminal's."""
    assert [f.id for f in frames] == list(range(len(frames)))
    assert [f.data["event_index"] for f in frames] == [f.id for f in frames]
    assert frames[0].event == "RunStarted" and frames[-1].event == terminal
    assert "".join(f.data["content"] for f in frames if f.event == "RunContent") == text
    assert frames[-1].data["content"] == text


async def read(client: httpx.AsyncClient, method: str, path: str, **options: Any) -> list[Frame]:
    async with client.stream(method, path, **options) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        return [frame async for frame in sse_frames(response)]


async def read_some(client: httpx.AsyncClient, count: int, **form: str) -> list[Frame]:
    """POST a streaming run and leave after ``count`` frames."""
    frames: list[Frame] = []
    async with client.stream("POST", "/agents/teller/runs", data=form) as response:
        assert response.status_code == 200
        async for frame in sse_frames(response):
            frames.append(frame)
            if len(frames) == count:
                break
    return frames


def run_content(run_id: str) -> str:
    """The content of a live run so far (read in the test's thread: the registry is the process's)."""
    handle = registry.get(run_id)
    snapshot = handle.snapshot if handle is not None else None
    return snapshot().content if snapshot is not None else ""


async def wait_until(predicate: Callable[[], bool], seconds: float = 5) -> None:
    with anyio.fail_after(seconds):
        while not predicate():  # noqa: ASYNC110 - polls state owned by the server thread
            await anyio.sleep(0.005)


async def stored_status(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    with anyio.fail_after(10):
        run = (await client.get(f"/agents/teller/runs/{run_id}")).json()
        while run["status"] in ("PENDING", "RUNNING"):
            await anyio.sleep(0.01)
            run = (await client.get(f"/agents/teller/runs/{run_id}")).json()
    return run


async def test_a_background_run_answers_202_at_once_then_resumes_to_its_end(
    live: Callable[..., LiveServer], make_app: Callable[..., FastAPI]
) -> None:
    server = live(make_app([quick()]))
    async with httpx.AsyncClient(base_url=server.url) as client:
        form = {
            "message": "go",
            "stream": "false",
            "background": "true",
            "run_id": "bg-1",
            "session_id": "s-1",
        }
        started = await client.post("/agents/teller/runs", data=form)
        assert (started.status_code, started.json()) == (
            202,
            {"run_id": "bg-1", "agent_id": "teller", "session_id": "s-1", "status": "PENDING"},
        )
        handle = registry.get("bg-1")
        assert handle is not None and handle.task in server.server.config.app.state.tether.relays.tasks
        frames = await read(client, "POST", "/agents/teller/runs/bg-1/resume")
        check_whole(frames)
        assert len(frames) == EVENTS
        as_json = await client.post(
            "/agents/teller/runs", json={"message": "go", "stream": False, "background": True}
        )
        assert as_json.status_code == 202
        answer = as_json.json()
        assert (sorted(answer), answer["agent_id"], answer["status"]) == (
            ["agent_id", "run_id", "session_id", "status"],
            "teller",
            "PENDING",
        )
        check_whole(await read(client, "GET", f"/agents/teller/runs/{answer['run_id']}/events"))
        rest = await read(client, "POST", "/agents/teller/runs/bg-1/resume", json={"last_event_index": 9})
        assert summary(rest) == summary(frames[10:])
        as_form = await read(
            client,
            "POST",
            "/agents/teller/runs/bg-1/resume",
            data={"last_event_index": "9", "session_id": "s-1"},
        )
        assert summary(as_form) == summary(frames[10:])
        run = await stored_status(client, "bg-1")
        assert (run["status"], run["content"]) == ("COMPLETED", TEXT)


async def test_a_background_stream_survives_its_client_and_is_resumed(
    live: Callable[..., LiveServer], make_app: Callable[..., FastAPI]
) -> None:
    server = live(make_app([quick(delay=0.01)], on_disconnect="cancel"))
    async with httpx.AsyncClient(base_url=server.url) as client:
        form = {"message": "go", "stream": "true", "background": "true", "run_id": "bg-s"}
        first = await read_some(client, 5, **form)
        assert [f.id for f in first] == [0, 1, 2, 3, 4]
        assert registry.get("bg-s") is not None  # the client left; the run goes on
        rest = await read(client, "GET", "/agents/teller/runs/bg-s/events", headers={"Last-Event-ID": "4"})
        check_whole(first + rest)
        run = await stored_status(client, "bg-s")
        assert (run["status"], run["cancel_source"]) == ("COMPLETED", None)
        # Not in the background, the same client leaving cancels the run (on_disconnect="cancel").
        await read_some(client, 5, message="go", stream="true", run_id="fg-s")
        run = await stored_status(client, "fg-s")
        assert (run["status"], run["cancel_source"]) == ("CANCELLED", "consumer")


async def test_resuming_at_random_points_gives_every_event_once(
    live: Callable[..., LiveServer], make_app: Callable[..., FastAPI]
) -> None:
    seed = int.from_bytes(os.urandom(4))
    rng = random.Random(seed)
    server = live(make_app([quick(delay=0.002)], on_disconnect="cancel"))
    async with httpx.AsyncClient(base_url=server.url) as client:
        for trial in range(30):
            run_id, cut = f"cut-{trial}", rng.randint(1, EVENTS - 1)
            first = await read_some(
                client, cut, message="go", stream="true", background="true", run_id=run_id
            )
            last = str(first[-1].id)
            if rng.random() < 0.5:
                rest = await read(
                    client, "POST", f"/agents/teller/runs/{run_id}/resume", data={"last_event_index": last}
                )
            else:
                rest = await read(
                    client, "GET", f"/agents/teller/runs/{run_id}/events", headers={"Last-Event-ID": last}
                )
            assert len(first) == cut, (seed, trial)
            frames = first + rest
            assert [f.id for f in frames] == list(range(EVENTS)), (seed, trial, cut)
            check_whole(frames)


@pytest.mark.parametrize("readers", [2, 10])
async def test_many_readers_of_the_events_route_read_the_same_events(
    live: Callable[..., LiveServer], make_app: Callable[..., FastAPI], readers: int
) -> None:
    server = live(make_app([quick(delay=0.01)]))
    results: list[list[Frame]] = []
    async with httpx.AsyncClient(base_url=server.url) as client:
        form = {"message": "go", "stream": "false", "background": "true", "run_id": "many"}
        assert (await client.post("/agents/teller/runs", data=form)).status_code == 202

        async def reader() -> None:
            results.append(await read(client, "GET", "/agents/teller/runs/many/events"))

        async with anyio.create_task_group() as group:
            for _ in range(readers):
                group.start_soon(reader)
    assert len(results) == readers
    check_whole(results[0])
    assert [summary(frames) for frames in results] == [summary(results[0])] * readers


async def test_a_finished_run_is_replayed_from_storage_also_after_a_restart(
    live: Callable[..., LiveServer], make_app: Callable[..., FastAPI]
) -> None:
    server = live(make_app([quick(delay=0.001)]))
    async with httpx.AsyncClient(base_url=server.url) as client:
        whole = await read(client, "POST", "/agents/teller/runs", data={"message": "go", "run_id": "done"})
        check_whole(whole)
        await stored_status(client, "done")
        assert registry.get("done") is None and registry.ended_output("done") is None
        again = await read(client, "GET", "/agents/teller/runs/done/events", params={"last_event_index": 5})
        assert summary(again) == summary(whole[6:])
    await anyio.to_thread.run_sync(server.__exit__, None, None, None)
    restarted = live(make_app([quick()]))  # a new app over the same SQLite file
    async with httpx.AsyncClient(base_url=restarted.url) as client:
        replayed = await read(client, "GET", "/agents/teller/runs/done/events")
        assert replayed == whole
        tail = await read(
            client, "POST", "/agents/teller/runs/done/resume", json={"last_event_index": EVENTS - 2}
        )
        assert summary(tail) == summary(whole[-1:])
        assert (
            await read(
                client, "POST", "/agents/teller/runs/done/resume", json={"last_event_index": EVENTS - 1}
            )
            == []
        )


async def test_shutdown_stops_a_background_run_and_stores_it_for_a_resume_after_the_restart(
    live: Callable[..., LiveServer], make_app: Callable[..., FastAPI]
) -> None:
    server = live(make_app([quick(delay=0.05)]))
    async with httpx.AsyncClient(base_url=server.url) as client:
        form = {"message": "go", "stream": "false", "background": "true", "run_id": "bg-down"}
        assert (await client.post("/agents/teller/runs", data=form)).status_code == 202
        first: list[Frame] = []
        async with client.stream("GET", "/agents/teller/runs/bg-down/events") as response:
            async for frame in sse_frames(response):
                first.append(frame)
                if len(first) == 3:
                    break
    await anyio.to_thread.run_sync(server.__exit__, None, None, None)  # uvicorn's shutdown, then lifespan's
    assert registry.get("bg-down") is None
    restarted = live(make_app([quick()]))
    async with httpx.AsyncClient(base_url=restarted.url) as client:
        frames = await read(client, "GET", "/agents/teller/runs/bg-down/events")
    terminal = frames[-1]
    assert (terminal.event, terminal.data["source"], terminal.data["reason"]) == (
        "RunCancelled",
        "shutdown",
        "server shutting down",
    )
    assert summary(frames[:3]) == summary(first)
    check_whole(frames, "RunCancelled", terminal.data["content"])
    assert TEXT.startswith(terminal.data["content"]) and terminal.data["content"].startswith("w0 w1 ")


async def test_a_background_run_cancelled_while_nobody_reads_is_resumed_to_its_cancel(
    live: Callable[..., LiveServer], make_app: Callable[..., FastAPI]
) -> None:
    server = live(make_app([quick(delay=0.01, stall=60, stall_at=3)]))
    async with httpx.AsyncClient(base_url=server.url) as client:
        form = {"message": "go", "stream": "false", "background": "true", "run_id": "bg-stop"}
        assert (await client.post("/agents/teller/runs", data=form)).status_code == 202
        await wait_until(lambda: "w2" in run_content("bg-stop"))
        cancelled = await client.post("/agents/teller/runs/bg-stop/cancel", json={"reason": "enough"})
        assert cancelled.json() == {"run_id": "bg-stop", "agent_id": "teller", "status": "CANCELLED"}
        frames = await read(client, "POST", "/agents/teller/runs/bg-stop/resume")
    terminal = frames[-1]
    assert (terminal.event, terminal.data["reason"], terminal.data["source"]) == (
        "RunCancelled",
        "enough",
        "user",
    )
    check_whole(frames, "RunCancelled", "w0 w1 w2 ")


async def test_unknown_runs_other_agents_runs_and_other_sessions_are_404(
    live: Callable[..., LiveServer], make_app: Callable[..., FastAPI]
) -> None:
    server = live(make_app([quick(), quick("Other")]))
    async with httpx.AsyncClient(base_url=server.url) as client:
        form = {
            "message": "go",
            "stream": "false",
            "background": "true",
            "run_id": "mine",
            "session_id": "s-a",
        }
        assert (await client.post("/agents/teller/runs", data=form)).status_code == 202
        answers = [
            await client.post("/agents/teller/runs/nope/resume"),
            await client.get("/agents/teller/runs/nope/events"),
            await client.post("/agents/other/runs/mine/resume"),
            await client.get("/agents/other/runs/mine/events"),
            await client.post("/agents/teller/runs/mine/resume", json={"session_id": "s-b"}),
            await client.get("/agents/teller/runs/mine/events", params={"session_id": "s-b"}),
        ]
        assert [(a.status_code, a.json()) for a in answers] == [(404, NOT_FOUND)] * len(answers)
        unknown_agent = await client.get("/agents/nobody/runs/mine/events")
        assert (unknown_agent.status_code, unknown_agent.json()) == (
            404,
            {"detail": "Agent not found", "error_code": "NOT_FOUND"},
        )
        bad = [
            await client.get("/agents/teller/runs/mine/events", headers={"Last-Event-ID": "seven"}),
            await client.get("/agents/teller/runs/mine/events", params={"last_event_index": -2}),
            await client.post("/agents/teller/runs/mine/resume", json={"last_event_index": "x"}),
        ]
        assert [(a.status_code, a.json()["error_code"]) for a in bad] == [(422, "VALIDATION_ERROR")] * 3
        mine = await read(client, "GET", "/agents/teller/runs/mine/events", params={"session_id": "s-a"})
        check_whole(mine)


async def test_the_last_event_id_header_wins_over_the_query(
    live: Callable[..., LiveServer], make_app: Callable[..., FastAPI]
) -> None:
    server = live(make_app([quick(delay=0.001)]))
    async with httpx.AsyncClient(base_url=server.url) as client:
        whole = await read(client, "POST", "/agents/teller/runs", data={"message": "go", "run_id": "hdr"})
        path = "/agents/teller/runs/hdr/events"
        by_query = await read(client, "GET", path, params={"last_event_index": 2})
        by_header = await read(
            client, "GET", path, params={"last_event_index": 2}, headers={"Last-Event-ID": "30"}
        )
        from_start = await read(client, "GET", path, headers={"Last-Event-ID": "-1"})
    assert summary(by_query) == summary(whole[3:])
    assert summary(by_header) == summary(whole[31:])
    assert from_start == whole


async def test_an_idle_stream_gets_keep_alive_comments(
    live: Callable[..., LiveServer], make_app: Callable[..., FastAPI]
) -> None:
    agent = quick(delay=0.001, words=["a ", "b ", "c "], stall=1.0, stall_at=2)
    server = live(make_app([agent], sse_keepalive=0.05))
    texts: list[bytes] = []

    async def read_text(method: str, path: str, **options: Any) -> None:
        async with client.stream(method, path, **options) as response:
            texts.append(await response.aread())

    async with httpx.AsyncClient(base_url=server.url) as client, anyio.create_task_group() as group:
        form = {"message": "go", "stream": "true", "run_id": "idle"}
        group.start_soon(functools.partial(read_text, "POST", "/agents/teller/runs", data=form))
        await wait_until(lambda: registry.get("idle") is not None)
        group.start_soon(read_text, "GET", "/agents/teller/runs/idle/events")  # the run stream and a reader
    assert len(texts) == 2
    for text in texts:
        frames = frames_of(text.decode().split("\n"))
        comments = [f for f in frames if f.comment is not None]
        assert {f.comment for f in comments} == {"keep-alive"}
        assert 3 <= len(comments) <= 40  # about one every 0.05 s of the 1 s stall
        check_whole([f for f in frames if f.comment is None], text="a b c ")
        assert text.count(b": keep-alive\n\n") == len(comments)


async def test_the_keep_alive_period_is_15_seconds_by_default(
    live: Callable[..., LiveServer], make_app: Callable[..., FastAPI], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TETHER_SSE_KEEPALIVE", raising=False)
    server = live(make_app([quick(delay=0.001, words=["a ", "b "], stall=0.3, stall_at=1)]))
    async with (
        httpx.AsyncClient(base_url=server.url) as client,
        client.stream("POST", "/agents/teller/runs", data={"message": "go"}) as response,
    ):
        text = await response.aread()
    assert b": keep-alive" not in text
    assert server.server.config.app.state.tether.keepalive == 15.0


def test_the_keep_alive_period_comes_from_the_argument_or_the_environment(
    make_app: Callable[..., FastAPI], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETHER_SSE_KEEPALIVE", "2.5")
    assert make_app().state.tether.keepalive == 2.5
    assert make_app(sse_keepalive=0).state.tether.keepalive == 0.0
    monkeypatch.setenv("TETHER_SSE_KEEPALIVE", "soon")
    with pytest.raises(
        ConfigurationError, match=r"^TETHER_SSE_KEEPALIVE must be a number of seconds >= 0 \(got 'soon'\)$"
    ):
        make_app()
    for bad in (-1, float("nan"), float("inf"), True, "5"):
        with pytest.raises(
            ConfigurationError, match=r"^sse_keepalive must be a number of seconds >= 0 \(got "
        ):
            make_app(sse_keepalive=bad)

"""The HTTP API through httpx's ASGI transport: routes, bodies, errors, auth."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI

from tether import Agent, RunEvent, RunStatus
from tether.testing import ScriptedModel

from .conftest import parse_sse, slow_agent

pytestmark = pytest.mark.anyio


def quick(name: str = "Quick") -> Agent:
    return Agent(name=name, description="Answers at once", model=ScriptedModel(["Hello", " there."]))


async def test_health_and_agents(make_app: Callable[..., FastAPI], asgi: Callable[..., Any]) -> None:
    client = await asgi(make_app([quick(), quick("Second")]))
    assert (await client.get("/health")).json() == {"status": "ok"}
    assert (await client.get("/agents")).json() == [
        {"id": "quick", "name": "Quick", "description": "Answers at once"},
        {"id": "second", "name": "Second", "description": "Answers at once"},
    ]
    assert (await client.get("/agents/second")).json()["name"] == "Second"
    missing = await client.get("/agents/nope")
    assert (missing.status_code, missing.json()) == (
        404,
        {"detail": "Agent not found", "error_code": "NOT_FOUND"},
    )


@pytest.mark.parametrize("encoding", ["json", "form", "multipart"])
async def test_non_streaming_run_accepts_json_form_and_multipart(
    make_app: Callable[..., FastAPI], asgi: Callable[..., Any], encoding: str
) -> None:
    client = await asgi(make_app([quick()]))
    fields = {
        "message": "Hi",
        "stream": "false",
        "session_id": "s-1",
        "user_id": "ann",
        "run_id": f"r-{encoding}",
    }
    if encoding == "json":
        response = await client.post("/agents/quick/runs", json={**fields, "stream": False})
    elif encoding == "form":
        response = await client.post("/agents/quick/runs", data=fields)
    else:
        response = await client.post("/agents/quick/runs", data=fields, files={"unused": ("a.txt", b"x")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["run_id"], body["status"], body["content"]) == (f"r-{encoding}", "COMPLETED", "Hello there.")
    assert (body["session_id"], body["user_id"]) == ("s-1", "ann")
    stored = (await client.get(f"/agents/quick/runs/r-{encoding}")).json()
    assert stored == body


async def test_streaming_run_is_sse_with_the_terminal_event_last(
    make_app: Callable[..., FastAPI], asgi: Callable[..., Any]
) -> None:
    client = await asgi(make_app([quick()]))
    response = await client.post("/agents/quick/runs", data={"message": "Hi"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = parse_sse(response.text)
    assert [name for name, _ in frames] == ["RunStarted", "RunContent", "RunContent", "RunCompleted"]
    assert all(data["event"] == name for name, data in frames)
    assert frames[-1][1]["content"] == "Hello there." and frames[-1][1]["status"] == "COMPLETED"


async def test_bad_requests_are_clear_422s(
    make_app: Callable[..., FastAPI], asgi: Callable[..., Any]
) -> None:
    client = await asgi(make_app([quick()]))
    cases = [
        ({"data": {"stream": "false"}}, "message: Field required"),
        ({"data": {"message": ""}}, "message: String should have at least 1 character"),
        ({"data": {"message": "x" * 100_001}}, "message: String should have at most 100000 characters"),
        ({"data": {"message": "hi", "run_id": "bad id"}}, "run_id: String should match pattern"),
        ({"data": {"message": "hi", "stream": "maybe"}}, "stream: Input should be a valid boolean"),
        (
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            "body is not valid JSON",
        ),
        ({"content": b"[1]", "headers": {"content-type": "application/json"}}, "body must be a JSON object"),
        ({"content": b"message=hi", "headers": {"content-type": "text/plain"}}, "Content-Type must be"),
        (
            {"content": b"x" * 1_100_000, "headers": {"content-type": "application/json"}},
            "request body too large",
        ),
    ]
    for kwargs, expected in cases:
        response = await client.post("/agents/quick/runs", **kwargs)
        assert response.status_code == 422, (kwargs.keys(), response.text)
        body = response.json()
        assert body["error_code"] == "VALIDATION_ERROR" and isinstance(body["detail"], str)
        assert expected in body["detail"], body
    bad_path = await client.get("/agents/bad%20id")
    assert bad_path.status_code == 422 and "agent_id" in bad_path.json()["detail"]


async def test_a_run_id_in_use_is_a_400(make_app: Callable[..., FastAPI], asgi: Callable[..., Any]) -> None:
    client = await asgi(make_app([quick()]))
    first = await client.post(
        "/agents/quick/runs", data={"message": "Hi", "stream": "false", "run_id": "same"}
    )
    assert first.status_code == 200
    again = await client.post(
        "/agents/quick/runs", data={"message": "Hi", "stream": "false", "run_id": "same"}
    )
    assert again.status_code == 400 and again.json()["error_code"] == "BAD_REQUEST"
    assert "already used" in again.json()["detail"]


async def test_cancel_errors(make_app: Callable[..., FastAPI], asgi: Callable[..., Any]) -> None:
    client = await asgi(make_app([quick(), quick("Other")]))
    await client.post("/agents/quick/runs", data={"message": "Hi", "stream": "false", "run_id": "done-1"})
    ended = await client.post("/agents/quick/runs/done-1/cancel")
    assert ended.status_code == 400
    assert ended.json() == {
        "detail": "Run done-1 has already ended with status COMPLETED",
        "error_code": "BAD_REQUEST",
    }
    for path, detail in [
        ("/agents/quick/runs/unknown/cancel", "Run not found"),
        ("/agents/other/runs/done-1/cancel", "Run not found"),
        ("/agents/nobody/runs/done-1/cancel", "Agent not found"),
    ]:
        response = await client.post(path)
        assert (response.status_code, response.json()["detail"]) == (404, detail)
    bad = await client.post("/agents/quick/runs/done-1/cancel", json={"mode": "later"})
    assert bad.status_code == 422 and "mode" in bad.json()["detail"]
    bad_wait = await client.post("/agents/quick/runs/done-1/cancel?wait=-1")
    assert bad_wait.status_code == 422


async def test_a_repeated_cancel_is_a_200_and_a_run_that_ended_otherwise_a_400(
    make_app: Callable[..., FastAPI], asgi: Callable[..., Any]
) -> None:
    teller = slow_agent()
    failing = Agent(name="Failing", model=ScriptedModel(["x"], error=RuntimeError("boom"), error_at=0))
    client = await asgi(make_app([teller, failing]))
    stream = teller.arun("go", stream=True, run_id="stop-1")
    assert (await stream.__anext__()).event == RunEvent.run_started
    expected = {"run_id": "stop-1", "agent_id": "teller", "status": "CANCELLED"}
    first = await client.post("/agents/teller/runs/stop-1/cancel", json={"reason": "first"})
    assert (first.status_code, first.json()) == (200, expected)
    assert (await stream.collect()).status is RunStatus.cancelled
    for body in [None, {"reason": "again"}]:  # the run is stored now: each Stop click answers the same
        again = await client.post("/agents/teller/runs/stop-1/cancel", json=body)
        assert (again.status_code, again.json()) == (200, expected)
    stored = (await client.get("/agents/teller/runs/stop-1")).json()
    assert (stored["status"], stored["cancel_reason"], stored["cancel_source"]) == (
        "CANCELLED",
        "first",
        "user",
    )
    await client.post("/agents/failing/runs", data={"message": "Hi", "stream": "false", "run_id": "err-1"})
    failed = await client.post("/agents/failing/runs/err-1/cancel")
    assert (failed.status_code, failed.json()) == (
        400,
        {"detail": "Run err-1 has already ended with status ERROR", "error_code": "BAD_REQUEST"},
    )


async def test_listing_runs_and_sessions(make_app: Callable[..., FastAPI], asgi: Callable[..., Any]) -> None:
    client = await asgi(make_app([quick(), quick("Other")]))
    for agent, run_id, session in [("quick", "a1", "s1"), ("other", "b1", "s1"), ("quick", "a2", "s2")]:
        data = {"message": "Hi", "stream": "false", "run_id": run_id, "session_id": session}
        assert (await client.post(f"/agents/{agent}/runs", data=data)).status_code == 200
    ids = lambda r: [run["run_id"] for run in r.json()]  # noqa: E731
    assert ids(await client.get("/agents/quick/runs")) == ["a1", "a2"]
    assert ids(await client.get("/agents/quick/runs?session_id=s2")) == ["a2"]
    assert ids(await client.get("/agents/quick/runs?status=CANCELLED")) == []
    assert ids(await client.get("/sessions/s1/runs")) == ["a1", "b1"]
    assert (await client.get("/agents/quick/runs?status=BOGUS")).status_code == 422
    assert (await client.get("/agents/quick/runs/zzz")).status_code == 404


async def test_an_unexpected_error_is_a_500_without_internals(
    make_app: Callable[..., FastAPI], asgi: Callable[..., Any]
) -> None:
    app = make_app([quick()])

    @app.get("/explode")
    async def explode() -> None:
        raise RuntimeError("secret internal state")

    client = await asgi(app)
    response = await client.get("/explode")
    assert (response.status_code, response.json()) == (
        500,
        {"detail": "Internal server error", "error_code": "INTERNAL_SERVER_ERROR"},
    )
    assert "secret" not in response.text


async def test_a_failing_store_is_a_clear_500(
    make_app: Callable[..., FastAPI], asgi: Callable[..., Any], tmp_path: Any
) -> None:
    import sqlite3

    client = await asgi(make_app([quick()]))
    with sqlite3.connect(tmp_path / "server.db") as db:
        db.execute("DROP TABLE tether_runs")
    response = await client.get("/agents/quick/runs")
    assert (response.status_code, response.json()["detail"]) == (500, "Failed to list runs")


async def test_run_status_values_are_agnos(
    make_app: Callable[..., FastAPI], asgi: Callable[..., Any]
) -> None:
    client = await asgi(make_app([quick()]))
    body = (await client.post("/agents/quick/runs", json={"message": "x", "stream": False})).json()
    assert body["status"] == RunStatus.completed.value == "COMPLETED"

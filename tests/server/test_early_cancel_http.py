"""A Stop that overtakes the start over HTTP (issue 13): 404 now, and the run then starts cancelled."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI

from tether import Agent, ConfigurationError
from tether._run import registry
from tether.testing import ScriptedModel

from .conftest import parse_sse

pytestmark = pytest.mark.anyio


async def test_a_cancel_before_the_run_is_404_and_the_run_then_starts_cancelled(
    make_app: Callable[..., FastAPI], asgi: Callable[..., Any]
) -> None:
    model = ScriptedModel(["never"])
    client = await asgi(make_app([Agent(name="Quick", model=model)]))
    early = await client.post("/agents/quick/runs/chosen-1/cancel", json={"reason": "overtook"})
    assert (early.status_code, early.json()) == (404, {"detail": "Run not found", "error_code": "NOT_FOUND"})
    response = await client.post("/agents/quick/runs", data={"message": "hi", "run_id": "chosen-1"})
    assert response.status_code == 200
    frames = parse_sse(response.text)
    assert [name for name, _ in frames] == ["RunStarted", "RunCancelled"]
    assert {key: frames[-1][1][key] for key in ("run_id", "reason", "source", "content")} == {
        "run_id": "chosen-1",
        "reason": "overtook",
        "source": "user",
        "content": "",
    }
    assert model.calls == []
    stored = (await client.get("/agents/quick/runs/chosen-1")).json()
    assert (stored["status"], stored["cancel_reason"], stored["cancel_source"]) == (
        "CANCELLED",
        "overtook",
        "user",
    )


async def test_cancel_memory_zero_keeps_nothing(
    make_app: Callable[..., FastAPI], asgi: Callable[..., Any]
) -> None:
    client = await asgi(make_app([Agent(name="Quick", model=ScriptedModel(["ok"]))], cancel_memory=0))
    assert (await client.post("/agents/quick/runs/kept-1/cancel")).status_code == 404
    data = {"message": "hi", "run_id": "kept-1", "stream": "false"}
    ran = (await client.post("/agents/quick/runs", data=data)).json()
    assert (ran["status"], ran["content"]) == ("COMPLETED", "ok")


async def test_cancel_memory_is_the_processs_while_the_app_runs(
    make_app: Callable[..., FastAPI], monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = Agent(name="Quick", model=ScriptedModel(["ok"]))
    with pytest.raises(ConfigurationError, match="cancel_memory"):
        make_app([agent], cancel_memory=-1)
    monkeypatch.setenv("TETHER_CANCEL_MEMORY", "soon")
    with pytest.raises(ConfigurationError, match="TETHER_CANCEL_MEMORY"):
        make_app([agent])
    monkeypatch.setenv("TETHER_CANCEL_MEMORY", "2.5")
    app = make_app([agent])
    assert registry.cancel_memory == 60.0, "read by create_app, applied only while the app runs"
    async with app.router.lifespan_context(app):
        assert registry.cancel_memory == 2.5
    assert registry.cancel_memory == 60.0

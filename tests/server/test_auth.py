"""The security key: every route of the app, those FastAPI adds included, needs it, except ``/health``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import fastapi.routing
import httpx
import pytest
from fastapi import FastAPI

from tether import Agent
from tether.testing import ScriptedModel

pytestmark = pytest.mark.anyio

KEY = "s3cret"
PARAMS = {"agent_id": "quick", "run_id": "r-auth", "session_id": "s-auth"}
RUN_FORM = {"message": "Hi", "stream": "false", "run_id": "r-auth", "session_id": "s-auth"}
# Every route, with what it answers to a caller holding the key (or to anyone on an open server).
# A route the app gains must be added here: the test fails on a route it does not know.
ROUTES: dict[tuple[str, str], tuple[int, str]] = {
    ("GET", "/health"): (200, "application/json"),
    ("GET", "/openapi.json"): (200, "application/json"),
    ("GET", "/docs"): (200, "text/html; charset=utf-8"),
    ("GET", "/docs/oauth2-redirect"): (200, "text/html; charset=utf-8"),
    ("GET", "/redoc"): (200, "text/html; charset=utf-8"),
    ("GET", "/agents"): (200, "application/json"),
    ("GET", "/agents/{agent_id}"): (200, "application/json"),
    ("POST", "/agents/{agent_id}/runs"): (200, "application/json"),  # the run r-auth, RUN_FORM
    ("GET", "/agents/{agent_id}/runs"): (200, "application/json"),
    ("GET", "/agents/{agent_id}/runs/{run_id}"): (404, "application/json"),  # before r-auth ran
    ("POST", "/agents/{agent_id}/runs/{run_id}/cancel"): (404, "application/json"),  # idem
    ("POST", "/agents/{agent_id}/runs/{run_id}/resume"): (404, "application/json"),  # idem
    ("GET", "/agents/{agent_id}/runs/{run_id}/events"): (404, "application/json"),  # idem
    ("GET", "/sessions/{session_id}/runs"): (200, "application/json"),
}
OPEN = {("GET", "/health")}
START_RUN = ("POST", "/agents/{agent_id}/runs")  # called last: it stores the run r-auth
MISSING = {"detail": "Authorization header required", "error_code": "UNAUTHENTICATED"}
INVALID = {"detail": "Invalid authentication token", "error_code": "UNAUTHENTICATED"}


def every_route(app: FastAPI) -> Iterator[tuple[str, str]]:
    """(method, path template) of each route the app serves, as FastAPI lists them."""
    # FastAPI 0.16x keeps included routers unexpanded in app.routes; older ones list every route.
    expand = getattr(fastapi.routing, "iter_route_contexts", None)
    for route in expand(app.routes) if expand is not None else app.routes:
        for method in route.methods:
            yield method, route.path


def quick() -> Agent:
    return Agent(name="Quick", description="Answers at once", model=ScriptedModel(["Hello"]))


async def call(client: Any, method: str, path: str, header: str | None) -> Any:
    headers = {"Authorization": header} if header is not None else {}
    data = RUN_FORM if method == "POST" and path.endswith("/runs") else None
    return await client.request(method, path.format(**PARAMS), data=data, headers=headers)


async def test_every_route_needs_the_key_but_health(
    make_app: Callable[..., FastAPI], asgi: Callable[..., Any]
) -> None:
    app = make_app([quick()], security_key=KEY)
    assert sorted(every_route(app)) == sorted(ROUTES)
    client = await asgi(app)
    for method, path in sorted(ROUTES):
        for header, refused in [(None, MISSING), ("Bearer wrong", INVALID), (f"Basic {KEY}", INVALID)]:
            response = await call(client, method, path, header)
            if (method, path) in OPEN:
                assert response.status_code == 200, (method, path)
            else:
                assert (response.status_code, response.json()) == (401, refused), (method, path, header)
    assert (await client.get("/agents/quick/runs", headers={"Authorization": f"Bearer {KEY}"})).json() == []
    for method, path in sorted(ROUTES, key=START_RUN.__eq__):
        response = await call(client, method, path, f"Bearer {KEY}")
        assert (response.status_code, response.headers["content-type"]) == ROUTES[method, path], (
            method,
            path,
        )


@pytest.mark.parametrize("header", [None, "Bearer anything"])
async def test_an_open_server_answers_every_route_to_anyone(
    make_app: Callable[..., FastAPI], asgi: Callable[..., Any], header: str | None
) -> None:
    app = make_app([quick()])
    assert sorted(every_route(app)) == sorted(ROUTES)
    client = await asgi(app)
    for method, path in sorted(ROUTES, key=START_RUN.__eq__):
        response = await call(client, method, path, header)
        assert (response.status_code, response.headers["content-type"]) == ROUTES[method, path], (
            method,
            path,
        )


@pytest.mark.parametrize("root_path", ["", "/tether"])
async def test_the_docs_pages_load_the_spec_from_under_the_root_path(
    make_app: Callable[..., FastAPI], root_path: str
) -> None:
    app = make_app([quick()], security_key=KEY)
    transport = httpx.ASGITransport(app=app, root_path=root_path)
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=headers) as client:
        spec = (await client.get("/openapi.json")).json()
        docs, redoc = (await client.get("/docs")).text, (await client.get("/redoc")).text
    assert spec == {**app.openapi(), **({"servers": [{"url": root_path}]} if root_path else {})}
    assert f"url: '{root_path}/openapi.json'" in docs
    assert f"oauth2RedirectUrl: window.location.origin + '{root_path}/docs/oauth2-redirect'" in docs
    assert f'spec-url="{root_path}/openapi.json"' in redoc


async def test_the_header_is_read_exactly(make_app: Callable[..., FastAPI], asgi: Callable[..., Any]) -> None:
    client = await asgi(make_app([quick()], security_key=KEY))
    for header in [
        "Bearer wrong",
        "Basic czNjcmV0",
        "Bearer",
        "bearer s3cre",
        "Bearer s3cret extra",
        "s3cret",
    ]:
        response = await client.get("/agents", headers={"Authorization": header})
        assert (response.status_code, response.json()) == (401, INVALID), header
    for header in ["Bearer s3cret", "bearer s3cret", "BEARER  s3cret "]:  # the scheme has no case
        assert (await client.get("/agents", headers={"Authorization": header})).status_code == 200, header


async def test_security_key_from_the_environment(
    make_app: Callable[..., FastAPI], asgi: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETHER_SECURITY_KEY", "from-env")
    client = await asgi(make_app([quick()]))
    assert (await client.get("/agents")).status_code == 401
    assert (await client.get("/agents", headers={"Authorization": "Bearer from-env"})).status_code == 200

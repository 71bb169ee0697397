"""``create_app``: the FastAPI app serving agents over HTTP, Agno AgentOS-compatible."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import Depends, FastAPI

from .. import __version__
from .._agent import Agent
from .._run import registry
from .._run._registry import check_memory, stop_runs
from .._wire import Health
from ..exceptions import ConfigurationError
from ..storage import Storage, storage_from_url
from . import _docs, _errors, _routes
from ._auth import require_key
from ._disconnect import DisconnectPolicy
from ._state import ServerState

if TYPE_CHECKING:
    from ..distributed import RedisCancellation

logger = logging.getLogger("tether.server")

SHUTDOWN_WAIT = 10.0
DEFAULT_STORAGE_URL = "sqlite:///tether.db"
DEFAULT_SSE_KEEPALIVE = 15.0


def create_app(
    agents: Agent | Sequence[Agent],
    *,
    storage: Storage | None = None,
    security_key: str | None = None,
    on_disconnect: DisconnectPolicy = "cancel",
    redis_url: str | None = None,
    cancel_memory: float | None = None,
    sse_keepalive: float | None = None,
) -> FastAPI:
    """A FastAPI app serving ``agents``; the cancel operation follows Agno AgentOS.

    ``storage`` defaults to ``TETHER_STORAGE_URL`` or a SQLite file ``tether.db``; agents without a
    store of their own use it. ``security_key`` (default ``TETHER_SECURITY_KEY``) makes every route
    but ``/health`` require ``Authorization: Bearer <key>``, ``/openapi.json``, ``/docs`` and ``/redoc``
    included. ``on_disconnect``: ``"cancel"`` stops a run whose client went away before it ended,
    streaming or not (``source="consumer"``); ``"continue"`` lets it finish in the background (as a run
    started with ``background=true`` always does; any run is read again with ``POST .../resume`` or
    ``GET .../events``).
    ``redis_url`` (default ``TETHER_REDIS_URL``; key prefix ``TETHER_REDIS_PREFIX``, default ``tether:``)
    lets a cancel reach a run owned by another worker process. ``cancel_memory`` (default
    ``TETHER_CANCEL_MEMORY``, else the process's setting, 60 s) is how long a cancel for a run id no
    worker has yet is kept: the cancel answers 404, and a run then started with that id starts cancelled
    (the client chose the id, and its Stop overtook its start). It is set for the whole process while the
    app runs (``0`` keeps none). ``sse_keepalive`` (default ``TETHER_SSE_KEEPALIVE``, else 15): an event
    stream with nothing to send gets an SSE comment every ``sse_keepalive`` seconds (the first within two
    periods of silence), so proxies keep the connection of a run that waits on a slow model or tool; 0
    sends none.

    Example::

        app = create_app([agent], storage=SqliteStorage("runs.db"), security_key="s3cret")
        # uvicorn module:app, or: tether serve module:agent
    """
    chosen = [agents] if isinstance(agents, Agent) else list(agents)
    if not chosen or not all(isinstance(agent, Agent) for agent in chosen):
        raise ConfigurationError("create_app needs one or more tether Agents")
    if len({agent.id for agent in chosen}) != len(chosen):
        raise ConfigurationError("two agents have the same id; give each a distinct id=")
    if on_disconnect not in ("cancel", "continue"):
        raise ConfigurationError(f"on_disconnect must be 'cancel' or 'continue' (got {on_disconnect!r})")
    store = storage or storage_from_url(os.environ.get("TETHER_STORAGE_URL", DEFAULT_STORAGE_URL))
    for agent in chosen:
        if agent.storage is None:
            agent.storage = store
    key = security_key if security_key is not None else os.environ.get("TETHER_SECURITY_KEY") or None
    state = ServerState.of(chosen, store, on_disconnect, _keepalive(sse_keepalive))
    redis = redis_url or os.environ.get("TETHER_REDIS_URL") or None
    memory = _cancel_memory(cancel_memory)

    # No description routes of FastAPI's own: they would be open to anyone (see _docs).
    app = FastAPI(
        title="tether",
        version=__version__,
        lifespan=_lifespan(state, redis, memory),
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.tether = state
    _errors.install(app)

    @app.get("/health", tags=["Health"], response_model=Health)
    async def health() -> Health:
        return Health()

    # Security is declared (and enforced) only when a key is set, so the spec says what the server does.
    auth = [Depends(require_key(key))] if key else []
    app.include_router(_routes.build(state), dependencies=auth)
    app.include_router(_docs.build(app), dependencies=auth)
    return app


def _cancel_memory(seconds: float | None) -> float | None:
    """``cancel_memory``, or ``TETHER_CANCEL_MEMORY``; None: leave the process's setting as it is."""
    if seconds is not None:
        return check_memory(seconds)
    if not (text := os.environ.get("TETHER_CANCEL_MEMORY")):
        return None
    try:
        return check_memory(float(text))
    except ValueError as exc:
        raise ConfigurationError(f"TETHER_CANCEL_MEMORY must be a number of seconds (got {text!r})") from exc


def _keepalive(given: float | None) -> float:
    """The keep-alive period: given, else ``TETHER_SSE_KEEPALIVE``, else 15 s; a ConfigurationError if bad."""
    name, value = "sse_keepalive", repr(given)
    if given is None:
        text = os.environ.get("TETHER_SSE_KEEPALIVE") or None
        if text is None:
            return DEFAULT_SSE_KEEPALIVE
        name, value = "TETHER_SSE_KEEPALIVE", repr(text)
        try:
            given = float(text)
        except ValueError:
            given = float("nan")  # refused below, with the text as given
    if isinstance(given, bool) or not isinstance(given, int | float) or not 0 <= given < float("inf"):
        raise ConfigurationError(f"{name} must be a number of seconds >= 0 (got {value})")
    return float(given)


def _lifespan(state: ServerState, redis_url: str | None, memory: float | None):  # type: ignore[no-untyped-def]
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stores = {id(s): s for s in [state.storage, *(a.storage for a in state.agents.values() if a.storage)]}
        for store in stores.values():
            await store.open()  # a clear error at start-up, not a hang mid-run
        kept = registry.cancel_memory
        if memory is not None:
            registry.cancel_memory = memory
        remote = await _attach_remote(redis_url)
        try:
            yield
        finally:
            await shutdown_runs(state)
            if remote is not None:
                await remote.adetach()
            registry.cancel_memory = kept
            for store in stores.values():
                await store.aclose()

    return lifespan


async def _attach_remote(redis_url: str | None) -> RedisCancellation | None:
    if redis_url is None:
        return None
    if registry.remote is not None:
        logger.info("a remote canceller is already attached in this process; using it")
        return None
    from ..distributed import RedisCancellation

    prefix = os.environ.get("TETHER_REDIS_PREFIX", "tether:")
    return await RedisCancellation(redis_url, prefix=prefix).aattach()


async def shutdown_runs(state: ServerState) -> None:
    """Cancel the app's live runs (``source="shutdown"``) and wait, bounded, until they are stored."""
    handles = [h for h in registry.handles() if h.agent_id in state.agents]
    await stop_runs(handles, "server shutting down", "shutdown", SHUTDOWN_WAIT)

"""The HTTP routes: agents, runs (start, stream, cancel, read, list) and sessions.

Reading a run's events again (resume, events) lives in :mod:`._resume`.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse

from .._agent import Agent
from .._ids import ID_PATTERN
from .._options import RunOptions
from .._run import CancelAnswer, RunHandle, RunOutput, RunStatus, registry
from .._wire import AgentInfo, BackgroundRun, CancelRequest, CancelResult, RunRequest
from ..distributed._protocol import RemoteOutcome
from ..exceptions import ConfigurationError, RemoteCancelError, StorageError
from ..storage._base import CRASHED_ERROR, CRASHED_TYPE
from . import _body, _resume
from ._collect import RunOutputResponse
from ._disconnect import client_gone
from ._errors import HTTPProblem, logger, responses
from ._sse import EventStreamResponse
from ._state import ServerState

AgentId = Annotated[str, Path(pattern=ID_PATTERN.pattern, description="The agent's id")]
RunId = Annotated[str, Path(pattern=ID_PATTERN.pattern, description="The run's id")]
SessionId = Annotated[str, Path(pattern=ID_PATTERN.pattern, description="The session's id")]

RUN_BODY = _body.openapi_body(RunRequest, required=True)
CANCEL_BODY = _body.openapi_body(CancelRequest, required=False)
STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A RunOutput, or with stream=true a text/event-stream of run events",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    202: {
        "model": BackgroundRun,
        "description": "With background=true and stream=false: the run has started and goes on",
    },
}


def build(state: ServerState) -> APIRouter:
    """All the routes that need auth (``/health`` lives on the app)."""
    router = APIRouter()
    _agent_routes(router, state)
    _run_routes(router, state)
    _cancel_route(router, state)
    _resume.add_routes(router, state)
    _read_routes(router, state)
    return router


def _agent_routes(router: APIRouter, state: ServerState) -> None:
    @router.get("/agents", tags=["Agents"], response_model=list[AgentInfo], responses=responses(401, 500))
    async def list_agents() -> list[AgentInfo]:
        return [AgentInfo(id=a.id, name=a.name, description=a.description) for a in state.agents.values()]

    @router.get(
        "/agents/{agent_id}",
        tags=["Agents"],
        response_model=AgentInfo,
        responses=responses(401, 404, 422, 500),
    )
    async def get_agent(agent_id: AgentId) -> AgentInfo:
        agent = state.agent(agent_id)
        return AgentInfo(id=agent.id, name=agent.name, description=agent.description)


def _run_routes(router: APIRouter, state: ServerState) -> None:
    @router.post(
        "/agents/{agent_id}/runs",
        tags=["Agents"],
        summary="Create Agent Run",
        operation_id="create_agent_run",
        description="Start a run of the agent. With stream=true (the default) the answer is a "
        "text/event-stream of its events, each frame's id: its event_index; with stream=false the "
        "RunOutput once it ended. "
        "With background=true the run goes on whatever happens to this request: with stream=false a 202 "
        "answers at once; with stream=true a client that goes away does not stop it. A run is read "
        "again with POST .../resume or GET .../events.",
        response_model=RunOutput,
        responses={**STREAM_DOC, **responses(400, 401, 404, 422, 500, d404="Agent not found")},
        openapi_extra=RUN_BODY,
    )
    async def create_run(agent_id: AgentId, request: Request) -> Any:
        agent = state.agent(agent_id)
        body = await _body.read(request, RunRequest)
        if body.run_id is not None:
            await _check_unused(state, body.run_id)
        if body.background and not body.stream:
            return await _start_background(state, agent, body)
        try:
            stream = agent.arun(body.message, stream=True, **_run_options(body))
        except ConfigurationError as exc:
            raise _refused(exc) from exc
        if body.stream:  # a background run survives its client: the "continue" policy
            policy = "continue" if body.background else state.on_disconnect
            on_gone = functools.partial(client_gone, stream, policy)
            return EventStreamResponse.of_run(
                stream, state.relays, keepalive=state.keepalive, on_gone=on_gone
            )
        return RunOutputResponse(stream, state.relays, state.on_disconnect)


def _cancel_route(router: APIRouter, state: ServerState) -> None:
    @router.post(
        "/agents/{agent_id}/runs/{run_id}/cancel",
        tags=["Agents"],
        summary="Cancel Agent Run",
        description="Cancel a currently executing agent run. The run stops at once (or after its current "
        'turn with mode="after_turn"), keeps its partial content, and is stored as CANCELLED.',
        operation_id="cancel_agent_run",
        response_model=CancelResult,
        responses=responses(400, 401, 404, 422, 500, d404="Agent not found", d500="Failed to cancel run"),
        openapi_extra=CANCEL_BODY,
    )
    async def cancel_run(
        agent_id: AgentId,
        run_id: RunId,
        request: Request,
        wait: Annotated[float, Query(ge=0, le=60, description="Seconds to wait for the run to end")] = 5.0,
    ) -> CancelResult:
        agent = state.agent(agent_id)
        body = await _body.read(request, CancelRequest, required=False)
        handle = registry.get(run_id)
        try:  # a run of this process, live or ending (its final write under way): an exact answer
            answer = registry.answer_cancel(
                run_id, reason=body.reason, agent_id=agent.id, mode=body.mode, grace=body.grace
            )
        except Exception as exc:
            logger.exception("cancelling run %s failed", run_id, exc_info=exc)
            raise HTTPProblem(500, "Failed to cancel run") from exc
        if answer is not None:
            if handle is not None:  # an ENDED answer may come while a failed run still ends
                await _wait_ended(handle, wait)
            status = _status_here(handle, run_id)
            if answer is CancelAnswer.ENDED:
                raise HTTPProblem(400, f"Run {run_id} has already ended with status {status.value}")
            return CancelResult(run_id=run_id, agent_id=agent.id, status=status)
        if registry.remote is not None:
            remote_status = await _cancel_remote(state, agent, run_id, body, wait)
            if remote_status is not None:
                return CancelResult(run_id=run_id, agent_id=agent.id, status=remote_status)
        stored = await _stored(state, agent, run_id, failure="Failed to cancel run")
        if stored is None or stored.status.is_active:
            raise HTTPProblem(404, "Run not found")
        if stored.status is RunStatus.cancelled:  # a repeated Stop: the run is stopped, as asked
            return CancelResult(run_id=run_id, agent_id=agent.id, status=stored.status)
        raise HTTPProblem(400, f"Run {run_id} has already ended with status {stored.status.value}")


def _read_routes(router: APIRouter, state: ServerState) -> None:
    @router.get(
        "/agents/{agent_id}/runs/{run_id}",
        tags=["Agents"],
        response_model=RunOutput,
        responses=responses(401, 404, 422, 500),
    )
    async def get_run(agent_id: AgentId, run_id: RunId) -> RunOutput:
        agent = state.agent(agent_id)
        handle = registry.get(run_id)
        if handle is not None and handle.agent_id == agent.id:
            return _live(handle)
        ended = registry.ended_output(run_id)  # its final write is under way
        if ended is not None and ended.agent_id == agent.id:
            return ended
        stored = await _stored(state, agent, run_id, failure="Failed to read run")
        if stored is None:
            raise HTTPProblem(404, "Run not found")
        return stored

    @router.get(
        "/agents/{agent_id}/runs",
        tags=["Agents"],
        response_model=list[RunOutput],
        responses=responses(401, 404, 422, 500),
    )
    async def list_runs(
        agent_id: AgentId,
        status: RunStatus | None = None,
        session_id: Annotated[str | None, Query(pattern=ID_PATTERN.pattern)] = None,
        limit: Annotated[int | None, Query(ge=1, le=1000)] = None,
    ) -> list[RunOutput]:
        agent = state.agent(agent_id)
        return await _list(state, agent_id=agent.id, status=status, session_id=session_id, limit=limit)

    @router.get(
        "/sessions/{session_id}/runs",
        tags=["Sessions"],
        response_model=list[RunOutput],
        responses=responses(401, 422, 500),
    )
    async def session_runs(session_id: SessionId) -> list[RunOutput]:
        runs = await _list(state, session_id=session_id)
        return [run for run in runs if run.agent_id in state.agents]


async def _start_background(state: ServerState, agent: Agent, body: RunRequest) -> JSONResponse:
    """Start a run with no consumer (202 at once); the server holds its task until it ends."""
    try:
        output = await agent.arun(body.message, background=True, **_run_options(body))
    except ConfigurationError as exc:
        raise _refused(exc) from exc
    handle = registry.get(output.run_id)
    if handle is not None and handle.task is not None:
        state.relays.hold(handle.task)
    answer = BackgroundRun(
        run_id=output.run_id, agent_id=agent.id, session_id=output.session_id, status=output.status
    )
    return JSONResponse(answer.model_dump(mode="json"), status_code=202)


def _run_options(body: RunRequest) -> RunOptions:
    return RunOptions(run_id=body.run_id, session_id=body.session_id, user_id=body.user_id)


def _refused(exc: ConfigurationError) -> HTTPProblem:
    return HTTPProblem(400 if "already in use" in str(exc) else 422, str(exc))


async def _cancel_remote(
    state: ServerState, agent: Agent, run_id: str, body: CancelRequest, wait: float
) -> RunStatus | None:
    """Cancel a run another worker owns; its status after up to ``wait`` s, or None if it is not live.

    A run whose worker is gone (killed) is stored as ERROR "worker exited while the run was active".
    With Redis unreachable, a run whose end is stored is answered from storage (None); else a 500.
    """
    assert registry.remote is not None
    agent_id = agent.id
    try:
        outcome = await registry.remote.cancel(
            run_id, agent_id=agent_id, reason=body.reason, mode=body.mode, grace=body.grace
        )
    except RemoteCancelError as exc:
        stored = await _stored(state, agent, run_id, failure="Failed to cancel run")
        if stored is not None and not stored.status.is_active:
            return None  # ended and stored: the answer needs no other worker
        logger.error("cancelling run %s through Redis failed: %s", run_id, exc)
        raise HTTPProblem(500, "Failed to cancel run") from exc
    if outcome is RemoteOutcome.owner_dead:  # the run died with its worker: its row says so from now on
        stored = await _read(state, run_id, failure="Failed to cancel run")
        if stored is not None and stored.agent_id == agent_id and stored.status.is_active:
            crashed = {"status": RunStatus.error, "error": CRASHED_ERROR, "error_type": CRASHED_TYPE}
            try:
                await state.storage.finish_run(stored.model_copy(update=crashed))
            except StorageError as exc:
                logger.error("recording run %s as ended with its worker failed: %s", run_id, exc)
                raise HTTPProblem(500, "Failed to cancel run") from exc
    if outcome is not RemoteOutcome.cancelled:
        return None
    status = RunStatus.running
    with anyio.move_on_after(wait):
        while status.is_active:  # the run ends in another process: watch its stored row
            stored = await _read(state, run_id, failure="Failed to cancel run")
            status = stored.status if stored is not None else status
            if status.is_active:
                await anyio.sleep(0.02)
    return status


async def _check_unused(state: ServerState, run_id: str) -> None:
    """A run id already stored is refused (an active one is refused by ``agent.arun`` itself)."""
    if await _read(state, run_id, failure="Failed to read run") is not None:
        raise HTTPProblem(400, f"run id {run_id!r} is already used by a stored run")


async def _stored(state: ServerState, agent: Agent, run_id: str, *, failure: str) -> RunOutput | None:
    stored = await _read(state, run_id, failure=failure)
    return stored if stored is not None and stored.agent_id == agent.id else None


async def _read(state: ServerState, run_id: str, *, failure: str) -> RunOutput | None:
    """The stored run (any agent's); a failing store is a 500 with ``failure`` as its detail."""
    try:
        return await state.storage.get_run(run_id)
    except StorageError as exc:
        logger.error("reading run %s failed: %s", run_id, exc)
        raise HTTPProblem(500, failure) from exc


async def _list(state: ServerState, **filters: Any) -> list[RunOutput]:
    try:
        runs = await state.storage.list_runs(**filters)
    except StorageError as exc:
        logger.error("listing runs failed: %s", exc)
        raise HTTPProblem(500, "Failed to list runs") from exc
    runs = [registry.ended_output(run.run_id) or run for run in runs]  # final writes under way
    wanted = filters.get("status")
    return [run for run in runs if wanted is None or run.status is wanted]


async def _wait_ended(handle: RunHandle, wait: float) -> None:
    """Wait up to ``wait`` seconds for the run to end (it may not have started yet)."""
    if wait <= 0:
        return  # a timeout of 0 still costs a turn of the event loop, a long one under load
    with anyio.move_on_after(wait):
        await handle.done_event().wait()


def _status_here(handle: RunHandle | None, run_id: str) -> RunStatus:
    """The status of a run of this process: its handle's, or its output's while its final write is on."""
    if handle is not None:
        return handle.status
    ended = registry.ended_output(run_id)
    return ended.status if ended is not None else RunStatus.running


def _live(handle: RunHandle) -> RunOutput:
    if handle.snapshot is not None:
        return handle.snapshot()
    return RunOutput(
        run_id=handle.run_id,
        agent_id=handle.agent_id,
        agent_name=handle.agent_name,
        session_id=handle.session_id,
        user_id=handle.user_id,
        status=handle.status,
    )

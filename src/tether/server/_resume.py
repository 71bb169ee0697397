"""Reading a run's events again over HTTP: ``POST .../resume`` (Agno AgentOS's) and ``GET .../events``.

Both answer a text/event-stream of the run's events after a given ``event_index`` (all of them when
none is given), then its live ones, ending with its terminal event: a client that lost its stream
resumes from the last frame it got, with no gap and no repeat. A run that has ended is replayed from
storage (also after a restart). The reader is an attached one (:meth:`tether.Agent.aattach`): any
number may read a run at once, and one leaving never cancels it.

``GET .../events`` is what a browser's ``EventSource`` reconnects to by itself: it sends the ``id:`` of
the last frame it got as the ``Last-Event-ID`` header, which wins over the ``last_event_index`` query
parameter (the position the page started from).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request
from pydantic import WithJsonSchema
from starlette.responses import Response

from .._ids import ID_PATTERN
from .._wire import ResumeRequest
from ..exceptions import ConfigurationError, RunNotFoundError, StorageError
from . import _body
from ._errors import HTTPProblem, logger, responses
from ._sse import EventStreamResponse
from ._state import ServerState

AgentId = Annotated[str, Path(pattern=ID_PATTERN.pattern, description="The agent's id")]
RunId = Annotated[str, Path(pattern=ID_PATTERN.pattern, description="The run's id")]
EventIndex = Annotated[int | None, Query(ge=-1, description="Resume after this event_index")]
# An absent header is the None; the spec says what a present one holds (a header is never null).
LastEventId = Annotated[
    int | None,
    WithJsonSchema({"type": "integer", "minimum": -1}),
    Header(
        alias="Last-Event-ID",
        ge=-1,
        description="The id: of the last frame received (sent by EventSource when it reconnects)",
    ),
]
SessionQuery = Annotated[
    str | None, Query(pattern=ID_PATTERN.pattern, description="If given, the run's session must be this one")
]

RESUME_BODY = _body.openapi_body(ResumeRequest, required=False)
EVENTS_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A text/event-stream of the run's events after the given index, ending with its "
        "terminal event (each frame's id: is its event_index; ': keep-alive' comments while it is idle)",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    **responses(401, 404, 422, 500, d404="Run not found"),
}
SSE_ROUTE: dict[str, Any] = {
    "tags": ["Agents"],
    "status_code": 200,
    "response_class": Response,  # no media type: the spec's 200 is EVENTS_DOC's alone, errors are JSON
    "responses": EVENTS_DOC,
}
RESUME_DESCRIPTION = (
    "Stream a run's events again, after last_event_index (all of them when absent): the events missed, "
    "then the live ones, then the terminal event. A run that has ended is replayed from storage. Any "
    "number of clients may read a run at once; a client that goes away never stops it."
)


def add_routes(router: APIRouter, state: ServerState) -> None:
    @router.post(
        "/agents/{agent_id}/runs/{run_id}/resume",
        summary="Resume Agent Run",
        description=RESUME_DESCRIPTION,
        operation_id="resume_agent_run",
        **SSE_ROUTE,
        openapi_extra=RESUME_BODY,
    )
    async def resume_run(agent_id: AgentId, run_id: RunId, request: Request) -> EventStreamResponse:
        body = await _body.read(request, ResumeRequest, required=False)
        return await _events(state, agent_id, run_id, body.last_event_index, body.session_id)

    @router.get(
        "/agents/{agent_id}/runs/{run_id}/events",
        summary="Agent Run Events",
        description=f"{RESUME_DESCRIPTION} The Last-Event-ID header (what EventSource sends when it "
        "reconnects) wins over the last_event_index query parameter.",
        operation_id="get_agent_run_events",
        **SSE_ROUTE,
    )
    async def run_events(
        agent_id: AgentId,
        run_id: RunId,
        last_event_index: EventIndex = None,
        session_id: SessionQuery = None,
        last_event_id: LastEventId = None,
    ) -> EventStreamResponse:
        after = last_event_id if last_event_id is not None else last_event_index
        return await _events(state, agent_id, run_id, after, session_id)


async def _events(
    state: ServerState, agent_id: str, run_id: str, after: int | None, session_id: str | None
) -> EventStreamResponse:
    """The stream of an attached reader; a 404 (before any header is sent) if there is no such run."""
    agent = state.agent(agent_id)
    try:
        reader = agent.aattach(run_id, after=after)
        await reader.locate()  # without waiting for the run's next event: a stalled run answers at once
    except RunNotFoundError as exc:
        raise HTTPProblem(404, "Run not found") from exc
    except ConfigurationError as exc:
        raise HTTPProblem(422, str(exc)) from exc
    except StorageError as exc:
        logger.error("reading run %s failed: %s", run_id, exc)
        raise HTTPProblem(500, "Failed to read run") from exc
    if session_id is not None and reader.session_id != session_id:
        raise HTTPProblem(404, "Run not found")
    return EventStreamResponse.of_reader(reader, state.relays, keepalive=state.keepalive)

"""Request and response bodies of the HTTP API, shared by the server and the client."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from ._ids import ID_PATTERN
from ._run import RunStatus

Id = Annotated[str, Field(pattern=ID_PATTERN.pattern)]
MAX_MESSAGE_CHARS = 100_000
MAX_BODY_BYTES = 1_048_576


class AgentInfo(BaseModel):
    id: str
    name: str | None = None
    description: str | None = None


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class RunRequest(BaseModel):
    """``POST /agents/{agent_id}/runs``: JSON, urlencoded or multipart form fields (Agno's client: forms)."""

    model_config = ConfigDict(extra="ignore")

    message: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS, description="The user's message")
    stream: bool = Field(default=True, description="Stream events (text/event-stream) or answer a RunOutput")
    background: bool = Field(
        default=False,
        description="The run goes on whatever happens to this request: with stream=false a 202 answers at "
        "once (a BackgroundRun); with stream=true the events stream as usual and the run survives a "
        "disconnect. Read it again with POST .../resume or GET .../events.",
    )
    session_id: Id | None = None
    user_id: str | None = Field(default=None, max_length=256)
    run_id: Id | None = Field(
        default=None, description="Chosen by the client, so it can cancel before any event"
    )


class CancelRequest(BaseModel):
    """Optional body of the cancel operation (JSON or form)."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=1000)
    mode: Literal["immediate", "after_turn"] = "immediate"
    grace: float | None = Field(default=None, ge=0, le=3600)


class CancelResult(BaseModel):
    """The run was active and is stopped; ``status`` is its status after waiting up to ``wait`` seconds."""

    run_id: str
    agent_id: str
    status: RunStatus


class BackgroundRun(BaseModel):
    """The 202 answer of ``POST /agents/{agent_id}/runs`` with ``background=true, stream=false``."""

    run_id: str
    agent_id: str
    session_id: str | None = None
    status: RunStatus


class ResumeRequest(BaseModel):
    """Optional body of ``POST /agents/{agent_id}/runs/{run_id}/resume`` (JSON or form)."""

    model_config = ConfigDict(extra="ignore")

    last_event_index: int | None = Field(
        default=None,
        ge=-1,
        description="The event_index of the last event received: the stream starts after it (all if absent)",
    )
    session_id: Id | None = Field(default=None, description="If given, the run's session must be this one")

"""What one run needs (RunSpec, from the agent) and its working memory (RunState, owned by its task)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._messages import Message, ToolCall
from .._text import DeltaScrubber
from ..models.base import Model, ModelUsage
from ._channel import Channel
from ._events import BaseRunEvent, RunEvent, RunStartedEvent, RunStatus, construct
from ._handle import RunHandle
from ._output import RunOutput

if TYPE_CHECKING:
    from ..tools._execute import ToolOutcome
    from ..tools._tool import Tool
    from ._store import Storage


@dataclass(frozen=True)
class RunSpec:
    """Everything the agent hands to one run."""

    model: Model
    messages: tuple[Message, ...]
    tools: tuple[Tool, ...] = ()
    max_steps: int = 20
    storage: Storage | None = None
    continue_session: bool = False  # load the session's earlier runs as history (storage needed)
    history_runs: int | None = None  # how many earlier runs to load (None: all)
    keep_interrupted: bool = True  # keep cancelled partial answers in the history
    refuse_stored: bool = False  # the caller chose the run id: refuse it if a stored run has it


class RunState:
    """The working memory of one run, owned by its task."""

    __slots__ = (
        "channel",
        "content_fields",
        "escaped",
        "refused",
        "first_token_at",
        "handle",
        "messages",
        "output",
        "parts",
        "pending",
        "scrubber",
        "spec",
        "start_write",
        "started_at",
        "tools",
        "turn_start",
        "usage",
        "wall_started",
    )

    def __init__(self, handle: RunHandle, spec: RunSpec) -> None:
        self.handle = handle
        self.spec = spec
        self.tools = {tool.name: tool for tool in spec.tools}
        self.messages = list(spec.messages)
        self.channel = Channel(handle.log)
        self.parts: list[str] = []  # every text delta delivered, across all model turns
        self.turn_start = 0  # where the current model turn's text starts in ``parts``
        self.pending = PendingCalls()
        self.scrubber = DeltaScrubber()  # model deltas: split surrogate pairs joined, lone ones replaced
        self.escaped: BaseException | None = None  # e.g. KeyboardInterrupt: re-raised to the consumer
        self.refused = False  # its id belongs to a stored run: nothing of this run is written
        self.first_token_at: float | None = None
        self.usage: ModelUsage | None = None
        self.started_at = time.monotonic()
        self.wall_started = int(time.time())
        self.output: RunOutput | None = None
        self.start_write: asyncio.Task[None] | None = None  # the RUNNING row's write, once started
        self.content_fields: dict[str, Any] = {
            "event": RunEvent.run_content,
            "event_index": 0,  # set as it is put in the channel
            **self.common(),
            "status": RunStatus.running,
        }

    def common(self) -> dict[str, Any]:
        h = self.handle
        return {
            "run_id": h.run_id,
            "agent_id": h.agent_id,
            "agent_name": h.agent_name,
            "session_id": h.session_id,
        }

    def started_event(self) -> BaseRunEvent:
        """The run's RunStarted event; built without validation (every live run keeps it in its log,
        and a validated model holds a set of its own: 200 bytes more per run) unless the model's id is
        not a string, which validation then refuses as before."""
        model_id = self.spec.model.id
        fields = {"event": RunEvent.run_started, "event_index": 0, **self.common()}
        fields.update(created_at=int(time.time()), status=RunStatus.running, content=None, model=model_id)
        if isinstance(model_id, str | None):
            return construct(RunStartedEvent, fields)
        return RunStartedEvent.model_validate(fields)

    def emit(self, event: BaseRunEvent) -> None:
        """Deliver a (non-hot-path) event; a consumer that has gone away cancels the run."""
        if not self.channel.put(event):
            self.handle.request_cancel(None, "consumer")

    def add_usage(self, usage: ModelUsage | None) -> None:
        if usage is None:
            return
        if self.usage is None:
            self.usage = ModelUsage(0, 0, 0)
        for name in ("input_tokens", "output_tokens", "total_tokens"):
            value = getattr(usage, name)
            if value is not None:
                setattr(self.usage, name, (getattr(self.usage, name) or 0) + value)


@dataclass
class PendingCalls:
    """The tool calls of the current turn: requested, started, and their outcomes so far."""

    calls: list[ToolCall] = field(default_factory=list)
    started: dict[str, float] = field(default_factory=dict)  # call id -> monotonic start
    outcomes: dict[str, ToolOutcome] = field(default_factory=dict)

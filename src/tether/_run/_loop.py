"""The one run loop. Every way of running (stream or not, async or sync) goes through ``execute``.

``execute`` is the body of the run's own asyncio task. It runs the model inside an anyio
``CancelScope`` that ``cancel_run`` cancels from anywhere, so a cancel interrupts whatever the run
awaits. It never yields to a consumer: events go into a :class:`Channel`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import anyio
from anyio.lowlevel import checkpoint, checkpoint_if_cancelled

from .._messages import Message
from ..exceptions import TetherError
from ..models.base import Model, ModelTurnEnd
from ._channel import Channel
from ._events import (
    BaseRunEvent,
    RunCancelledEvent,
    RunCompletedEvent,
    RunContentEvent,
    RunErrorEvent,
    RunEvent,
    RunStartedEvent,
    RunStatus,
    construct,
)
from ._handle import RunHandle
from ._output import RunMetrics, RunOutput
from ._registry import registry

logger = logging.getLogger("tether.run")

CLOSE_TIMEOUT = 2.0
"""Seconds the model adapter gets to close its upstream after a cancel."""


class RunState:
    """The working memory of one run, owned by its task."""

    __slots__ = (
        "channel",
        "content_fields",
        "first_token_at",
        "handle",
        "messages",
        "model",
        "output",
        "parts",
        "started_at",
        "turn_end",
        "wall_started",
    )

    def __init__(self, handle: RunHandle, model: Model, messages: Sequence[Message]) -> None:
        self.handle = handle
        self.model = model
        self.messages = list(messages)
        self.channel = Channel()
        self.parts: list[str] = []
        self.first_token_at: float | None = None
        self.started_at = time.monotonic()
        self.wall_started = int(time.time())
        self.turn_end: ModelTurnEnd | None = None
        self.output: RunOutput | None = None
        self.content_fields: dict[str, Any] = {
            "event": RunEvent.run_content,
            "run_id": handle.run_id,
            "agent_id": handle.agent_id,
            "agent_name": handle.agent_name,
            "session_id": handle.session_id,
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


async def execute(state: RunState) -> None:
    """Run the model, stream events, and end with exactly one terminal event."""
    handle = state.handle
    failure: Exception | None = None
    try:
        with anyio.CancelScope() as scope:
            handle.attach(scope)
            started = RunStartedEvent(status=RunStatus.running, model=state.model.id, **state.common())
            state.channel.put(started)
            await checkpoint_if_cancelled()  # cancelled while pending: the model is never called
            await _stream_model(state)
    except Exception as exc:
        failure = exc
    except BaseException:
        # Cancelled from outside tether (loop shutdown, the task itself cancelled): record, re-raise.
        handle.request_cancel(None, "outer")
        _finish(state, None)
        raise
    _finish(state, failure)


async def _stream_model(state: RunState) -> None:
    channel = state.channel
    fields = state.content_fields
    parts = state.parts
    deltas = state.model.stream(state.messages)
    try:
        async for delta in deltas:
            if type(delta) is str:
                if not delta:
                    continue
                if state.first_token_at is None:
                    state.first_token_at = time.monotonic()
                event_fields = fields.copy()
                event_fields["content"] = delta
                event_fields["created_at"] = int(time.time())
                parts.append(delta)
                if not channel.put(construct(RunContentEvent, event_fields)):
                    state.handle.request_cancel(None, "consumer")
                    await checkpoint()  # our scope is cancelled now: this raises
                elif channel.full:
                    await channel.wait_for_room()
            elif isinstance(delta, ModelTurnEnd):
                state.turn_end = delta
    finally:
        aclose = getattr(deltas, "aclose", None)
        if aclose is not None:
            # Shielded and bounded: the upstream must be closed even though we are cancelled.
            with anyio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await aclose()


def _finish(state: RunState, failure: Exception | None) -> None:
    """Decide the outcome, leave the registry, emit the terminal event, close the channel."""
    handle = state.handle
    status = handle.decide(failed=failure is not None)
    registry.unregister(handle)
    if failure is not None and not isinstance(failure, TetherError):
        logger.error("run %s failed", handle.run_id, exc_info=failure)
    output = state.output = _build_output(state, status, failure)
    state.channel.put(_terminal_event(output))
    state.channel.send.close()
    if handle.done is not None:
        handle.done.set()


def _build_output(state: RunState, status: RunStatus, failure: Exception | None) -> RunOutput:
    handle = state.handle
    content = "".join(state.parts)
    messages = list(state.messages)
    if content or status is RunStatus.completed:
        interrupted = status is not RunStatus.completed
        messages.append(Message(role="assistant", content=content, interrupted=interrupted))
    metrics = RunMetrics(duration=time.monotonic() - state.started_at)
    if state.first_token_at is not None:
        metrics.time_to_first_token = state.first_token_at - state.started_at
    usage = state.turn_end.usage if state.turn_end is not None else None
    if usage is not None:
        metrics.input_tokens = usage.input_tokens
        metrics.output_tokens = usage.output_tokens
        metrics.total_tokens = usage.total_tokens
    error = error_type = None
    if failure is not None and status is RunStatus.error:
        error_type = type(failure).__name__
        error = str(failure) if isinstance(failure, TetherError) else f"{error_type}: {failure}"
    cancelled = status is RunStatus.cancelled
    return RunOutput(
        **state.common(),
        model=state.model.id,
        status=status,
        content=content,
        messages=messages,
        cancel_reason=handle.cancel_reason if cancelled else None,
        cancel_source=handle.cancel_source if cancelled else None,
        error=error,
        error_type=error_type,
        metrics=metrics,
        created_at=state.wall_started,
    )


def _terminal_event(output: RunOutput) -> BaseRunEvent:
    common: dict[str, Any] = {
        "run_id": output.run_id,
        "agent_id": output.agent_id,
        "agent_name": output.agent_name,
        "session_id": output.session_id,
        "status": output.status,
        "content": output.content,
    }
    if output.status is RunStatus.cancelled:
        return RunCancelledEvent(**common, reason=output.cancel_reason, source=output.cancel_source)
    if output.status is RunStatus.error:
        return RunErrorEvent(
            **common, error=output.error or "run failed", error_type=output.error_type or "Error"
        )
    return RunCompletedEvent(**common)

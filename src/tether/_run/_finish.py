"""The end of every run: decide the outcome, repair the history, build the output, emit the last event."""

from __future__ import annotations

import logging
import time
from typing import Any

from .._messages import Message
from .._text import scrub
from ..exceptions import TetherError
from ._events import (
    BaseRunEvent,
    RunCancelledEvent,
    RunCompletedEvent,
    RunErrorEvent,
    RunEvent,
    RunStatus,
    construct,
)
from ._output import RunMetrics, RunOutput
from ._persist import persist
from ._registry import registry
from ._state import RunState
from ._tool_phase import close_pending

logger = logging.getLogger("tether.run")


async def finish(state: RunState) -> None:
    """Decide the outcome, persist it, leave the registry, emit the terminal event, close the channel.

    Runs after the run's cancel scope, from ``finally``. What the consumer has not taken is dropped
    first, so the output, the stored row and the terminal event carry exactly the text it received.
    The only await is the final write's bounded wait (shielded).
    """
    handle = state.handle
    channel = state.channel
    terminal: BaseRunEvent | None = None
    try:
        status = handle.life.decide()
        failure = handle.life.failure
        if failure is not None and not isinstance(failure, TetherError) and state.escaped is None:
            logger.error("run %s failed", handle.run_id, exc_info=failure)  # (an escaped one is re-raised)
        channel.settle()  # what the consumer has not taken is dropped
        if not channel.detached:
            keep = min(max(channel.received, state.turn_start), len(state.parts))
            del state.parts[keep:]
        _repair_history(state, status)
        output = state.output = snapshot(state, status, failure)
        terminal = terminal_event(output, channel.next_index)
        if state.spec.storage is not None and not state.refused:  # stored with it, for late readers
            output.__dict__["events"] = channel.log.record(terminal)
        await persist(state)
    finally:
        registry.unregister(handle)
        if state.output is None:  # building it failed: still one terminal event, from what is known
            state.output = RunOutput(
                run_id=handle.run_id,
                agent_id=handle.agent_id,
                status=RunStatus.error,
                content="".join(state.parts),
                error="internal error while ending the run (see the log)",
                error_type="InternalError",
            )
        if not channel.settled:  # the end failed early: still one terminal event, logged too
            channel.settle()
        if terminal is None:
            terminal = terminal_event(state.output, channel.next_index)
        channel.put(terminal)  # logged as well: other readers get it even if the consumer never takes it
        channel.end()
        handle.life.end()


def _repair_history(state: RunState, status: RunStatus) -> None:
    """Keep the history valid for the provider: partial text kept (marked), every tool call answered."""
    partial = "".join(state.parts[state.turn_start :])
    if partial:
        state.messages.append(Message(role="assistant", content=partial, interrupted=True))
    if state.pending.calls:
        reason = state.handle.cancel_reason or state.handle.cancel_source or "the run ended"
        note = f"Cancelled: {reason}" if status is RunStatus.cancelled else f"Not run: {reason}"
        close_pending(state, note)


def snapshot(state: RunState, status: RunStatus, failure: BaseException | None = None) -> RunOutput:
    """The run as a RunOutput with ``status`` (RUNNING for the row written at start).

    Built without validation (every value below is already of its field's type): it is made once
    per run and once per live-output read, thousands at a time when a server cancels everything.
    """
    handle = state.handle
    usage = state.usage
    first_token = state.first_token_at
    metrics = construct(
        RunMetrics,
        {
            "duration": time.monotonic() - state.started_at,
            "time_to_first_token": None if first_token is None else first_token - state.started_at,
            "input_tokens": usage.input_tokens if usage else None,
            "output_tokens": usage.output_tokens if usage else None,
            "total_tokens": usage.total_tokens if usage else None,
        },
    )
    error = error_type = None
    if failure is not None and status is RunStatus.error:
        error_type = type(failure).__name__
        text = scrub(str(failure))
        if isinstance(failure, TetherError):
            error = text or error_type
        else:
            error = f"{error_type}: {text}" if text else error_type
    cancelled = status is RunStatus.cancelled
    fields = state.common()
    fields.update(
        user_id=handle.user_id,
        parent_run_id=handle.parent_run_id,
        model=state.spec.model.id,
        status=status,
        content="".join(state.parts),
        messages=list(state.messages),
        cancel_reason=handle.cancel_reason if cancelled else None,
        cancel_source=handle.cancel_source if cancelled else None,
        error=error,
        error_type=error_type,
        metrics=metrics,
        created_at=state.wall_started,
        events=None,
    )
    return construct(RunOutput, fields)


def terminal_event(output: RunOutput, index: int) -> BaseRunEvent:
    fields: dict[str, Any] = {
        "event_index": index,
        "run_id": output.run_id,
        "agent_id": output.agent_id,
        "agent_name": output.agent_name,
        "session_id": output.session_id,
        "created_at": int(time.time()),
        "status": output.status,
        "content": output.content,
    }
    if output.status is RunStatus.cancelled:
        fields.update(event=RunEvent.run_cancelled, reason=output.cancel_reason, source=output.cancel_source)
        return construct(RunCancelledEvent, fields)
    if output.status is RunStatus.error:
        error, error_type = output.error or "run failed", output.error_type or "Error"
        fields.update(event=RunEvent.run_error, error=error, error_type=error_type)
        return construct(RunErrorEvent, fields)
    fields["event"] = RunEvent.run_completed
    return construct(RunCompletedEvent, fields)

"""The tool calls of one model turn: run concurrently, reported as events, answered in the history."""

from __future__ import annotations

import time

import anyio

from .._messages import Message, ToolCall
from .._text import scrub
from ..tools._execute import ToolOutcome, execute, parse_arguments
from ._context import RunContext
from ._escaped import Escaped, carried
from ._events import RunStatus, ToolCallCompletedEvent, ToolCallStartedEvent
from ._state import RunState


async def run_tool_calls(state: RunState, calls: list[ToolCall]) -> None:
    """Run every call of this turn at once; append the tool results to the history in call order."""
    pending = state.pending
    pending.calls, pending.started, pending.outcomes = list(calls), {}, {}
    context = RunContext(state.handle)
    try:
        async with anyio.create_task_group() as group:
            for call in calls:
                group.start_soon(_one_call, state, call, context)
    except BaseExceptionGroup as group_error:
        raise _first(group_error) from None
    close_pending(state, None)


def _first(group: BaseExceptionGroup) -> BaseException:
    """The one exception to raise in the run for a failed tool phase (an escaped one first)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            exc = _first(exc)
        if isinstance(exc, Escaped):
            return exc.exc
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first


async def _one_call(state: RunState, call: ToolCall, context: RunContext) -> None:
    await carried(_run_call(state, call, context))


async def _run_call(state: RunState, call: ToolCall, context: RunContext) -> None:
    name = call.function.name
    state.emit(
        ToolCallStartedEvent(
            **state.common(),
            status=RunStatus.running,
            tool_call_id=call.id,
            tool_name=name,
            tool_args=parse_arguments(call),
        )
    )
    state.pending.started[call.id] = time.monotonic()
    outcome = await execute(state.tools.get(name), call, context, sorted(state.tools))
    _complete(state, call, outcome)


def _complete(state: RunState, call: ToolCall, outcome: ToolOutcome) -> None:
    outcome.content = scrub(outcome.content)  # a tool's text, like a model's, must be storable
    if outcome.error is not None:
        outcome.error = scrub(outcome.error)
    pending = state.pending
    pending.outcomes[call.id] = outcome
    started = pending.started.get(call.id)
    state.emit(
        ToolCallCompletedEvent(
            **state.common(),
            status=state.handle.status,  # RUNNING, or the final status when closed at the end
            content=outcome.content,
            tool_call_id=call.id,
            tool_name=call.function.name,
            error=outcome.error,
            duration=None if started is None else time.monotonic() - started,
        )
    )


def close_pending(state: RunState, cancel_note: str | None) -> None:
    """Answer every call of the turn in the history; unanswered ones get ``cancel_note`` (history repair).

    Calls that started but did not finish also get a ``ToolCallCompleted`` event with that error, so
    a UI can close each spinner it opened.
    """
    pending = state.pending
    for call in pending.calls:
        outcome = pending.outcomes.get(call.id)
        if outcome is None:
            note = cancel_note or "Cancelled"
            outcome = ToolOutcome(content=note, error=note)
            if call.id in pending.started:
                _complete(state, call, outcome)
        state.messages.append(Message(role="tool", tool_call_id=call.id, content=outcome.content))
    pending.calls, pending.started, pending.outcomes = [], {}, {}

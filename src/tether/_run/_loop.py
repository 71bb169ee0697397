"""The one run loop. Every way of running (stream or not, async or sync) goes through ``execute``.

``execute`` is the body of the run's own asyncio task: model turn, tool calls, model turn, ... until
the model answers with text. It runs inside an anyio ``CancelScope`` that ``cancel_run`` cancels
from anywhere, so a cancel interrupts whatever the run awaits. It never yields to a consumer:
events go into a :class:`Channel`. Its end (:func:`finish`: outcome, final write, terminal event,
end of the channel) is guaranteed by ``finally``, whatever was raised.

The run keeps pace with its consumer at turn boundaries: before it runs a response's tool calls,
before its next model request, and before it completes, it waits until the consumer has taken
every event and asks for the next. So "the current turn" of ``mode="after_turn"`` is the turn the
consumer is reading, and a run that ends keeps exactly the text its consumer received.
"""

from __future__ import annotations

import asyncio

import anyio
from anyio.lowlevel import checkpoint_if_cancelled

from .._messages import Message, ToolCall, ToolCallFunction
from .._text import scrub
from ..exceptions import MaxStepsExceededError
from ._finish import finish
from ._persist import prepare
from ._registry import registry
from ._state import RunState
from ._tool_phase import run_tool_calls
from ._turn import stream_turn


async def execute(state: RunState) -> None:
    """Run the agent's turns, stream events, and end with exactly one terminal event."""
    handle = state.handle
    outer: BaseException | None = None
    try:
        with anyio.CancelScope() as scope:
            handle.start(scope)
            try:
                await registry.started(handle)  # other workers can cancel the run from its first event on
                state.emit(state.started_event())
                await checkpoint_if_cancelled()  # cancelled while pending: the model is never called
                await prepare(state)
                await _run_steps(state)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # KeyboardInterrupt, SystemExit too: they must not kill the loop
                handle.life.note_failure(exc)
                if not isinstance(exc, Exception):
                    state.escaped = exc  # re-raised to the consumer once the run is recorded
            await state.channel.caught_up()  # the consumer has everything before the run ends
    except BaseException as exc:
        # Cancelled from outside tether (loop shutdown, the task itself cancelled): record, re-raise.
        handle.request_cancel(None, "outer")
        outer = exc
    finally:
        await finish(state)
    if outer is not None:
        raise outer


async def _run_steps(state: RunState) -> None:
    channel = state.channel
    for step in range(state.spec.max_steps):
        if step:
            await channel.caught_up()
            if state.handle.cancel_requested:
                return  # a graceful stop (mode="after_turn"): no further model request
        end = await stream_turn(state)
        await channel.caught_up()  # the consumer has the whole response before it is committed
        state.add_usage(end.usage if end else None)
        calls = [_scrubbed(call) for call in end.tool_calls] if end else []
        text = "".join(state.parts[state.turn_start :])
        state.turn_start = len(state.parts)
        state.messages.append(Message(role="assistant", content=text or None, tool_calls=calls or None))
        if not calls:
            return
        await run_tool_calls(state, calls)
    raise MaxStepsExceededError(
        f"the model asked for tools in {state.spec.max_steps} consecutive steps without answering "
        f"(max_steps={state.spec.max_steps})"
    )


def _scrubbed(call: ToolCall) -> ToolCall:
    function = call.function
    name, arguments = scrub(function.name), scrub(function.arguments)
    if name is function.name and arguments is function.arguments and scrub(call.id) is call.id:
        return call
    return ToolCall(id=scrub(call.id), function=ToolCallFunction(name=name, arguments=arguments))

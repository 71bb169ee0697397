"""The one run loop. Every way of running (stream or not, async or sync) goes through ``execute``.

``execute`` is the body of the run's own asyncio task: model turn, tool calls, model turn, ... until
the model answers with text. It runs inside an anyio ``CancelScope`` that ``cancel_run`` cancels
from anywhere, so a cancel interrupts whatever the run awaits. It never yields to a consumer:
events go into a :class:`Channel`.
"""

from __future__ import annotations

import anyio
from anyio.lowlevel import checkpoint_if_cancelled

from .._messages import Message
from ..exceptions import MaxStepsExceededError
from ._events import RunStartedEvent, RunStatus
from ._finish import finish
from ._persist import prepare
from ._registry import registry
from ._state import RunState
from ._tool_phase import run_tool_calls
from ._turn import stream_turn


async def execute(state: RunState) -> None:
    """Run the agent's turns, stream events, and end with exactly one terminal event."""
    handle = state.handle
    failure: Exception | None = None
    try:
        with anyio.CancelScope() as scope:
            handle.attach(scope)
            await registry.started(handle)  # other workers can cancel the run from its first event on
            state.emit(RunStartedEvent(**state.common(), status=RunStatus.running, model=state.spec.model.id))
            await checkpoint_if_cancelled()  # cancelled while pending: the model is never called
            await prepare(state)
            await _run_steps(state)
    except Exception as exc:
        failure = exc
    except BaseException:
        # Cancelled from outside tether (loop shutdown, the task itself cancelled): record, re-raise.
        handle.request_cancel(None, "outer")
        await finish(state, None)
        raise
    await finish(state, failure)


async def _run_steps(state: RunState) -> None:
    for _ in range(state.spec.max_steps):
        if state.handle.cancel_requested:
            return  # a graceful stop (mode="after_turn"): no further model request
        end = await stream_turn(state)
        state.add_usage(end.usage if end else None)
        calls = end.tool_calls if end else []
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

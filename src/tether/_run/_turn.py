"""One model request, streamed: the per-chunk hot path of every run."""

from __future__ import annotations

import time

import anyio
from anyio.lowlevel import checkpoint

from ..models.base import ModelTurnEnd
from ._events import RunContentEvent, construct
from ._state import RunState

CLOSE_TIMEOUT = 2.0
"""Seconds the model adapter gets to close its upstream after a cancel."""


async def stream_turn(state: RunState) -> ModelTurnEnd | None:
    """Stream one model response into the channel; return how it ended (None if it did not say)."""
    channel = state.channel
    fields = state.content_fields
    parts = state.parts
    specs = [tool.spec() for tool in state.spec.tools]
    deltas = state.spec.model.stream(state.messages, specs)
    end: ModelTurnEnd | None = None
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
                end = delta
    finally:
        aclose = getattr(deltas, "aclose", None)
        if aclose is not None:
            # Shielded and bounded: the upstream must be closed even though we are cancelled.
            with anyio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await aclose()
    return end

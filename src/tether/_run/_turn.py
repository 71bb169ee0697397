"""One model request, streamed: the per-chunk hot path of every run.

A model yields a text delta as ``str`` or, for the texts of one network read, as ``list[str]``: the
loop below then pays one generator step per read instead of one per chunk.
"""

from __future__ import annotations

import time

import anyio
from anyio.lowlevel import checkpoint

from ..models.base import ModelTurnEnd
from ._events import BaseRunEvent, RunContentEvent, construct
from ._state import RunState

CLOSE_TIMEOUT = 2.0
"""Seconds the model adapter gets to close its upstream after a cancel."""


async def stream_turn(state: RunState) -> ModelTurnEnd | None:
    """Stream one model response into the channel; return how it ended (None if it did not say)."""
    channel = state.channel
    fields = state.content_fields
    parts = state.parts
    specs = [tool.spec() for tool in state.spec.tools]
    scrubber = state.scrubber
    deltas = state.spec.model.stream(state.messages, specs)
    end: ModelTurnEnd | None = None
    try:
        async for delta in deltas:
            if isinstance(delta, ModelTurnEnd):
                end = delta
                continue
            fields["created_at"] = int(time.time())  # one clock read per network read
            events: list[BaseRunEvent] = []
            for text in _texts(delta, state):
                if scrubber.held or not text.isascii():
                    text = scrubber.feed(text)
                if text:
                    event_fields = fields.copy()
                    event_fields["content"] = text
                    events.append(construct(RunContentEvent, event_fields))
                    parts.append(text)
            if not events:
                continue
            if state.first_token_at is None:
                state.first_token_at = time.monotonic()
            # No await between these events, so one bulk put is the same as one put each.
            if not channel.put_many(events):
                state.handle.request_cancel(None, "consumer")
                await checkpoint()  # our scope is cancelled now: this raises
            elif channel.full:
                await channel.wait_for_room()
        tail = scrubber.flush()  # a high surrogate left alone at the end of the response
        if tail:
            parts.append(tail)
            fields["content"] = tail
            state.emit(construct(RunContentEvent, fields.copy()))
    finally:
        aclose = getattr(deltas, "aclose", None)
        # An async generator that returned or raised (a cancel usually unwinds through it) has no
        # frame left: nothing to close, and no need for a shielded scope per run.
        if aclose is not None and getattr(deltas, "ag_frame", True) is not None:
            # Shielded and bounded: the upstream must be closed even though we are cancelled.
            with anyio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await aclose()
    return end


def _texts(delta: str | list[str], state: RunState) -> list[str]:
    if type(delta) is list:
        return delta
    if isinstance(delta, str):
        return [delta]
    kind = type(delta).__name__
    raise TypeError(f"{state.spec.model!r} yielded a {kind}; a model yields str, list[str] or ModelTurnEnd")

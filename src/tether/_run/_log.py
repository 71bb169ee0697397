"""EventLog: a run's events as its own consumer received them, for every other reader (attach/resume).

Indexes: every event gets its ``event_index`` as it is put in the run's channel (0 for ``RunStarted``);
events the consumer never took are dropped when the run ends and their indexes are given again, so
the log has no gaps. An event enters the log once the consumer has it: at once for ``async for``, and
for a reader that takes batches (the sync API, the server's SSE relay) when it asks for the next batch,
so a reader of the log never sees text that the run then drops. A run without a consumer (a background
run) logs each event as it is put.

The log keeps the last ``capacity`` events. A reader that asks for events older than that gets one
catch-up ``RunContent`` holding all the text it missed (the text of every event is kept, as the run
keeps its whole answer anyway), so the text it reads still adds up to the run's content.

Everything here runs on the run's event loop; a reader on another loop hops there (``_attach``).
"""

from __future__ import annotations

import asyncio
import bisect
from collections import deque
from typing import Any

from ._events import BaseRunEvent, RunContentEvent, RunEvent, RunStatus, construct

DEFAULT_CAPACITY = 1000
"""Events an EventLog keeps (older ones are replaced by a catch-up text for late readers)."""


class EventLog:
    __slots__ = ("_text_at", "_texts", "_waiters", "capacity", "ended", "events", "first", "next")

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self.events: deque[BaseRunEvent] = deque()
        self.first = 0  # the index of events[0]
        self.next = 0  # the index the next logged event has
        self.ended = False  # the terminal event is logged
        self._text_at: list[int] = []  # the index of every RunContent logged, in order
        self._texts: list[str] = []  # ... and its text
        self._waiters: list[asyncio.Future[None]] = []

    def add(self, event: BaseRunEvent) -> None:
        """Log ``event`` (its index must be :attr:`next`; an event logged already is ignored)."""
        if event.event_index != self.next or self.ended:
            return
        events = self.events
        events.append(event)
        self.next += 1
        if type(event) is RunContentEvent:
            self._text_at.append(event.event_index)
            self._texts.append(event.content or "")
        elif event.is_terminal:
            self.ended = True
        if len(events) > self.capacity:
            events.popleft()
            self.first += 1
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def after(self, index: int | None) -> list[BaseRunEvent]:
        """The logged events with ``event_index > index`` (all when None), a catch-up text first if some
        are no longer kept."""
        start = 0 if index is None else index + 1
        found: list[BaseRunEvent] = []
        if start < self.first:
            missed = self._text_between(start, self.first)
            if missed:
                found.append(self._catch_up(missed, self.first - 1))
            start = self.first
        events = self.events
        # By position from the right end: a reader that follows the run reads only the last few.
        found.extend(events[i] for i in range(start - self.first, len(events)))
        return found

    async def wait_after(self, index: int | None) -> list[BaseRunEvent]:
        """:meth:`after`, waiting until there is at least one event (or the log has ended)."""
        start = 0 if index is None else index + 1
        while self.next <= start and not self.ended:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter
        return self.after(index)

    def replay(self) -> list[BaseRunEvent]:
        """Every event for storage: the kept ones, each text that is no longer kept as its own RunContent."""
        gone = bisect.bisect_left(self._text_at, self.first)
        kept = list(self.events)
        if not gone:
            return kept
        texts = zip(self._text_at[:gone], self._texts, strict=False)
        return [self._content(text, at, kept[0]) for at, text in texts] + kept

    def _text_between(self, start: int, stop: int) -> str:
        lo, hi = bisect.bisect_left(self._text_at, start), bisect.bisect_left(self._text_at, stop)
        return "".join(self._texts[lo:hi])

    def _catch_up(self, text: str, index: int) -> BaseRunEvent:
        return self._content(text, index, self.events[0])  # some were dropped: capacity >= 1 are kept

    @staticmethod
    def _content(text: str, index: int, like: BaseRunEvent) -> BaseRunEvent:
        fields: dict[str, Any] = {
            "event": RunEvent.run_content,
            "event_index": index,
            "run_id": like.run_id,
            "agent_id": like.agent_id,
            "agent_name": like.agent_name,
            "session_id": like.session_id,
            "created_at": like.created_at,
            "status": RunStatus.running,
            "content": text,
        }
        return construct(RunContentEvent, fields)

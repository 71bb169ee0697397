"""EventLog: a run's events as its own consumer received them, for every other reader (attach/resume).

Indexes: every event gets its ``event_index`` as it is put in the run's channel (0 for ``RunStarted``);
events the consumer never took are dropped when the run ends and their indexes are given again, so
the log has no gaps. An event enters the log once the consumer has it: at once for ``async for``, and
for a reader that takes batches (the sync API, the server's SSE relay) when it asks for the next batch,
so a reader of the log never sees text that the run then drops. A run without a consumer (a background
run) logs each event as it is put.

Kept compactly, since every live run has a log: a ``RunContent`` as its text and second (the text is
the very string the run keeps for its answer anyway; 24 bytes per chunk in all), other events as they
are. Readers get ``RunContent`` events rebuilt from that. Events older than the last ``capacity`` are
not served one by one: a reader that asks for them gets one catch-up ``RunContent`` holding all the
text it missed, so the text it reads still adds up to the run's content.

Everything here runs on the run's event loop; a reader on another loop hops there (``_reader``).
"""

from __future__ import annotations

import asyncio
import bisect
from array import array
from typing import Any

from ._events import BaseRunEvent, RunContentEvent, RunEvent, RunStatus, construct

DEFAULT_CAPACITY = 1000
"""Events an EventLog serves one by one (older ones: a catch-up text for late readers)."""


class EventLog:
    __slots__ = (
        "_at",
        "_common",
        "_others",
        "_seconds",
        "_texts",
        "_waiters",
        "capacity",
        "ended",
        "next",
    )

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self.next = 0  # the index the next logged event has
        self.ended = False  # the terminal event is logged
        self._at = array("q")  # the index of every RunContent logged, in order
        self._texts: list[str] = []  # ... its text
        self._seconds = array("q")  # ... and its created_at
        self._others: dict[int, BaseRunEvent] = {}  # the other events, by index (the old ones let go)
        self._common: dict[str, Any] | None = None  # the fields every event of the run shares
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def first(self) -> int:
        """The oldest index served one by one."""
        return max(self.next - self.capacity, 0)

    def add(self, event: BaseRunEvent) -> None:
        """Log ``event`` (its index must be :attr:`next`; an event logged already is ignored)."""
        index = event.event_index
        if index != self.next or self.ended:
            return
        self.next = index + 1
        if self._common is None:
            self._common = _common(event)
        if type(event) is RunContentEvent:
            self._at.append(index)
            self._texts.append(event.content or "")
            self._seconds.append(event.created_at)
        else:
            self._others[index] = event
            self.ended = event.is_terminal
            if len(self._others) > self.capacity:  # the oldest ones are older than ``first``
                for old in [i for i in self._others if i < self.first]:
                    del self._others[old]
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def after(self, index: int | None) -> list[BaseRunEvent]:
        """The logged events with ``event_index > index`` (all when None), a catch-up text first if some
        of them are older than :attr:`first`."""
        start = 0 if index is None else index + 1
        first = self.first
        found: list[BaseRunEvent] = []
        if start < first:
            lo, hi = bisect.bisect_left(self._at, start), bisect.bisect_left(self._at, first)
            if hi > lo:
                found.append(self._content("".join(self._texts[lo:hi]), first - 1, self._seconds[hi - 1]))
            start = first
        found.extend(self._between(start, self.next))
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
        """Every event for storage: each text as its own RunContent, the other events still kept."""
        return list(self._between(0, self.next))

    def _between(self, start: int, stop: int) -> list[BaseRunEvent]:
        found: list[BaseRunEvent] = []
        at, others = self._at, self._others
        position = bisect.bisect_left(at, start)
        for index in range(start, stop):
            if position < len(at) and at[position] == index:
                found.append(self._content(self._texts[position], index, self._seconds[position]))
                position += 1
            elif (event := others.get(index)) is not None:
                found.append(event)
        return found

    def _content(self, text: str, index: int, second: int) -> BaseRunEvent:
        fields: dict[str, Any] = {
            "event": RunEvent.run_content,
            "event_index": index,
            **(self._common or {}),  # set by the first event: a RunContent is never the first
            "created_at": second,
            "status": RunStatus.running,
            "content": text,
        }
        return construct(RunContentEvent, fields)


def _common(event: BaseRunEvent) -> dict[str, Any]:
    return {
        "run_id": event.run_id,
        "agent_id": event.agent_id,
        "agent_name": event.agent_name,
        "session_id": event.session_id,
    }

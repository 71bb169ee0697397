"""EventLog: a run's events as its own consumer received them, for every other reader (attach/resume).

Indexes: every event gets its ``event_index`` as it is put in the run's channel (0 for ``RunStarted``);
events the consumer never took are dropped when the run ends and their indexes are given again, so
the log has no gaps. An event enters the log once the consumer has it: at once for ``async for``, and
for a reader that takes batches (the sync API, the server's SSE relay) when it asks for the next batch,
so a reader of the log never sees text that the run then drops. A run without a consumer (a background
run) logs each event as it is put.

Kept compactly, since every live run has a log: the ``RunContent`` events as :class:`TextRuns` (a
list slot per chunk beside its text, which the run keeps for its answer anyway), other events as they
are. A run that will be stored (``keep_all``) keeps every event, since its record
(:meth:`EventLog.record`) is every event its consumer received; any other run lets the other events
older than the last ``capacity`` go, so its log stays bounded but for its texts. Readers get
``RunContent`` events rebuilt from that. Events older than the last ``capacity`` are not served one
by one: a reader that asks for them gets one catch-up ``RunContent``
holding all the text it missed, so the text it reads still adds up to the run's content.

Everything here runs on the run's event loop; a reader on another loop hops there (``_reader``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from ._events import BaseRunEvent, RunContentEvent
from ._record import EventRecord, TextRuns, content_event, merged

COMMON = ("run_id", "agent_id", "agent_name", "session_id")
"""The fields every event of a run shares."""
DEFAULT_CAPACITY = 1000
"""Events an EventLog serves one by one (older ones: a catch-up text for late readers)."""


class EventLog:
    __slots__ = (
        "_first",
        "_in_run",
        "_others",
        "_second",
        "_texts",
        "_waiters",
        "capacity",
        "ended",
        "keep_all",
        "next",
    )

    def __init__(self, capacity: int = DEFAULT_CAPACITY, *, keep_all: bool = False) -> None:
        self.capacity = capacity
        self.keep_all = keep_all  # every event, for the run's record (a run with storage)
        self.next = 0  # the index the next logged event has
        self.ended = False  # the terminal event is logged
        self._texts = TextRuns()  # the RunContent events
        self._in_run = False  # the last event logged was a RunContent ...
        self._second = 0  # ... of this second: the next one of the same second continues its run
        self._others: list[BaseRunEvent] = []  # the other events, in order (old ones let go unless keep_all)
        self._first: BaseRunEvent | None = None  # the first event: its fields are every event's
        self._waiters: list[asyncio.Future[None]] | None = None

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
        if type(event) is RunContentEvent:  # the hot path: TextRuns' append, inlined
            texts = self._texts
            second = event.created_at
            if not self._in_run or second != self._second:
                texts.runs.extend((index, second, len(texts.texts)))
                self._in_run, self._second = True, second
            texts.texts.append(event.content or "")
        else:
            self._in_run = False
            if self._first is None:
                self._first = event
            self._others.append(event)
            self.ended = event.is_terminal
            if len(self._others) > self.capacity and not self.keep_all:  # some are older than ``first``
                first = self.first
                self._others = [other for other in self._others if other.event_index >= first]
        if self._waiters:
            waiters, self._waiters = self._waiters, None
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def after(self, index: int | None) -> list[BaseRunEvent]:
        """The logged events with ``event_index > index`` (all when None), a catch-up text first if some
        of them are older than :attr:`first`."""
        start = 0 if index is None else index + 1
        first = self.first
        found: list[BaseRunEvent] = []
        texts = self._texts
        if start < first:
            lo, hi = texts.count_before(start), texts.count_before(first)
            if hi > lo:
                caught_up = "".join(texts.texts[lo:hi])
                found.append(content_event(self._shared(), first - 1, texts.second_of(hi - 1), caught_up))
            start = first
        found.extend(merged(self._shared(), texts, self._others, start, self.next))
        return found

    async def wait_after(self, index: int | None) -> list[BaseRunEvent]:
        """:meth:`after`, waiting until there is at least one event (or the log has ended)."""
        start = 0 if index is None else index + 1
        while self.next <= start and not self.ended:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters = [*(self._waiters or ()), waiter]
            await waiter
        return self.after(index)

    def record(self, terminal: BaseRunEvent) -> EventRecord:
        """Every event so far, then ``terminal`` (not logged yet), for ``RunOutput.events`` and storage:
        each text as its own RunContent, every other event (the ones still kept unless ``keep_all``).
        Called once the run's end is decided, when no more text is logged."""
        others = [event for event in self._others if event.event_index < terminal.event_index]
        return EventRecord(self._texts, [*others, terminal], self._shared(terminal))

    def _shared(self, fallback: BaseRunEvent | None = None) -> dict[str, Any]:
        """The fields every event of the run shares, from its first event (a RunContent never is)."""
        first = self._first or fallback
        return {} if first is None else {name: getattr(first, name) for name in COMMON}

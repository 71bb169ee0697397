"""A run's events kept compactly: its texts as runs (:class:`TextRuns`), and :class:`EventRecord`.

A run's RunContent events differ only in ``event_index``, ``created_at`` and ``content``; consecutive
ones (no other event between them) emitted in the same second form a *run*, kept as its first
index, its second and where its texts start in one list. So a chunk costs the log one list slot (8
bytes) beside its text, which the run keeps for its answer anyway, and storage writes a run as
``[first_index, created_at, text, text, ...]``.

An :class:`EventRecord` is what ``RunOutput.events`` holds for a run that ran in this process (with
storage): a sequence of events built on first use, while storage reads :meth:`EventRecord.runs` and
:attr:`EventRecord.others`, so a long run is stored without an object built per chunk (rebuilding and
dumping every chunk through pydantic cost a server about 6 µs of CPU per chunk).
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterator, Sequence
from typing import Any, overload

from ._events import BaseRunEvent, RunContentEvent, RunEvent, RunStatus, construct


class TextRuns:
    """The texts of a run's RunContent events, in order, grouped in runs (see the module doc).

    ``runs`` holds three numbers per run: its first text's ``event_index``, the ``created_at`` all
    its texts share, and where its texts start in ``texts`` (one array, not three: a live run's log
    is 130 bytes smaller). Appended to by :class:`~tether._run._log.EventLog`, which inlines the
    append on its hot path.
    """

    __slots__ = ("runs", "texts")

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.runs = array("q")

    def _run_before(self, index: int) -> int:
        """The last run whose first text's index is below ``index`` (-1: none)."""
        runs = self.runs
        return bisect.bisect_left(range(len(runs) // 3), index, key=lambda run: runs[3 * run]) - 1

    def _bounds(self, run: int) -> tuple[int, int, int, int]:
        """(first index, second, start, end) of a run's texts."""
        runs = self.runs
        end = runs[3 * run + 5] if 3 * run + 5 < len(runs) else len(self.texts)
        return runs[3 * run], runs[3 * run + 1], runs[3 * run + 2], end

    def count_before(self, index: int) -> int:
        """How many texts have an ``event_index`` below ``index``."""
        run = self._run_before(index)
        if run < 0:
            return 0
        first, _, start, end = self._bounds(run)
        return min(start + index - first, end)

    def second_of(self, position: int) -> int:
        """The ``created_at`` of the text at ``position``."""
        runs = self.runs
        run = bisect.bisect_right(range(len(runs) // 3), position, key=lambda r: runs[3 * r + 2]) - 1
        return runs[3 * run + 1]

    def entries(self, start: int, stop: int) -> Iterator[tuple[int, int, str]]:
        """``(event_index, created_at, text)`` of every text with ``start <= event_index < stop``."""
        texts = self.texts
        for run in range(max(self._run_before(start + 1), 0), len(self.runs) // 3):
            first, second, begin, end = self._bounds(run)
            if first >= stop:
                return
            for index in range(max(start, first), min(stop, first + end - begin)):
                yield index, second, texts[begin + index - first]

    def all_runs(self) -> Iterator[tuple[int, int, list[str]]]:
        """``(first_index, created_at, texts)`` of every run, in order."""
        for run in range(len(self.runs) // 3):
            first, second, start, end = self._bounds(run)
            yield first, second, self.texts[start:end]


def content_event(common: dict[str, Any], index: int, second: int, text: str) -> BaseRunEvent:
    """A RunContent event rebuilt from what a log kept of it."""
    fields: dict[str, Any] = {
        "event": RunEvent.run_content,
        "event_index": index,
        **common,
        "created_at": second,
        "status": RunStatus.running,
        "content": text,
    }
    return construct(RunContentEvent, fields)


def merged(
    common: dict[str, Any], texts: TextRuns, others: list[BaseRunEvent], start: int, stop: int
) -> list[BaseRunEvent]:
    """The events with ``start <= event_index < stop``: the texts' and ``others`` (in index order)."""
    found: list[BaseRunEvent] = []
    pending = iter([event for event in others if start <= event.event_index < stop])
    other = next(pending, None)
    for index, second, text in texts.entries(start, stop):
        while other is not None and other.event_index < index:
            found.append(other)
            other = next(pending, None)
        found.append(content_event(common, index, second, text))
    if other is not None:
        found.append(other)
        found.extend(pending)
    return found


class EventRecord(Sequence[BaseRunEvent]):
    """The events of one ended run in ``event_index`` order: its texts as :class:`TextRuns`, the other
    events as they are. Equal to any sequence of the same events."""

    __slots__ = ("_built", "_count", "_texts", "common", "others")

    def __init__(self, texts: TextRuns, others: list[BaseRunEvent], common: dict[str, Any]) -> None:
        self._texts = texts  # no text is added once the run's end is decided
        self._count = len(texts.texts)
        self.others = others
        """The events other than RunContent, in index order."""
        self.common = common
        """The fields every event of the run shares (run_id, agent_id, agent_name, session_id)."""
        self._built: list[BaseRunEvent] | None = None

    def runs(self) -> Iterator[tuple[int, int, list[str]]]:
        """``(first_index, created_at, texts)`` of each run of RunContent events (status RUNNING)."""
        return self._texts.all_runs()

    def _events(self) -> list[BaseRunEvent]:
        if self._built is None:
            self._built = merged(self.common, self._texts, self.others, 0, 1 << 62)
        return self._built

    def __len__(self) -> int:
        return self._count + len(self.others)

    @overload
    def __getitem__(self, index: int) -> BaseRunEvent: ...

    @overload
    def __getitem__(self, index: slice) -> list[BaseRunEvent]: ...

    def __getitem__(self, index: int | slice) -> BaseRunEvent | list[BaseRunEvent]:
        return self._events()[index]

    def __iter__(self) -> Iterator[BaseRunEvent]:
        return iter(self._events())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return self._events() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # its events are mutable models, like a list's

    def __repr__(self) -> str:
        return f"EventRecord({self._events()!r})"

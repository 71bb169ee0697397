"""EventLog and EventRecord (property-based): whatever the events and their seconds, a reader after any
index gets exactly the events after it (older than the buffer: one catch-up text first), and a run's
record holds every event it logged (with ``keep_all``, whatever the buffer's capacity; else the texts
and the other events the buffer still holds), then its terminal event."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tether._run._events import (
    BaseRunEvent,
    RunCompletedEvent,
    RunContentEvent,
    RunStartedEvent,
    RunStatus,
    ToolCallStartedEvent,
)
from tether._run._log import EventLog
from tether._run._output import RunOutput

COMMON: dict[str, Any] = {"run_id": "r", "agent_id": "a", "agent_name": "A", "session_id": "s"}
RUNNING = RunStatus.running
# What follows RunStarted: a text (with its second) or a tool call's start.
STEPS = st.lists(st.one_of(st.tuples(st.integers(0, 3), st.text(max_size=3)), st.none()), max_size=30)


def events_of(steps: list[tuple[int, str] | None]) -> list[BaseRunEvent]:
    events: list[BaseRunEvent] = [RunStartedEvent(event_index=0, status=RUNNING, created_at=0, **COMMON)]
    for index, step in enumerate(steps, start=1):
        if step is None:
            call = {"tool_call_id": f"c{index}", "tool_name": "t"}
            events.append(
                ToolCallStartedEvent(event_index=index, status=RUNNING, created_at=9, **call, **COMMON)
            )
        else:
            second, text = step
            events.append(
                RunContentEvent(event_index=index, status=RUNNING, created_at=second, content=text, **COMMON)
            )
    return events


def shape(events: list[BaseRunEvent]) -> list[tuple[int, str, str | None, int]]:
    return [(e.event_index, type(e).__name__, e.content, e.created_at) for e in events]


@settings(max_examples=300, deadline=None, database=None)
@given(steps=STEPS, capacity=st.sampled_from([1, 3, 1000]), keep_all=st.booleans())
def test_a_reader_after_any_index_gets_exactly_the_rest(
    steps: list[tuple[int, str] | None], capacity: int, keep_all: bool
) -> None:
    events = events_of(steps)
    log = EventLog(capacity, keep_all=keep_all)
    for event in events:
        log.add(event)
        log.add(event)  # logged already: ignored
    first = max(len(events) - capacity, 0)
    for after in [None, *range(-1, len(events) + 1)]:
        start = 0 if after is None else after + 1
        got = log.after(after)
        if start < first:
            missed = [e for e in events[start:first] if type(e) is RunContentEvent]
            if missed:
                catch_up, got = got[0], got[1:]
                expected = (
                    first - 1,
                    "RunContentEvent",
                    "".join(e.content or "" for e in missed),
                    missed[-1].created_at,
                )
                assert shape([catch_up]) == [expected]
            start = first
        assert shape(got) == shape(events[start:])
    terminal = RunCompletedEvent(event_index=len(events), status=RunStatus.completed, created_at=9, **COMMON)
    record = log.record(terminal)
    assert record[-1] is terminal and [e.event_index for e in record] == sorted(
        {e.event_index for e in record}
    )
    contents = [e for e in events if type(e) is RunContentEvent]
    assert shape([e for e in record if type(e) is RunContentEvent]) == shape(contents)
    others = [e for e in record[:-1] if type(e) is not RunContentEvent]
    if keep_all:  # a run to store: every event, however small the buffer
        assert others == [e for e in events if type(e) is not RunContentEvent]
        assert len(record) == len(events) + 1 and record == [*events, terminal]
    else:  # the old ones may be let go: the log stays bounded but for its texts
        assert all(e in events for e in others)
        recent = [e for e in events if type(e) is not RunContentEvent and e.event_index >= first]
        assert others[len(others) - len(recent) :] == recent, "every other event the buffer still holds"
        assert len(others) <= max(capacity, len(recent)) + 1
        assert record == [*sorted([*contents, *others], key=lambda e: e.event_index), terminal]
    texts = [text for _, _, run in record.runs() for text in run]
    assert texts == [e.content for e in events if type(e) is RunContentEvent]


def test_texts_of_one_second_between_other_events_form_runs() -> None:
    steps: list[tuple[int, str] | None] = [(5, "a"), (5, "b"), None, (5, "c"), (6, "d"), (6, "")]
    log = EventLog()
    for event in events_of(steps):
        log.add(event)
    terminal = RunCompletedEvent(event_index=7, status=RunStatus.completed, created_at=9, **COMMON)
    assert list(log.record(terminal).runs()) == [(1, 5, ["a", "b"]), (4, 5, ["c"]), (5, 6, ["d", ""])]


def test_a_run_output_validated_with_a_record_holds_its_events_as_a_list() -> None:
    """Pydantic rebuilds a Sequence of another type than list or tuple as ``type(value)(items)``: an
    EventRecord given to ``RunOutput(...)`` or ``model_validate`` raised a TypeError."""
    events = events_of([(5, "a"), (5, "b"), None, (6, "c")])
    log = EventLog()
    for event in events:
        log.add(event)
    terminal = RunCompletedEvent(event_index=5, status=RunStatus.completed, created_at=9, **COMMON)
    record = log.record(terminal)
    output = RunOutput(run_id="r", agent_id="a", status=RunStatus.completed, content="abc")
    output.__dict__["events"] = record  # as the run's end sets it
    for copy in (
        RunOutput(**output.__dict__),
        RunOutput.model_validate({**output.model_dump(), "events": record}),
    ):
        assert type(copy.events) is list and copy.events == [*events, terminal] and copy == output

"""The properties every run must have, whatever ended it and at whatever timing.

Each property is its own ``assert`` (hypothesis tells distinct failures apart by where they raise),
and none depends on timing: only on what the consumer received, what the engine reported and
stored, and what the scenario did.
"""

from __future__ import annotations

import gc
import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hypothesis import note

from tether import RunEvent, RunOutput, RunStatus, active_runs
from tether._text import scrub

from ._drive import Outcome
from ._scenarios import Built, Scenario, expected_result

IMMEDIATE_SOURCES = ("timeout", "consumer", "outer")


def turn_text(turn: Any) -> str:
    """What the engine delivers of one model response: split surrogate pairs joined, lone halves
    replaced; a high surrogate left last by a response that fails is never delivered."""
    joined = "".join(turn.deltas())
    if turn.error and joined and "\ud800" <= joined[-1] <= "\udbff":
        joined = joined[:-1]
    return scrub(joined)


def expected_text(sc: Scenario) -> str:
    """The whole text a run of ``sc`` that nobody stops delivers."""
    return "".join(turn_text(turn) for turn in sc.script.effective())


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def clean_example() -> Iterator[None]:
    """No warning, no asyncio error log, no unraisable exception, and an empty registry around one example."""
    assert active_runs() == [], f"an earlier example left runs behind: {active_runs()}"
    # Only this example's objects are scanned by its collections (a full one costs ~0.2 s here).
    gc.collect()
    gc.freeze()
    recorder = _Recorder()
    logging.getLogger("asyncio").addHandler(recorder)
    unraisable: list[Any] = []
    hook = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
            gc.collect()
    finally:
        sys.unraisablehook = hook
        logging.getLogger("asyncio").removeHandler(recorder)
    assert [str(w.message) for w in caught] == [], "the run warned"
    assert recorder.messages == [], "asyncio logged an error"
    assert [f"{u.exc_type.__name__}: {u.exc_value}" for u in unraisable] == [], "an exception was unraisable"


def describe(outcome: Outcome) -> None:
    received = [(e.event.value, e.content) for e in outcome.received]
    note(f"received: {received}")
    note(f"issued: {[(i.action.kind, i.action.mode, i.action.grace, i.returned) for i in outcome.issued]}")
    note(f"stopped: {outcome.stopped}, dropped: {outcome.dropped}, raised: {outcome.raised!r}")
    for name, run in (("output", outcome.output), ("stored", outcome.stored)):
        if run is not None:
            note(f"{name}: {run.status} {run.cancel_source} {run.error_type} content={run.content!r}")


def check_run(sc: Scenario, built: Built, outcome: Outcome) -> None:
    """Every property of one finished run."""
    describe(outcome)
    assert outcome.hung is None, outcome.hung
    assert outcome.active_after == [], "the registry still holds the run after it ended"
    assert built.model.open_streams == 0, "a model stream was left open"
    events = outcome.received
    terminals = [index for index, event in enumerate(events) if event.is_terminal]
    assert len(terminals) <= 1, "more than one terminal event"
    assert terminals in ([], [len(events) - 1]), "the terminal event is not the last one"
    assert not events or events[0].event == RunEvent.run_started, "the first event is not RunStarted"
    streamed = sc.consumer not in ("collect", "sync_run")
    if streamed and outcome.stopped is None:
        assert terminals, "the stream ended without a terminal event"
    received = [e.content or "" for e in events if e.event == RunEvent.run_content]
    expected = expected_text(sc)
    assert expected.startswith("".join(received)), "received chunks are not the script's"
    final = outcome.output or outcome.stored
    if outcome.never_read:
        assert final is None or final.content == "", "a stream never read produced content"
    if final is None:
        assert outcome.dropped or outcome.stopped == "outer" or outcome.never_read, "no output"
        return
    assert not final.status.is_active, f"the run ended {final.status}"
    content = final.content
    text = "".join(received)
    if terminals:
        assert events[-1].content == text, "terminal content differs from the received chunks"
        assert events[-1].status == final.status, "terminal status differs from the output's"
    if streamed:  # every ending: what is kept is exactly what the consumer received
        assert content == text, "the output's content is not what the consumer received"
    assert expected.startswith(content), "the output's content is not a prefix of the script's text"
    check_status(sc, built, outcome, final)
    check_history(sc, final)
    if terminals:
        check_tool_events(outcome, built.paid)
    check_attached(outcome, final)
    check_stored(sc, outcome)


def check_attached(outcome: Outcome, final: RunOutput) -> None:
    """Indexes count the consumer's events; a reader of the same run read exactly them, then the end."""
    events = outcome.received
    assert [e.event_index for e in events] == list(range(len(events))), "the consumer's indexes have gaps"
    attached = outcome.attached
    if attached is None or (outcome.never_read and not attached):
        return
    assert [e.event_index for e in attached] == list(range(len(attached))), "attached indexes have gaps"
    assert attached and attached[-1].is_terminal, "the attached reader got no terminal event"
    assert attached[-1].content == final.content, "the attached terminal differs from the output"
    text = "".join(e.content or "" for e in attached if e.event == RunEvent.run_content)
    assert text == final.content, "the attached reader's text differs from the run's content"
    shared = min(len(events), len(attached))
    seen = [(e.event, e.event_index, e.content) for e in events[:shared]]
    assert seen == [(e.event, e.event_index, e.content) for e in attached[:shared]], "readers differ"


def check_status(sc: Scenario, built: Built, outcome: Outcome, final: RunOutput) -> None:
    raised = built.model.raised()
    issued_sources = {"user"} if outcome.cancelled_by_user() else set()
    if sc.timeout is not None:
        issued_sources.add("timeout")
    if outcome.stopped is not None:
        issued_sources.add(outcome.stopped)
    script_text = expected_text(sc)
    if final.status is RunStatus.error:
        assert raised is not None, "ERROR though the model did not fail"
        if outcome.stopped is None and not outcome.dropped:  # a consumer that read to the end has all
            assert final.content == script_text, "an ERROR run lacks chunks the model produced"
    if final.status is RunStatus.completed:
        assert raised is None, "COMPLETED though the model failed"
        assert final.content == script_text, "a COMPLETED run lacks chunks"
    if final.status is RunStatus.cancelled:
        assert final.cancel_source in issued_sources, f"cancelled by {final.cancel_source}: we did not"
        if final.cancel_source == "user":
            reasons = {i.reason for i in outcome.cancelled_by_user()}
            assert final.cancel_reason in reasons, "the cancel reason is not the first cancel's"
    if not issued_sources:
        expected = RunStatus.error if raised is not None else RunStatus.completed
        assert final.status is expected, "a run nobody stopped did not end on its own terms"
    answered = outcome.cancelled_by_user()
    # An immediate cancel that answered True stops the run; one with a grace stops it too unless the model
    # failed before the grace ran out (an error during a graceful stop is reported).
    if any(i.action.mode == "immediate" for i in answered) or (
        raised is None and any(not i.action.graceful for i in answered)
    ):
        assert final.status is RunStatus.cancelled, "cancel_run answered True but the run was not cancelled"
    if sc.only_graceful and raised is not None:
        assert final.status is RunStatus.error, "a graceful stop hid the model's error"
    if sc.only_graceful and final.status is RunStatus.cancelled:
        turns = [turn_text(t) for t in sc.script.effective()]
        whole = {"".join(turns[:k]) for k in range(len(turns) + 1)}
        assert final.content in whole, "a graceful stop cut a model response short"


def check_history(sc: Scenario, final: RunOutput) -> None:
    """The history stays valid for a provider: every tool call answered once, after it."""
    asked: list[str] = []
    answered: list[str] = []
    for message in final.messages:
        if message.role == "assistant" and message.tool_calls:
            asked.extend(call.id for call in message.tool_calls)
        if message.role == "tool":
            assert message.tool_call_id in asked, "a tool result answers no earlier call"
            answered.append(message.tool_call_id or "")
    assert sorted(answered) == sorted(asked), "a tool call is unanswered or answered twice"
    if final.status is RunStatus.completed:
        turns = enumerate(sc.script.turns)
        calls = {f"call_{t}_{i}": c for t, turn in turns for i, c in enumerate(turn.calls)}
        for message in final.messages:
            if message.role == "tool":
                call = calls[message.tool_call_id or ""]
                assert (message.content or "").startswith(expected_result(call)), "a wrong tool result"


def check_tool_events(outcome: Outcome, paid: list[int]) -> None:
    """Every started call is completed once, before the end; a shielded call runs and keeps its result."""
    started: dict[str, Any] = {}
    completed: dict[str, Any] = {}
    for event in outcome.received:
        if event.event == RunEvent.tool_call_started:
            started[event.tool_call_id] = event  # type: ignore[attr-defined]
        elif event.event == RunEvent.tool_call_completed:
            call_id = event.tool_call_id  # type: ignore[attr-defined]
            assert call_id in started and call_id not in completed, "a completion without one start"
            completed[call_id] = event
    assert set(completed) == set(started), "a started tool call never completed"
    charged = []
    for call_id, event in started.items():
        if event.tool_name == "pay":
            done = completed[call_id]
            expected = f"paid:{event.tool_args['x']}"
            assert (done.content, done.error) == (expected, None), "a shielded tool lost its result"
            charged.append(event.tool_args["x"])
    assert sorted(paid) == sorted(charged), "a shielded tool ran without its events, or not at all"


def check_stored(sc: Scenario, outcome: Outcome) -> None:
    if sc.storage is None or outcome.never_read:
        return
    stored = outcome.stored
    assert stored is not None, "the run was not stored"
    assert stored.status is not RunStatus.running, "the stored row is still RUNNING"
    final = outcome.output
    if final is None:  # dropped, or an outer cancel of `await arun()`: the row is all there is
        return
    assert stored.content == final.content, "stored content differs from the output's"
    assert (stored.status, stored.cancel_source, stored.error_type) == (
        final.status,
        final.cancel_source,
        final.error_type,
    ), "the stored outcome differs from the output's"
    assert stored.messages == final.messages, "the stored history differs from the output's"

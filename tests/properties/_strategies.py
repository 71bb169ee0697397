"""Hypothesis strategies for the scenarios: scripts, cancel actions and timings, storage faults.

Timings are small (milliseconds) so a fuzz session makes many runs; the properties hold at any timing.
"""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

from ._known import enabled
from ._scenarios import ERRORS, LINE_BREAKS, TOOL_CALLS, Action, Call, Scenario, Script, Trigger, Turn


def chunk_texts(surrogates: bool) -> st.SearchStrategy[str]:
    alphabet = [st.characters(codec="utf-8"), st.sampled_from(LINE_BREAKS)]
    if surrogates:
        alphabet.append(st.characters(categories=["Cs"]))
    words = st.integers(0, 99).map(lambda i: f"w{i} ")
    # Joined by hand: st.text() never yields a lone surrogate.
    return st.one_of(words, st.lists(st.one_of(*alphabet), max_size=6).map("".join))


@st.composite
def turns(draw: st.DrawFn, *, surrogates: bool, last: bool, error_names: Sequence[str]) -> Turn:
    chunks = tuple(draw(st.lists(chunk_texts(surrogates), max_size=6)))
    stall = draw(st.sampled_from([0.0, 0.0, 0.005, 0.03]))
    error = draw(st.none() | st.sampled_from(list(error_names))) if error_names else None
    calls: tuple[Call, ...] = ()
    if not last:
        kinds = st.sampled_from(sorted(TOOL_CALLS))
        calls = tuple(draw(st.lists(st.builds(Call, kinds, st.integers(0, 9)), min_size=1, max_size=3)))
    return Turn(
        chunks=chunks,
        delay=draw(st.sampled_from([0.0, 0.0, 0.001, 0.005])),
        stall=stall,
        stall_at=draw(st.integers(0, len(chunks))) if stall else 0,
        error=error,
        error_at=draw(st.integers(0, len(chunks))) if error else 0,
        calls=calls,
    )


@st.composite
def scripts(draw: st.DrawFn, *, surrogates: bool, error_names: Sequence[str] = tuple(ERRORS)) -> Script:
    count = draw(st.integers(1, 3))
    made = [
        draw(turns(surrogates=surrogates, last=index == count - 1, error_names=error_names))
        for index in range(count)
    ]
    return Script(tuple(made))


def cancels() -> st.SearchStrategy[Action]:
    kinds = st.sampled_from(["cancel", "cancel_any", "acancel", "cancel_thread"])
    return st.one_of(
        st.builds(Action, kinds, st.just("immediate")),
        st.builds(Action, kinds, st.just("after_turn")),
        st.builds(Action, kinds, st.just("after_turn"), st.sampled_from([0.0, 0.01, 0.05])),
    )


def actions(script: Script, *, stops: list[str]) -> st.SearchStrategy[Action]:
    """Cancels (graceful ones kept away from failing scripts while item 13 stands) and ``stops``."""
    options = [cancels()]
    if script.fails and not enabled("after_turn_error"):
        options = [cancels().filter(lambda a: not a.graceful)]
    if stops:
        options.append(st.builds(Action, st.sampled_from(stops)))
    return st.one_of(*options)


AFTER = st.sampled_from([0.0, 0.001, 0.005, 0.02, 0.05])


@st.composite
def async_scenarios(draw: st.DrawFn) -> Scenario:
    """A run through ``agent.arun``: streamed (``async for``/``async with``) or awaited."""
    storage = draw(st.sampled_from([None, "sqlite", "locked"]))
    surrogates = storage is None or enabled("surrogates_stored")
    script = draw(scripts(surrogates=surrogates))
    consumer = draw(st.sampled_from(["for", "async_with", "collect"]))
    outer_ok = enabled("outer_cancel")
    consumer_stops = ["break", "break_aclose", "aclose"] if enabled("consumer_stop") else []
    stops = ["task_cancel"] if outer_ok else []
    triggers: list[Trigger] = []
    for _ in range(draw(st.integers(0, 3))):
        at_event = consumer != "collect" and draw(st.booleans())
        if at_event:
            action = draw(actions(script, stops=stops + consumer_stops))
            triggers.append(Trigger(action, events=draw(st.integers(0, 10))))
        else:
            triggers.append(Trigger(draw(actions(script, stops=stops)), after=draw(AFTER)))
    outer = None
    if outer_ok and draw(st.booleans()):
        outer = (draw(st.sampled_from(["move_on_after", "wait_for"])), draw(AFTER))
    return Scenario(
        script=script,
        consumer=consumer,
        triggers=tuple(triggers),
        outer=outer,
        timeout=draw(st.sampled_from([None, None, 0.005, 0.02, 0.1])),
        storage=storage,
        lock=(draw(AFTER), draw(st.sampled_from([0.01, 0.03, 0.1]))) if storage == "locked" else (0.0, 0.0),
    )


@st.composite
def graceful_scenarios(draw: st.DrawFn) -> Scenario:
    """Nothing but graceful stops (``after_turn``, no grace), at chosen events: the oracle is exact."""
    errors = tuple(ERRORS) if enabled("after_turn_error") else ()
    storage = draw(st.sampled_from([None, "sqlite"]))
    script = draw(scripts(surrogates=storage is None or enabled("surrogates_stored"), error_names=errors))
    kinds = st.sampled_from(["cancel", "cancel_any", "acancel", "cancel_thread"])
    graceful = st.builds(Action, kinds, st.just("after_turn"))
    triggers = draw(st.lists(st.builds(Trigger, graceful, st.integers(0, 12)), min_size=1, max_size=2))
    return Scenario(script=script, consumer="for", triggers=tuple(triggers), storage=storage)


@st.composite
def sync_scenarios(draw: st.DrawFn) -> Scenario:
    """A run through ``agent.run``: iterated (``for``/``with``, maybe closed early) or blocking."""
    storage = draw(st.sampled_from([None, "sqlite", "locked"]))
    script = draw(scripts(surrogates=storage is None or enabled("surrogates_stored")))
    consumer = draw(st.sampled_from(["sync_for", "sync_with", "sync_run"]))
    stops = ["break", "close"] if enabled("consumer_stop") else []
    triggers: list[Trigger] = []
    for _ in range(draw(st.integers(0, 3))):
        if consumer != "sync_run" and draw(st.booleans()):
            action = draw(actions(script, stops=stops))
            triggers.append(Trigger(action, events=draw(st.integers(0, 10))))
        else:
            triggers.append(Trigger(draw(actions(script, stops=[])), after=draw(AFTER)))
    return Scenario(
        script=script,
        consumer=consumer,
        triggers=tuple(triggers),
        timeout=draw(st.sampled_from([None, None, 0.005, 0.02, 0.1])),
        storage=storage,
        lock=(draw(AFTER), draw(st.sampled_from([0.01, 0.03, 0.1]))) if storage == "locked" else (0.0, 0.0),
    )

"""Property: two tasks reading one RunStream never hang: the second fails at once, or both read it all."""

from __future__ import annotations

import anyio
from hypothesis import given
from hypothesis import strategies as st

from tether import BaseRunEvent, RunEvent, RunStream, StreamBusyError, active_runs

from . import _stats
from ._checks import clean_example, expected_text
from ._known import needs
from ._profile import PROFILE
from ._scenarios import PROMPT, RUN_ID, Scenario, Trigger, build
from ._strategies import actions, scripts

BOUND = 2.0
"""Seconds both readers get to end (the scripted run itself takes well under one)."""


@st.composite
def two_reader_scenarios(draw: st.DrawFn) -> tuple[Scenario, int]:
    script = draw(scripts(surrogates=True))
    triggers = tuple(
        Trigger(draw(actions(script, stops=[])), events=draw(st.integers(0, 8)))
        for _ in range(draw(st.integers(0, 1)))
    )
    return Scenario(script=script, triggers=triggers), draw(st.integers(0, 4))


async def _read(stream: RunStream, seen: list[BaseRunEvent], joined: anyio.Event | None, at: int) -> None:
    async for event in stream:
        seen.append(event)
        if joined is not None and len(seen) >= at:
            joined.set()


async def _drive(scenario: Scenario, join_at: int) -> tuple[list[BaseRunEvent], object, RunStream]:
    built = build(scenario, None)
    stream = built.agent.arun(PROMPT, stream=True, run_id=RUN_ID)
    first: list[BaseRunEvent] = []
    second: list[BaseRunEvent] = []
    outcome: object = second
    joined = anyio.Event()
    if join_at == 0:
        joined.set()

    errors: list[Exception] = []

    async def second_reader() -> None:
        nonlocal outcome
        await joined.wait()
        try:
            await _read(stream, second, None, 0)
        except Exception as exc:
            outcome = exc

    async def first_reader() -> None:
        try:
            await _read(stream, first, joined, join_at)
        except Exception as exc:  # the other task became the reader first (join_at=0)
            errors.append(exc)
            joined.set()

    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as group:
            group.start_soon(second_reader)
            group.start_soon(first_reader)
            for trigger in scenario.triggers:
                assert trigger.events is not None
                with anyio.move_on_after(0.05 * trigger.events):
                    await anyio.sleep_forever()
                built.agent.cancel_run(RUN_ID, "stop", mode=trigger.action.mode, grace=trigger.action.grace)  # type: ignore[arg-type]
            joined.set()  # the first reader may end before it reads ``join_at`` events
    if errors:  # the roles were swapped: the "second" reader read it all
        assert not first, "a refused reader had read events"
        return second, errors[0], stream
    return first, outcome, stream


def _content(events: list[BaseRunEvent]) -> str:
    return "".join(e.content or "" for e in events if e.event == RunEvent.run_content)


@needs("two_readers")
@PROFILE
@given(two_reader_scenarios())
def test_a_second_reader_fails_at_once_or_both_read_everything(case: tuple[Scenario, int]) -> None:
    scenario, join_at = case
    _stats.count()
    with clean_example():
        try:
            first, second, stream = anyio.run(_drive, scenario, join_at)
        except TimeoutError:
            raise AssertionError(f"a reader of the stream was still waiting after {BOUND} s") from None
        output = stream.output
        assert output is not None and not output.status.is_active, "the run did not end"
        assert active_runs() == [], "the registry still holds the run"
        assert first and first[-1].is_terminal, "the first reader did not see the end"
        assert isinstance(second, StreamBusyError) and str(second), "a second reader was not refused"
        readers = [first]
        for events in readers:
            assert events, "a reader's iteration ended at once, without an error or any event"
            assert events[-1].is_terminal and sum(e.is_terminal for e in events) == 1, "one terminal, last"
            assert _content(events) == events[-1].content == output.content, "a reader saw other content"
        assert expected_text(scenario).startswith(output.content)

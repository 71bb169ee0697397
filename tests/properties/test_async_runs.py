"""Property: every run through the async API keeps the contract, however and whenever it ends."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given

from tether import RunEvent

from . import _stats
from ._checks import check_run, clean_example
from ._drive import run_async
from ._profile import PROFILE
from ._scenarios import Scenario, build
from ._strategies import async_scenarios, graceful_scenarios


@PROFILE
@given(async_scenarios())
def test_every_async_run_keeps_the_contract(scenario: Scenario) -> None:
    _stats.count()
    with tempfile.TemporaryDirectory() as folder, clean_example():
        built = build(scenario, Path(folder))
        outcome = run_async(scenario, built)
        check_run(scenario, built, outcome)


@PROFILE
@given(graceful_scenarios())
def test_a_graceful_stop_ends_between_turns_and_hides_no_error(scenario: Scenario) -> None:
    _stats.count()
    with tempfile.TemporaryDirectory() as folder, clean_example():
        built = build(scenario, Path(folder))
        outcome = run_async(scenario, built)
        check_run(scenario, built, outcome)  # with only graceful stops, check_status is exact
        for event in outcome.received:
            if event.event == RunEvent.tool_call_completed:
                assert not (event.error or "").startswith("Cancelled"), "a graceful stop cancelled a tool"

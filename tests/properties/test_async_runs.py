"""Property: every run through the async API keeps the contract, however and whenever it ends."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given

from . import _stats
from ._checks import check_run, clean_example
from ._drive import run_async
from ._scenarios import Scenario, async_scenarios, build


@given(async_scenarios())
def test_every_async_run_keeps_the_contract(scenario: Scenario) -> None:
    _stats.count()
    with tempfile.TemporaryDirectory() as folder, clean_example():
        built = build(scenario, Path(folder))
        outcome = run_async(scenario, built)
        check_run(scenario, built, outcome)

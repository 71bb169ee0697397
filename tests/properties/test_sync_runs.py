"""Property: every run through the blocking API keeps the contract, however and whenever it ends."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given

from . import _stats
from ._checks import check_run, clean_example
from ._profile import PROFILE
from ._scenarios import Scenario, build
from ._strategies import sync_scenarios
from ._sync_drive import SyncDriver


@PROFILE
@given(scenario=sync_scenarios())
def test_every_blocking_run_keeps_the_contract(
    scenario: Scenario, tmp_path_factory: pytest.TempPathFactory
) -> None:
    _stats.count()
    # Not removed after the example: the bridge loop's heartbeat may still write there for a while.
    folder = tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp())
    with clean_example():
        built = build(scenario, Path(folder))
        outcome = SyncDriver(scenario, built).run()
        assert outcome.raised is None, f"the blocking API raised {outcome.raised!r}"
        check_run(scenario, built, outcome)

"""Property: a KeyboardInterrupt or SystemExit raised inside a run reaches the blocking caller as it is,
the run ends and is recorded, and the blocking API keeps working for the next call."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether import Agent, RunStatus, active_runs
from tether.testing import ScriptedModel

from . import _stats
from ._checks import clean_example
from ._drive import HANG, wait_until_idle
from ._known import needs
from ._profile import PROFILE
from ._scenarios import INTERRUPTS, PROMPT, RUN_ID, Scenario, build
from ._strategies import scripts


@st.composite
def interrupted_scenarios(draw: st.DrawFn) -> Scenario:
    script = draw(scripts(surrogates=False, error_names=tuple(INTERRUPTS)).filter(lambda s: s.fails))
    return Scenario(script=script, consumer="sync_run", storage=draw(st.sampled_from([None, "sqlite"])))


def _blocking(fn: object) -> object:
    """``fn()`` in a thread of its own, bounded: what it returned or raised."""
    result: list[object] = []

    def call() -> None:
        try:
            result.append(fn())  # type: ignore[operator]
        except BaseException as exc:  # KeyboardInterrupt and SystemExit included: that is the point
            result.append(exc)

    thread = threading.Thread(target=call, name="fuzz-blocking")
    thread.start()
    thread.join(HANG)
    assert not thread.is_alive(), f"a blocking call did not return within {HANG} s"
    return result[0]


@needs("interrupt")
@PROFILE
@given(scenario=interrupted_scenarios())
def test_an_interrupt_inside_a_run_reaches_the_caller_and_the_api_survives(
    scenario: Scenario, tmp_path_factory: pytest.TempPathFactory
) -> None:
    _stats.count(2)
    # Not removed after the example: the bridge loop's heartbeat may still write there for a while.
    folder = tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp())
    with clean_example():
        built = build(scenario, Path(folder), interrupts=True)
        if built.storage is not None:
            anyio.run(built.storage.open)
        got = _blocking(lambda: built.agent.run(PROMPT, run_id=RUN_ID))
        raised = built.model.raised()
        if raised is not None:
            assert type(got) is type(raised), f"the caller got {got!r}, not the model's {raised!r}"
        wait_until_idle()
        assert active_runs() == [], "the interrupted run stayed in the registry"
        after = _blocking(lambda: Agent(model=ScriptedModel(["ok"])).run("hi"))
        assert getattr(after, "content", after) == "ok", f"the next blocking run failed: {after!r}"
        if built.storage is not None:
            stored = _blocking(lambda: built.agent.get_run(RUN_ID))
            assert stored is not None and stored.status is not RunStatus.running, "the run was not recorded"
            anyio.run(built.storage.aclose)

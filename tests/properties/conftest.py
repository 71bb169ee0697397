"""The property suite's session: its profile and seed in the header, a replay line per failure, figures."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator

import pytest

from . import _stats
from ._profile import PROFILE


def pytest_report_header(config: pytest.Config) -> str:
    return f"tether properties: {PROFILE.max_examples} examples per test, seed {_seed(config)}"


def _seed(config: pytest.Config) -> str:
    seed = config.getoption("hypothesis_seed", None)
    return str(seed) if seed is not None else "0 (ci: derandomized) / random (fuzz)"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        report.sections.append(
            ("reproduce", f"pytest '{item.nodeid}' --hypothesis-seed={_seed(item.config)}, or the blob above")
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    # (A conftest below the root is loaded after the session has started: no pytest_sessionstart here.)
    started = time.monotonic()
    yield
    _stats.seconds += time.monotonic() - started


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _stats.runs:
        elapsed = max(_stats.seconds, 1e-9)
        terminalreporter.write_line(
            f"tether properties: {_stats.runs} runs in {elapsed:.1f} s ({_stats.runs / elapsed:.0f} runs/s)"
        )
    path = os.environ.get("TETHER_FUZZ_STATS")
    if path:
        with open(path, "a") as file:
            file.write(f"{_stats.runs}\n")


@pytest.fixture(autouse=True)
def _quiet_tether_logs() -> Iterator[None]:
    """Failed runs and tools log their tracebacks by design; thousands of them only bury a failure."""
    logger = logging.getLogger("tether")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)

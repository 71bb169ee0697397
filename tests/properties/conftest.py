"""Hypothesis profiles for the property suite, and the fuzz figures.

``HYPOTHESIS_PROFILE=ci`` (the default, used by ``make test``) is small and derandomized, so the suite
is the same every time and fits in about a minute; ``HYPOTHESIS_PROFILE=fuzz`` (``make fuzz``) is
large and random. A failure always prints hypothesis's reproduce blob and the session's seed.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, Phase, settings

from . import _stats

_COMMON = {
    "deadline": None,
    "database": None,
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
}
settings.register_profile("ci", max_examples=200, derandomize=True, **_COMMON)  # type: ignore[arg-type]
settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("TETHER_FUZZ_EXAMPLES", "3000")),
    derandomize=False,
    phases=[Phase.generate, Phase.target, Phase.shrink, Phase.explain],
    **_COMMON,  # type: ignore[arg-type]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_report_header(config: pytest.Config) -> str:
    return f"tether properties: {settings().max_examples} examples per test, seed {_seed(config)}"


def _seed(config: pytest.Config) -> str:
    return str(config.getoption("hypothesis_seed", None) or "random")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        report.sections.append(
            ("reproduce", f"pytest '{item.nodeid}' --hypothesis-seed={_seed(item.config)} (or use the blob)")
        )


def pytest_sessionstart(session: pytest.Session) -> None:
    _stats.started = time.monotonic()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _stats.runs:
        elapsed = time.monotonic() - _stats.started
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

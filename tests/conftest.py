"""Shared fixtures: the anyio backend, a registry-leak check after every test, loopback models."""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Iterator

import pytest

from tether import active_runs
from tether._run import registry
from tether._run._registry import DEFAULT_CANCEL_MEMORY
from tether.models.openai import OpenAIChat
from tether.testing import LoopbackServer


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _registry_left_empty() -> Iterator[None]:
    """Every test must leave no active run behind (contract point 9)."""
    yield
    deadline = time.monotonic() + 2.0
    while active_runs() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert active_runs() == [], "a test left active runs in the registry"


@pytest.fixture(autouse=True)
def _no_cancel_remembered_across_tests() -> Iterator[None]:
    """A cancel for an unknown run id is kept for the next run with that id: not for another test's."""
    yield
    registry.cancel_memory = DEFAULT_CANCEL_MEMORY
    registry.forget_early_cancels()


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(autouse=True)
def _asyncio_logged_no_error() -> Iterator[None]:
    """asyncio reports "Task was destroyed but it is pending" and lost exceptions by logging, not warnings."""
    recorder = _Recorder()
    logger = logging.getLogger("asyncio")
    logger.addHandler(recorder)
    try:
        yield
        gc.collect()
    finally:
        logger.removeHandler(recorder)
    assert recorder.messages == [], f"asyncio logged errors: {recorder.messages}"


@pytest.fixture
def openai_model(loopback_server: LoopbackServer) -> OpenAIChat:
    """OpenAIChat pointed at the loopback server, without retries so failures are immediate."""
    return OpenAIChat(id="loopback", base_url=loopback_server.base_url, api_key="test-key", max_retries=0)


@pytest.fixture(autouse=True)
def _no_real_openai(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests must never reach a real provider, whatever the developer's shell has set.
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        if name in os.environ:
            monkeypatch.delenv(name)

"""Pytest fixtures shipped with tether, registered through the ``pytest11`` entry point.

Kept import-light: pytest loads this module in every session of every project that installs tether.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tether.testing._loopback import LoopbackServer


@pytest.fixture
def loopback_server() -> Iterator[LoopbackServer]:
    """A started `LoopbackServer` with the default reply, stopped after the test."""
    from tether.testing._loopback import LoopbackServer

    server = LoopbackServer().start()
    try:
        yield server
    finally:
        server.stop()

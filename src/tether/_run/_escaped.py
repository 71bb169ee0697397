"""Carrying a KeyboardInterrupt or SystemExit out of a helper task, to the run that awaits it.

asyncio re-raises those two from any task straight out of the event loop, which would stop it (and
every run on it). A task of the engine's own (a tool call, a storage write) wraps them in
:class:`Escaped`; the run task unwraps and handles them (see ``_loop.execute``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class Escaped(Exception):
    """A KeyboardInterrupt or SystemExit raised in a helper task; ``exc`` is the original."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(repr(exc))
        self.exc = exc


async def carried(work: Awaitable[T]) -> T:
    """``await work``, a KeyboardInterrupt or SystemExit raised as :class:`Escaped`."""
    try:
        return await work
    except asyncio.CancelledError:
        raise
    except Exception:
        raise
    except BaseException as exc:
        raise Escaped(exc) from exc


async def unwrapped(work: Awaitable[T]) -> T:
    """``await work``, an :class:`Escaped` raised as the original exception (in the run's own task)."""
    try:
        return await work
    except Escaped as escaped:
        raise escaped.exc from None

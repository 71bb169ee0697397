"""What the run registry needs from a cross-process canceller (implemented by ``tether.distributed``)."""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ._handle import RunHandle
    from ._lifecycle import CancelMode


class RemoteOutcome(Enum):
    """The answer to a remote cancel."""

    cancelled = "cancelled"  # the run was active in its owner and is now stopping
    ended = "ended"  # its owner had it, but it had already ended
    not_found = "not_found"  # no live run has that id (or it belongs to another agent)
    owner_dead = "owner_dead"  # its owner is gone (killed): the run ended with it; its entries are removed


class Remote(Protocol):
    def run_registered(self, handle: RunHandle) -> None:
        """A run now lives in this process (any thread; must not block)."""

    async def run_started(self, handle: RunHandle) -> None:
        """In the run's task, before its first event: return once other processes can find the run.

        Bounded and shielded by the implementation; never raises (a canceller that cannot publish now
        publishes later).
        """

    def run_unregistered(self, handle: RunHandle) -> None:
        """A run no longer lives in this process (any thread; must not block)."""

    async def cancel(
        self,
        run_id: str,
        *,
        agent_id: str | None,
        reason: str | None,
        mode: CancelMode,
        grace: float | None,
    ) -> RemoteOutcome:
        """Cancel a run this process does not own (it ends with ``source="remote"``).

        Raises :class:`~tether.exceptions.RemoteCancelError` when the cancel cannot be delivered.
        """

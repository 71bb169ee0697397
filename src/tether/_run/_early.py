"""Cancels that overtake the start: a user's cancel for a run id this process does not know yet.

Over HTTP a client may send the cancel for the run id it chose before the worker that starts the run has
registered it. The registry keeps such a cancel for ``cancel_memory`` seconds; a run that registers with
that id (for the agent the cancel named, or any agent if it named none) starts cancelled: its events are
``RunStarted`` then ``RunCancelled``, and its model is never called. The caller's answer does not change
(False, or 404 over HTTP): nothing was stopped when it asked.

Only a well-formed id that is neither live nor recently ended is remembered (a late Stop for a run that has
just finished must not stop a later run that reuses its id). At most ``CAPACITY`` ids of each kind are
kept, the oldest dropped first; expired ones are purged as new ones come.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from .._ids import ID_PATTERN
from ._lifecycle import CancelMode

CAPACITY = 10_000
"""Ids remembered at most, of cancels and of recently ended runs each."""

V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class EarlyCancel:
    """A remembered cancel: what to apply to the run that registers with its id, until ``expires``."""

    reason: str | None
    agent_id: str | None  # None: the run of any agent
    mode: CancelMode
    grace: float | None
    expires: float  # time.monotonic()

    def merged(self, later: EarlyCancel) -> EarlyCancel:
        """Two cancels for one id, as a run's lifecycle takes them: the first reason, the stronger mode,
        the shorter grace, the later expiry."""
        immediate = "immediate" in (self.mode, later.mode)
        graces = [g for g in (self.grace, later.grace) if g is not None]
        return EarlyCancel(
            reason=self.reason,
            agent_id=self.agent_id,
            mode="immediate" if immediate else "after_turn",
            grace=None if immediate or not graces else min(graces),
            expires=max(self.expires, later.expires),
        )


class EarlyCancels:
    """The remembered cancels and the recently ended run ids. Not thread-safe: the registry locks it."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._cancels: dict[str, EarlyCancel] = {}  # in the order remembered
        self._ended: dict[str, float] = {}  # run id -> when it is forgotten (time.monotonic())

    def __len__(self) -> int:
        return len(self._cancels)

    def remember(self, run_id: str, cancel: EarlyCancel, now: float) -> bool:
        """Keep ``cancel`` for the run that registers as ``run_id``; False if it is not kept (a malformed id,
        or a run that has just ended). A second cancel for the same id and agent is merged into the first;
        one for another agent replaces it."""
        _purge(self._ended, now, lambda expires: expires)
        _purge(self._cancels, now, lambda kept: kept.expires)
        if not isinstance(run_id, str) or not ID_PATTERN.match(run_id) or run_id in self._ended:
            return False
        earlier = self._cancels.pop(run_id, None)
        same = earlier is not None and earlier.agent_id == cancel.agent_id
        self._cancels[run_id] = earlier.merged(cancel) if same and earlier is not None else cancel
        _bound(self._cancels, self.capacity)
        return True

    def take(self, run_id: str, agent_id: str, now: float) -> EarlyCancel | None:
        """The unexpired cancel kept for ``run_id`` if it names ``agent_id`` or no agent (then forgotten)."""
        if not self._cancels:
            return None
        cancel = self._cancels.get(run_id)
        if cancel is None or cancel.agent_id not in (None, agent_id):
            return None
        del self._cancels[run_id]
        return cancel if cancel.expires > now else None

    def ended(self, run_id: str, now: float, seconds: float) -> None:
        """``run_id`` has just ended: a cancel for it is not remembered for ``seconds``."""
        _purge(self._ended, now, lambda expires: expires)
        self._ended.pop(run_id, None)
        self._ended[run_id] = now + seconds
        _bound(self._ended, self.capacity)

    def clear(self) -> None:
        self._cancels.clear()
        self._ended.clear()


def _purge(kept: dict[str, V], now: float, expiry: Callable[[V], float]) -> None:
    """Drop the expired entries at the front (the oldest); stop at the first live one."""
    while kept:
        first = next(iter(kept))
        if expiry(kept[first]) > now:
            return
        del kept[first]


def _bound(kept: dict[str, V], capacity: int) -> None:
    while len(kept) > capacity:
        del kept[next(iter(kept))]

"""The process-wide registry of active runs."""

from __future__ import annotations

import threading

from ..exceptions import ConfigurationError
from ._events import CancelSource
from ._handle import RunHandle


class RunRegistry:
    """Active runs by id. Thread-safe; a run is in it from creation until its outcome is decided."""

    def __init__(self) -> None:
        self._runs: dict[str, RunHandle] = {}
        self._lock = threading.Lock()

    def register(self, handle: RunHandle) -> None:
        with self._lock:
            if handle.run_id in self._runs:
                raise ConfigurationError(f"run id {handle.run_id!r} is already in use by an active run")
            self._runs[handle.run_id] = handle

    def unregister(self, handle: RunHandle) -> None:
        with self._lock:
            if self._runs.get(handle.run_id) is handle:
                del self._runs[handle.run_id]

    def get(self, run_id: str) -> RunHandle | None:
        with self._lock:
            return self._runs.get(run_id)

    def active(self) -> list[str]:
        with self._lock:
            return list(self._runs)

    def handles(self) -> list[RunHandle]:
        with self._lock:
            return list(self._runs.values())

    def cancel(
        self,
        run_id: str,
        *,
        reason: str | None = None,
        source: CancelSource = "user",
        agent_id: str | None = None,
    ) -> bool:
        """Cancel an active run; True iff it is active (and belongs to ``agent_id`` when given)."""
        handle = self.get(run_id)
        if handle is None or (agent_id is not None and handle.agent_id != agent_id):
            return False
        return handle.request_cancel(reason, source)


registry = RunRegistry()
"""The one registry of this process."""


def cancel_run(run_id: str, reason: str | None = None) -> bool:
    """Cancel any agent's active run in this process; True iff it was active.

    Thread-safe, idempotent, and never blocks: the run stops at its next await and emits
    ``RunCancelled``. Also True when the run is already being cancelled.

    Example::

        if tether.cancel_run(run_id, reason="user pressed stop"):
            ...
    """
    return registry.cancel(run_id, reason=reason, source="user")


def active_runs() -> list[str]:
    """Ids of the runs active (pending or running) in this process."""
    return registry.active()

"""RunContext: what a tool may know about the run that called it, including whether it was stopped."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..exceptions import ToolCancelledError

if TYPE_CHECKING:
    from ._handle import RunHandle


class RunContext:
    """Passed to a tool that declares a parameter annotated ``RunContext``.

    A sync tool runs in a worker thread that cannot be interrupted: when the run is cancelled it
    ends at once and the thread is told through ``cancelled`` (check it, or call
    ``raise_if_cancelled()``, between steps of long work); its late result is discarded.
    Reading it is thread-safe.

    Example::

        def crawl(urls: list[str], ctx: RunContext) -> int:
            for url in urls:
                ctx.raise_if_cancelled()
                fetch(url)
            return len(urls)
    """

    __slots__ = ("_handle",)

    def __init__(self, handle: RunHandle) -> None:
        self._handle = handle

    @property
    def run_id(self) -> str:
        return self._handle.run_id

    @property
    def agent_id(self) -> str:
        return self._handle.agent_id

    @property
    def session_id(self) -> str | None:
        return self._handle.session_id

    @property
    def parent_run_id(self) -> str | None:
        return self._handle.parent_run_id

    @property
    def cancelled(self) -> bool:
        """True once the run is being interrupted (an immediate cancel, an expired grace or deadline)."""
        return self._handle.interrupting

    @property
    def cancel_reason(self) -> str | None:
        return self._handle.cancel_reason

    def raise_if_cancelled(self) -> None:
        """Raise :class:`~tether.exceptions.ToolCancelledError` if the run is being interrupted."""
        if self._handle.interrupting:
            raise ToolCancelledError(
                f"run {self.run_id} was cancelled: {self._handle.cancel_reason or 'no reason'}"
            )

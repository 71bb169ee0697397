"""The blocking API: ``agent.run(stream=True)``'s iterator, on the process-wide background loop.

Every blocking call is one call into :data:`~._background_loop.background_loop`, so there is one run
loop (the async one) and it works from any thread, even one that already runs an event loop.
"""

from __future__ import annotations

from collections import deque
from types import TracebackType

from ._background_loop import background_loop
from ._run import BaseRunEvent, RunContentEvent, RunOutput, RunReader, RunStream


class SyncRunStream:
    """A run's events as a plain (blocking) iterator; usable from any thread.

    Closing it (``close()``, leaving a ``with`` block, or dropping it) cancels the run with
    ``source="consumer"``; an exception such as ``KeyboardInterrupt`` while it waits cancels the run
    with ``source="outer"`` and propagates. The run keeps exactly the text this iterator returned.

    Example::

        for event in agent.run("Write a story", stream=True):
            print(event.event, event.content)
    """

    def __init__(self, stream: RunStream) -> None:
        self._stream = stream
        self._buffer: deque[BaseRunEvent] = deque()
        self._finished = False

    @property
    def run_id(self) -> str:
        return self._stream.run_id

    @property
    def output(self) -> RunOutput | None:
        """The run's output once it has ended, else None."""
        return self._stream.output

    def __iter__(self) -> SyncRunStream:
        return self

    def __next__(self) -> BaseRunEvent:
        if not self._buffer:
            if self._finished:
                escaped = self._stream.take_escaped()
                if escaped is not None:
                    raise escaped
                raise StopIteration
            try:
                batch = background_loop.call(self._stream.next_batch)
            except BaseException:
                self._finished = True
                self._stream.leave_soon("outer")  # what the interrupted call took was not delivered
                self._stream.handle.request_cancel(None, "outer")  # also if it had not started yet
                raise
            if not batch:
                self._finished = True
                raise StopIteration
            # After the terminal event nothing is asked of the background loop again (at interpreter
            # exit it may be gone, and a thread still iterating must end cleanly).
            self._finished = batch[-1].is_terminal
            self._buffer.extend(batch)
        return self._buffer.popleft()

    def close(self) -> None:
        """Stop reading; cancels the run if it is still active, and waits for it to end (bounded)."""
        if not self._finished:
            self._finished = True
            unread = self._unread()
            background_loop.call(lambda: self._stream.aclose_unread(unread))

    def __enter__(self) -> SyncRunStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # Only schedules (a finalizer may run on any thread): the run is told on its own loop.
        if not self._finished:
            self._stream.leave_soon("consumer", self._unread())

    def _unread(self) -> int:
        unread = sum(type(event) is RunContentEvent for event in self._buffer)
        self._buffer.clear()
        return unread


class SyncRunReader:
    """:meth:`tether.Agent.attach`'s blocking iterator over a :class:`~tether._run.RunReader`.

    Leaving it early never cancels the run. Usable from any thread.
    """

    def __init__(self, reader: RunReader) -> None:
        self._reader = reader
        self._buffer: deque[BaseRunEvent] = deque()
        self._last = reader.last_event_index

    @property
    def run_id(self) -> str:
        return self._reader.run_id

    @property
    def last_event_index(self) -> int | None:
        """The index of the last event this iterator returned (``after`` before the first)."""
        return self._last

    def __iter__(self) -> SyncRunReader:
        return self

    def __next__(self) -> BaseRunEvent:
        if not self._buffer:
            self._buffer.extend(background_loop.call(self._reader.next_batch))
            if not self._buffer:
                raise StopIteration
        event = self._buffer.popleft()
        self._last = event.event_index
        return event

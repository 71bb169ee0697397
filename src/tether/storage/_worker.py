"""One thread per store that runs its blocking jobs in order; each job can be abandoned by its caller.

``await worker.run(fn)`` queues ``fn(job)`` and waits for it without holding the event loop. If the
awaiting task is cancelled, the call returns at once: a job that has not started yet never runs, a job
that is running is marked ``abandoned`` (long blocking code polls that flag) and its result is
dropped. Jobs run strictly one after another in the order they were queued, from any number of event
loops, so a write queued after an abandoned one can never be overtaken by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ..exceptions import StorageError

T = TypeVar("T")

IDLE_EXIT = 2.0
"""Seconds the thread waits for new jobs before it exits (the next job starts a new one)."""


class Job(Generic[T]):
    """A queued call. ``abandoned`` is set (from the caller's loop) once nobody waits for the result."""

    __slots__ = ("abandoned", "fn", "future", "loop")

    def __init__(self, fn: Callable[[Job[T]], T], loop: asyncio.AbstractEventLoop) -> None:
        self.fn = fn
        self.loop = loop
        self.future: asyncio.Future[T] = loop.create_future()
        self.abandoned = False


class SerialWorker:
    """Runs jobs one at a time, first in first out, in one daemon thread started on demand.

    ``on_abandon`` is called (from the abandoning loop, under the worker's lock) when the running
    job is abandoned, to interrupt blocking work that can be interrupted.
    """

    def __init__(self, name: str, on_abandon: Callable[[], None]) -> None:
        self._name = name
        self._on_abandon = on_abandon
        self._cond = threading.Condition()
        self._jobs: deque[Job[Any]] = deque()
        self._current: Job[Any] | None = None
        self._thread: threading.Thread | None = None

    async def run(self, fn: Callable[[Job[T]], T], *, abandonable: bool = True) -> T:
        """``fn(job)``'s result, computed in the worker thread; raises what ``fn`` raised.

        Cancelling the caller returns at once. With ``abandonable=False`` the job still runs (in
        its turn) after its caller is cancelled: for work that must happen, like closing a file.
        """
        job = Job(fn, asyncio.get_running_loop())
        if not self._submit(job):
            # No thread can start (CPython 3.12.0-3.12.2 refuse new threads in every exit hook,
            # gh-113964), and none is running, so nothing is queued before this job: run it here.
            return fn(job)
        try:
            return await job.future
        finally:
            if job.future.done() and not job.future.cancelled():
                job.future.exception()  # marks it retrieved, in case our caller was cancelled as it came
            else:  # our caller was cancelled: whatever the job yields is dropped
                job.future.cancel()
                if abandonable:
                    self._abandon(job)

    def _submit(self, job: Job[Any]) -> bool:
        """Queue ``job``; False when its thread was needed and could not start (at interpreter exit)."""
        with self._cond:
            self._jobs.append(job)
            if self._thread is None:
                thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                try:
                    thread.start()
                except RuntimeError as exc:
                    self._jobs.remove(job)
                    if "shutdown" not in str(exc):
                        raise StorageError(f"{self._name}: could not start its thread: {exc}") from exc
                    return False
                self._thread = thread
            self._cond.notify()
        return True

    def _abandon(self, job: Job[Any]) -> None:
        job.abandoned = True
        with self._cond:
            if self._current is job:
                self._on_abandon()

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._jobs:
                    if not self._cond.wait(IDLE_EXIT) and not self._jobs:
                        self._thread = None  # under the lock: the next _submit starts a new thread
                        return
                job = self._jobs.popleft()
                if job.abandoned:
                    continue
                self._current = job
            result: Any = None
            error: BaseException | None = None
            try:
                result = job.fn(job)
            except Exception as exc:  # delivered to the caller; the thread keeps serving
                error = exc
            finally:
                with self._cond:
                    self._current = None
            if not job.abandoned:
                with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody to tell
                    job.loop.call_soon_threadsafe(_settle, job.future, result, error)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled meanwhile
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)

"""Running a scenario through the blocking API (``agent.run``), from a thread of its own.

The blocking call runs in a worker thread so that a hang fails the example instead of the session;
time-triggered cancels come from the test's thread, event-triggered ones from the consumer's.
"""

from __future__ import annotations

import gc
import threading
import time
from typing import Any

import anyio

from tether import SyncRunStream, active_runs

from ._drive import Issued, Outcome, cancel, hold_lock, join_or_hang, wait_until_idle
from ._scenarios import PROMPT, RUN_ID, Action, Built, Scenario


class SyncDriver:
    def __init__(self, scenario: Scenario, built: Built) -> None:
        self.sc = scenario
        self.built = built
        self.out = Outcome()
        self.holder: dict[str, Any] = {}

    def run(self) -> Outcome:
        storage = self.built.storage
        if storage is not None:
            anyio.run(storage.open)
        locker = None
        if self.sc.storage == "locked" and storage is not None:
            start, hold = self.sc.lock
            locker = threading.Timer(start, hold_lock, (storage.path, hold))
            locker.start()
        worker = threading.Thread(target=self._consume, name="fuzz-consumer")
        worker.start()
        started = time.monotonic()
        for trigger in sorted(self.sc.triggers, key=lambda t: t.after or 0.0):
            if trigger.after is not None:
                time.sleep(max(0.0, started + trigger.after - time.monotonic()))
                cancel(self.built, self.out, trigger.action)
        join_or_hang(worker, self.out)
        self.holder.clear()
        gc.collect()
        wait_until_idle()
        self.out.active_after += active_runs()
        if locker is not None:
            locker.join()
        if storage is not None:
            self.out.stored = self.built.agent.get_run(RUN_ID)
            anyio.run(storage.aclose)
        return self.out

    def _consume(self) -> None:
        agent, sc = self.built.agent, self.sc
        try:
            if sc.consumer == "sync_run":
                self.out.output = agent.run(PROMPT, run_id=RUN_ID, timeout=sc.timeout)
                return
            events = agent.run(PROMPT, stream=True, run_id=RUN_ID, timeout=sc.timeout)
            self.holder["events"] = events
            if sc.consumer == "sync_with":
                with events:
                    self._loop(events)
            else:
                self._loop(events)
            self.out.output = events.output
        except BaseException as exc:  # recorded and checked: the blocking API must not raise here
            self.out.raised = exc

    def _loop(self, events: SyncRunStream) -> None:
        if self._at(0, events):
            self.out.never_read = not self.out.received
            return
        for event in events:
            self.out.received.append(event)
            if self._at(len(self.out.received), events):
                break
        if self.out.received and self.out.received[-1].is_terminal:
            self.out.active_after = active_runs()

    def _at(self, count: int, events: SyncRunStream) -> bool:
        stop = False
        for trigger in self.sc.triggers:
            if trigger.events == count:
                stop = self._apply(trigger.action, events) or stop
        return stop

    def _apply(self, action: Action, events: SyncRunStream) -> bool:
        if action.is_cancel:
            cancel(self.built, self.out, action)
            return False
        self.out.issued.append(Issued(action))
        self.out.stopped = "consumer"
        if action.kind == "close":
            events.close()
            return True
        self.out.dropped = True
        return True

"""Live concurrent runs: memory per live streaming run, and the time to cancel them all.

N runs stream slowly (a chunk a second each, every 10 s at 10,000 runs) over real HTTP from a
loopback server in a child process.
Once every run has delivered its first chunk, the resident set size growth divided by N is the cost
of a live run (its HTTP connection, run task, consumer task, buffers). Then every run is cancelled
with ``cancel_run`` in one go; the figure is the time until every consumer has its terminal event.
Agno, when its bench module is importable, is measured the same way in the same run.

    .venv-bench/bin/python bench/live_runs.py [N ...]
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import resource
import subprocess
import sys
import time

from _common import RemoteLoopback, machine, rss_bytes, save

from tether import Agent, RunEvent, RunStream, cancel_run
from tether.models.openai import OpenAIChat
from tether.testing import Reply


def slow(n: int) -> Reply:
    """A chunk a second per run up to 1,000 runs, then slower: 1,000 chunks/s in all is what one core
    sustains for paced streams (each chunk crosses every layer alone), so 10,000 runs get one every 10 s."""
    return Reply(chunks=[f"w{i} " for i in range(600)], pace=max(1.0, n / 1000))


LIVE_TIMEOUT = 120.0
NO_AGNO = 3
WAVE = 100


async def tether_live(base_url: str, n: int) -> tuple[float, float]:
    """(bytes of RSS per live run, seconds from the first cancel to the last terminal event)."""
    # A plain OpenAIChat: it spreads its streams over clients of 100 connections itself.
    agent = Agent(name="live", model=OpenAIChat(id="loopback", base_url=base_url, api_key="x", max_retries=0))
    await _tether_round(agent, 10)  # warm up: code paths and the pool, not N runs' worth of memory
    return await _tether_round(agent, n)


async def _tether_round(agent: Agent, n: int) -> tuple[float, float]:
    gc.collect()
    before = rss_bytes()
    live = Live()

    async def consume(stream: RunStream) -> None:
        first = True
        async for event in stream:
            if first and event.event == RunEvent.run_content:
                first = False
                live.tick()

    streams: list[RunStream] = []
    tasks: list[asyncio.Task[None]] = []
    started = time.perf_counter()
    # In waves: thousands of simultaneous connects overflow the kernel's SYN queue, and the dropped
    # ones are retried 1, 3, 7 ... s later; runs arriving over time are also what a service sees.
    # A burst of 500 starts would leave ~7 MB of request-building garbage in the allocator (freed, and
    # reused by later runs): a cost of the burst, not of a live run, so the waves are of 100.
    for wave in range(0, n, WAVE):
        batch = [agent.arun("go", stream=True) for _ in range(wave, min(n, wave + WAVE))]
        streams += batch
        tasks += [asyncio.create_task(consume(stream)) for stream in batch]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(live.reach(len(streams)), LIVE_TIMEOUT)
    if live.count < n:  # measured anyway over the runs that are live, and said so
        print(f"  only {live.count:,} of {n:,} runs went live", flush=True)
    else:
        print(f"  {n:,} runs live after {time.perf_counter() - started:.1f} s", flush=True)
    gc.collect()
    per_run = (rss_bytes() - before) / max(live.count, 1)
    started = time.perf_counter()
    for stream in streams:
        cancel_run(stream.run_id)
    await asyncio.gather(*tasks)
    ended = time.perf_counter() - started
    assert all(s.output is not None and s.output.status == "CANCELLED" for s in streams)
    return per_run, ended


class Live:
    """How many runs have delivered their first chunk; ``reach(k)`` waits until k have."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = asyncio.Event()

    def tick(self) -> None:
        self.count += 1
        self._changed.set()

    async def reach(self, target: int) -> None:
        while self.count < target:
            self._changed.clear()
            await self._changed.wait()


def measure(who: str, n: int) -> tuple[float, float] | None:
    """One runtime's figures, measured in a fresh process: memory freed by an earlier measurement stays
    in this process's allocator and would be reused, hiding the next one's cost."""
    done = subprocess.run(
        [sys.executable, __file__, "--one", who, str(n)], capture_output=True, text=True, check=False
    )
    sys.stdout.write(done.stderr)
    if done.returncode == NO_AGNO:
        return None
    if done.returncode != 0:
        raise RuntimeError(f"measuring {who} with {n} runs failed (exit {done.returncode})")
    per_run, cancel_all = json.loads(done.stdout.splitlines()[-1])
    return float(per_run), float(cancel_all)


def one(who: str, n: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one socket per live run
    sys.stdout = sys.stderr  # progress lines; the figures alone go to the real stdout
    with RemoteLoopback(slow(n)) as server:
        if who == "tether":
            figures = asyncio.run(tether_live(server.base_url, n))
        else:
            try:
                import _agno_side
            except ImportError:  # the main venv has no agno: tether's figures only
                sys.exit(NO_AGNO)
            figures = asyncio.run(_agno_side.live_runs(server.base_url, n, WAVE))
    print(json.dumps(figures), file=sys.__stdout__)


def main(counts: list[int]) -> None:
    print(f"live streaming runs (over HTTP, slowly: 1,000 chunks/s in all at most); {machine()}")
    print(f"{'runs':>7}  {'':<8}{'RSS/run':>10}{'cancel all':>12}")
    results: dict[str, object] = {"machine": machine(), "wave": WAVE}
    for n in counts:
        ours = measure("tether", n)
        assert ours is not None
        per_run, cancel_all = ours
        print(f"{n:>7}  {'tether':<8}{per_run / 1024:>7.1f} KB{cancel_all:>11.3f}s", flush=True)
        results[f"tether {n}"] = {"rss_per_run": per_run, "cancel_all": cancel_all}
        agno = measure("agno", n) if n <= 1000 else None
        if agno is not None:
            a_run, a_cancel = agno
            results[f"agno {n}"] = {"rss_per_run": a_run, "cancel_all": a_cancel}
            ratio = f"(tether: {per_run / a_run:.2f}x RSS, {cancel_all / a_cancel:.3f}x time)"
            print(f"{n:>7}  {'agno':<8}{a_run / 1024:>7.1f} KB{a_cancel:>11.3f}s  {ratio}", flush=True)
    save("live_runs", results)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        one(sys.argv[2], int(sys.argv[3]))
    else:
        main([int(arg) for arg in sys.argv[1:]] or [1000, 10_000])

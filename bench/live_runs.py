"""Live concurrent runs: memory per live streaming run, and the time to cancel them all.

N runs stream slowly (a chunk a second) over real HTTP from a loopback server in a child process.
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
import resource
import sys
import time

import httpx2
import openai
from _common import RemoteLoopback, machine, rss_bytes, save

from tether import Agent, RunEvent, RunStream, cancel_run
from tether.models.openai import OpenAIChat
from tether.testing import Reply

SLOW = Reply(chunks=[f"w{i} " for i in range(600)], pace=1.0)
LIVE_TIMEOUT = 120.0


def wide_client(base_url: str) -> openai.AsyncOpenAI:
    # openai's default pool holds 1,000 connections; each live run needs its own.
    limits = httpx2.Limits(max_connections=None, max_keepalive_connections=100)
    http = openai.DefaultAsyncHttpxClient(limits=limits)
    return openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0, http_client=http)


async def tether_live(base_url: str, n: int) -> tuple[float, float]:
    """(bytes of RSS per live run, seconds from the first cancel to the last terminal event)."""
    client = wide_client(base_url)
    agent = Agent(name="live", model=OpenAIChat(id="loopback", client=client))
    await _tether_round(agent, 10)  # warm up: code paths and the pool, not N runs' worth of memory
    figures = await _tether_round(agent, n)
    await client.close()
    return figures


async def _tether_round(agent: Agent, n: int) -> tuple[float, float]:
    gc.collect()
    before = rss_bytes()
    live = Countdown(n)

    async def consume(stream: RunStream) -> None:
        first = True
        async for event in stream:
            if first and event.event == RunEvent.run_content:
                first = False
                live.tick()

    streams = [agent.arun("go", stream=True) for _ in range(n)]
    tasks = [asyncio.create_task(consume(stream)) for stream in streams]
    started = time.perf_counter()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(live.done.wait(), LIVE_TIMEOUT)
    if live.left:  # measured anyway over the runs that are live, and said so
        print(f"  only {n - live.left:,} of {n:,} runs live after {LIVE_TIMEOUT:g} s", flush=True)
    else:
        print(f"  {n:,} runs live after {time.perf_counter() - started:.1f} s", flush=True)
    gc.collect()
    per_run = (rss_bytes() - before) / max(n - live.left, 1)
    started = time.perf_counter()
    for stream in streams:
        cancel_run(stream.run_id)
    await asyncio.gather(*tasks)
    ended = time.perf_counter() - started
    assert all(s.output is not None and s.output.status == "CANCELLED" for s in streams)
    return per_run, ended


class Countdown:
    """Set ``done`` once ``tick`` has been called n times."""

    def __init__(self, n: int) -> None:
        self.left = n
        self.done = asyncio.Event()

    def tick(self) -> None:
        self.left -= 1
        if self.left == 0:
            self.done.set()


def agno_live(base_url: str, n: int) -> tuple[float, float] | None:
    try:
        import _agno_side
    except ImportError:  # the main venv has no agno: tether's figures only
        return None
    return asyncio.run(_agno_side.live_runs(base_url, n))


def main(counts: list[int]) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one socket per live run
    print(f"live streaming runs (a chunk a second over HTTP); {machine()}")
    print(f"{'runs':>7}  {'':<8}{'RSS/run':>10}{'cancel all':>12}")
    results: dict[str, object] = {"machine": machine()}
    for n in counts:
        with RemoteLoopback(SLOW) as server:
            per_run, cancel_all = asyncio.run(tether_live(server.base_url, n))
            print(f"{n:>7}  {'tether':<8}{per_run / 1024:>7.1f} KB{cancel_all:>11.3f}s", flush=True)
        results[f"tether {n}"] = {"rss_per_run": per_run, "cancel_all": cancel_all}
        if n <= 1000:
            with RemoteLoopback(SLOW) as server:
                agno = agno_live(server.base_url, n)
            if agno is not None:
                a_run, a_cancel = agno
                results[f"agno {n}"] = {"rss_per_run": a_run, "cancel_all": a_cancel}
                ratio = f"(tether: {per_run / a_run:.2f}x RSS, {cancel_all / a_cancel:.3f}x time)"
                print(f"{n:>7}  {'agno':<8}{a_run / 1024:>7.1f} KB{a_cancel:>11.3f}s  {ratio}", flush=True)

    save("live_runs", results)


if __name__ == "__main__":
    main([int(arg) for arg in sys.argv[1:]] or [1000, 10_000])

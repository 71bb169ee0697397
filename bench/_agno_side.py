"""The Agno 3.1.10 side of the side-by-side benchmarks, on tether's loopback model server.

Agno is set up the leanest fair way: one shared `Agent` (no db, no memory, telemetry off, default event
kinds, a tool only in the in-tool state), `OpenAIChat` with `max_retries=0` like the tether side, and the
openai SDK's own httpx2 client with only its pool size changed. Agno logs two INFO lines per cancel;
they are dropped at its handlers so the terminal stays readable (Agno still builds the records).

How Agno cancels (file:line in agno 3.1.10):

- `Agent.cancel_run(run_id)` (agent/agent.py:909) only sets a flag in the in-memory cancellation manager
  (run/cancellation_management/in_memory_cancellation_manager.py:83), under a threading lock.
- The run polls the flag with `araise_if_cancelled` (same file, :159) between the events it gets from
  the model layer (agent/_run.py:2350, inside `_arun_stream`), and at a few fixed points between steps.
  `except RunCancelledException` (agent/_run.py:2552) yields `RunCancelledEvent`, then
  `RunCompletedEvent`, whatever `stream_events` says.
- Nothing interrupts a pending await. Mid-stream the flag is seen when the next chunk arrives; in a stall
  only at the first chunk after it; a running tool is never interrupted (models/base.py:2821 gathers the
  tool calls to completion), and with default events the flag is seen only at the first chunk of the
  follow-up model request that Agno still sends after the tool.
- The model stream of a cancelled run is closed when the run ends (mid-stream ~50 ms after the cancel
  here, by `cancel_latency.py` with the cycle collector off). A stream abandoned without its generators
  being closed stays open until the cyclic garbage collector runs (the openai `AsyncStream` is in a cycle
  with its `__stream__` generator), so the harness collects after each trial or batch, outside every
  timed interval, so that no leaked stream can load later trials.

    .venv-bench/bin/python bench/_agno_side.py      # smoke run, about a minute
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import statistics
import time
import uuid
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai
from _common import rss_bytes
from agno.agent import Agent
from agno.models.openai import OpenAIChat
from agno.run import RunContext
from agno.run.agent import RunCancelledEvent, RunContentEvent, RunErrorEvent, RunOutput, RunOutputEvent

from tether.testing import LoopbackServer, Reply, ScriptedToolCall

STATES = ("mid-stream", "mid-stall", "in-tool")
TRIAL_CAP = 10.0  # seconds after cancel_run before a trial is abandoned as "timeout"
STALL_CANCEL_DELAY = 0.02  # mid-stall: cancel this long after the run's request reached the server
TOOL_SECONDS = 5.0
# Trials of a batch start this far apart: started together, their tools (or stalls) would end in the
# same millisecond and the terminal events queue behind each other (+340 ms p50 at 50 in-tool trials).
BATCH_STAGGER = 0.02
LIVE_CAP = 30.0  # live_runs: seconds for the cancel phase; going live gets this plus LIVE_START_PER_RUN
LIVE_START_PER_RUN = 0.05  # starting runs is superlinear: ~6 s for 1,000, ~20 s for 2,000
_TOOL_CALL = Reply(chunks=(), tool_calls=(ScriptedToolCall(name="slow", arguments="{}"),))
_REAP_CAP = 30.0


@dataclass(frozen=True)
class Trial:
    """One cancel trial: seconds from `cancel_run` returning to the end, and how the run ended.

    `ending` is "cancelled" (a RunCancelledEvent arrived), "ended" (the iterator ended without one),
    "error" (a RunErrorEvent arrived) or "timeout" (nothing within TRIAL_CAP; `seconds` is then the cap).
    """

    seconds: float
    ending: str


@dataclass
class _Streams:
    """What one agent's runs opened: model HTTP responses (to see Agno's abandoned ones) and tool gates."""

    responses: weakref.WeakSet[httpx2.Response] = field(default_factory=weakref.WeakSet)
    tool_started: dict[str, asyncio.Event] = field(default_factory=dict)

    async def opened(self, response: httpx2.Response) -> None:
        self.responses.add(response)

    def open_count(self) -> int:
        return sum(not response.is_closed for response in list(self.responses))


# -- setup -----------------------------------------------------------------------------------------------


def _quiet_agno_logs() -> None:
    # Agno resets its logger to INFO on every run (agno/agent/_init.py:59), so the handlers are raised.
    for handler in logging.getLogger("agno").handlers:
        handler.setLevel(logging.WARNING)


def _slow_tool(streams: _Streams) -> Callable[[RunContext], Coroutine[Any, Any, str]]:
    async def slow(run_context: RunContext) -> str:
        """Do five seconds of slow work."""
        streams.tool_started[run_context.run_id].set()
        await asyncio.sleep(TOOL_SECONDS)
        return "done"

    return slow


@contextlib.asynccontextmanager
async def _agno(
    base_url: str, *, connections: int = 1000, tools: bool = False
) -> AsyncIterator[tuple[Agent, _Streams]]:
    """A shared Agno agent on the loopback model, its pool sized for `connections` streams; closed on exit.

    The openai SDK caps its pool at 1,000 connections. Agno's `http_client` field only takes a legacy
    `httpx.AsyncClient` (agno/models/openai/chat.py:174) and would swap the SDK's httpx2 stack for it, so
    the SDK's own client class goes in through `client_params` with a larger pool instead.
    """
    _quiet_agno_logs()
    streams = _Streams()
    limits = httpx2.Limits(max_connections=max(connections, 1000), max_keepalive_connections=100)
    async with openai.DefaultAsyncHttpxClient(
        limits=limits, event_hooks={"response": [streams.opened]}
    ) as http:
        model = OpenAIChat(
            id="loopback", base_url=base_url, api_key="x", max_retries=0, client_params={"http_client": http}
        )
        # A tool list puts its schema in every request, so only the in-tool state has one.
        agent = Agent(model=model, tools=[_slow_tool(streams)] if tools else None, telemetry=False)
        try:
            yield agent, streams
        finally:
            await _reap(streams)


async def _reap(streams: _Streams) -> None:
    """Close the model streams Agno abandoned on cancel, by running the garbage collector."""
    deadline = time.monotonic() + _REAP_CAP
    while streams.open_count() and time.monotonic() < deadline:
        # The dropped generators are finalized one level per loop turn before the cycle is left to gc.
        await asyncio.sleep(0.005)
        gc.collect()


# -- consuming a run -------------------------------------------------------------------------------------


async def _consume(
    stream: AsyncIterator[RunOutputEvent | RunOutput], first_text: asyncio.Event
) -> tuple[str, float]:
    """Drain one run; return how it ended and when (perf_counter) its terminal event arrived."""
    ending, at = "ended", 0.0
    async for event in stream:
        if at:
            continue  # drain the trailing RunCompletedEvent so the generator finishes on its own
        if isinstance(event, RunCancelledEvent):
            ending, at = "cancelled", time.perf_counter()
        elif isinstance(event, RunErrorEvent):
            ending, at = "error", time.perf_counter()
        elif isinstance(event, RunContentEvent) and event.content:
            # Agno's first content event is the empty role delta, with the first text already in the
            # socket buffer behind it; tether's first content event is text, so that is the cue.
            first_text.set()
    return ending, at or time.perf_counter()


async def _stop(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


# -- 1. streaming ----------------------------------------------------------------------------------------


async def stream_events(base_url: str, agent: Agent | None = None) -> int:
    """Run one Agno streamed run to its end; return the RunContentEvents received.

    For a server of 20,000 chunks that is 20,001: Agno adds an empty content event for the role delta.
    Without `agent` a fresh one and its HTTP client (~50 ms) are built inside the caller's timing; pass
    one from `agno_agent` to time the run alone.
    """
    if agent is None:
        async with agno_agent(base_url) as fresh:
            return await _count_content(fresh)
    return await _count_content(agent)


@contextlib.asynccontextmanager
async def agno_agent(base_url: str) -> AsyncIterator[Agent]:
    """The agent `stream_events` builds, for a caller that keeps one across timed runs."""
    async with _agno(base_url) as (agent, _):
        yield agent


async def _count_content(agent: Agent) -> int:
    count = 0
    async for event in agent.arun("go", stream=True):
        count += isinstance(event, RunContentEvent)
    return count


# -- 2. cancel latency -----------------------------------------------------------------------------------


async def cancel_trial(server: LoopbackServer, state: str) -> float:
    """One cancel trial: seconds from `cancel_run` returning to the RunCancelledEvent reaching the consumer.

    Takes the server, not its URL: mid-stall cancels STALL_CANCEL_DELAY after the run's own request
    reached it, and in-tool pushes the tool-call reply. The caller sets the default reply: mid-stream
    `Reply(chunks=..., pace=0.05)` (cancelled after the first text event), mid-stall `Reply(stall=60)`,
    in-tool an ordinary reply for the follow-up request (cancelled once the tool started). A trial still
    running TRIAL_CAP after the cancel is abandoned and returns that (every mid-stall trial: Agno would
    only end it at the first chunk, 60 s in); `cancel_trial_detail` tells the endings apart.
    """
    return (await cancel_trial_detail(server, state)).seconds


async def cancel_trial_detail(server: LoopbackServer, state: str) -> Trial:
    """`cancel_trial`, also saying how the run ended."""
    async with _agno(server.base_url, tools=_check(state) == "in-tool") as (agent, streams):
        return await _trial(agent, streams, server, state)


async def cancel_trials(server: LoopbackServer, state: str, trials: int, concurrency: int) -> list[float]:
    """`trials` cancel trials in batches of `concurrency` on one agent; their latencies (see `cancel_trial`).

    Concurrency does not distort Agno's figure because in every state the latency is a wait for
    something outside the loop: the next 50 ms chunk, the end of the stall, the end of the 5 s tool plus
    the follow-up request. The loop is idle during that wait, and each trial's own CPU at its terminal
    event is a few milliseconds, so trials only delay each other if those moments coincide. Starting the
    trials of a batch BATCH_STAGGER apart keeps them apart. Measured on 2 cores (p50 / max, ms):
    mid-stream 50.7 / 54.7 sequential vs 50.5 / 54.9 at 50 concurrent; in-tool 5016 / 5019 sequential vs
    5009 / 5031 at 50; mid-stall with a 3 s stall 2985 / 2997 vs 2986 / 2999 at 50. Without the stagger
    50 in-tool trials gave 5358 / 5416. Batches, not a sliding window, so Agno's abandoned streams are
    collected between batches, outside every timed interval.
    """
    return [trial.seconds for trial in await cancel_trials_detail(server, state, trials, concurrency)]


async def cancel_trials_detail(
    server: LoopbackServer, state: str, trials: int, concurrency: int
) -> list[Trial]:
    """`cancel_trials`, also saying how each run ended."""
    if _check(state) == "in-tool" and concurrency * BATCH_STAGGER >= TOOL_SECONDS:
        # A follow-up request would otherwise take a tool-call reply pushed for a later trial.
        raise ValueError(f"in-tool needs concurrency < {TOOL_SECONDS / BATCH_STAGGER:.0f}")
    results: list[Trial] = []
    async with _agno(server.base_url, connections=concurrency, tools=state == "in-tool") as (agent, streams):
        for start in range(0, trials, concurrency):
            async with asyncio.TaskGroup() as group:
                batch = [
                    group.create_task(_trial(agent, streams, server, state, k * BATCH_STAGGER))
                    for k in range(min(concurrency, trials - start))
                ]
            results += [task.result() for task in batch]
            await _reap(streams)
    return results


def _check(state: str) -> str:
    if state not in STATES:
        raise ValueError(f"state must be one of {STATES}, not {state!r}")
    return state


async def _trial(
    agent: Agent, streams: _Streams, server: LoopbackServer, state: str, delay: float = 0.0
) -> Trial:
    await asyncio.sleep(delay)
    run_id = uuid.uuid4().hex
    first_text, tool_started = asyncio.Event(), asyncio.Event()
    streams.tool_started[run_id] = tool_started
    if state == "in-tool":
        server.push(_TOOL_CALL)  # FIFO: the batch's follow-ups come TOOL_SECONDS later, after all its pushes
    stream = agent.arun(f"go {run_id}", stream=True, run_id=run_id)
    consumer = asyncio.create_task(_consume(stream, first_text))
    try:
        async with asyncio.timeout(TRIAL_CAP):
            await _cancel_point(state, server, run_id, tool_started if state == "in-tool" else first_text)
        agent.cancel_run(run_id)
        cancelled_at = time.perf_counter()
        done, _ = await asyncio.wait({consumer}, timeout=TRIAL_CAP)
        if not done:
            return Trial(time.perf_counter() - cancelled_at, "timeout")
        ending, at = consumer.result()
        return Trial(at - cancelled_at, ending)
    finally:
        await _stop(consumer)
        del streams.tool_started[run_id]


async def _cancel_point(state: str, server: LoopbackServer, run_id: str, signal: asyncio.Event) -> None:
    """Wait until the run is where `state` says it should be cancelled."""
    if state == "mid-stall":
        # The prompt carries the run id, so concurrent trials each wait for their own request.
        await server.await_until(lambda s: _has_request(s, run_id), timeout=TRIAL_CAP)
        await asyncio.sleep(STALL_CANCEL_DELAY)
    else:
        await signal.wait()  # the first text event, or the tool having started


def _has_request(server: LoopbackServer, marker: str) -> bool:
    return any(marker in str(request.body.get("messages", "")) for request in server.requests)


# -- 3. many live runs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Live:
    """What `live_runs` measured, plus how long the runs took to go live and how they ended."""

    rss_per_run: float  # bytes
    cancel_all_seconds: float
    start_seconds: float
    endings: Counter[str]


async def live_runs(base_url: str, n: int, wave: int = 100) -> tuple[float, float]:
    """n concurrent streamed runs: (RSS growth in bytes per live run, seconds to cancel them all).

    The runs start in waves of `wave`, each once the one before is live, as in tether's measurement.

    The server should be slow (`Reply(chunks=[...many...], pace=1.0)`). VmRSS is read before the first
    run starts and once every run has had its first text event; it includes the loopback server's share
    when that runs in this process (the smoke run serves from a child process). The cancel clock starts
    before the first of the n `cancel_run` calls and stops when the last consumer saw its terminal event
    (or its iterator ended); with pace=1.0 Agno needs up to a second, until each run's next chunk. The
    HTTP pool is sized for n connections (see `_agno`).
    """
    live = await live_runs_detail(base_url, n, wave)
    return live.rss_per_run, live.cancel_all_seconds


async def live_runs_detail(base_url: str, n: int, wave: int = 100) -> Live:
    """`live_runs`, also saying how long the runs took to go live and how they ended."""
    async with _agno(base_url, connections=n) as (agent, _):
        gc.collect()
        before = rss_bytes()
        started = time.perf_counter()
        firsts = {uuid.uuid4().hex: asyncio.Event() for _ in range(n)}
        waves = list(firsts.items())
        consumers: list[asyncio.Task[tuple[str, float]]] = []
        try:
            async with asyncio.timeout(LIVE_CAP + n * LIVE_START_PER_RUN):
                for at in range(0, n, wave):
                    batch = waves[at : at + wave]
                    consumers += [
                        asyncio.create_task(_consume(agent.arun("go", stream=True, run_id=run_id), first))
                        for run_id, first in batch
                    ]
                    await asyncio.gather(*(first.wait() for _, first in batch))
            start_seconds = time.perf_counter() - started
            rss_per_run = (rss_bytes() - before) / n
            cancelled_at = time.perf_counter()
            for run_id in firsts:
                agent.cancel_run(run_id)
            done, pending = await asyncio.wait(consumers, timeout=LIVE_CAP)
        finally:
            for consumer in consumers:
                await _stop(consumer)
    ends = [task.result() for task in done]
    last = time.perf_counter() if pending else max((at for _, at in ends), default=cancelled_at)
    endings = Counter(ending for ending, _ in ends) + Counter({"timeout": len(pending)})
    return Live(rss_per_run, last - cancelled_at, start_seconds, endings)


# -- smoke run -------------------------------------------------------------------------------------------

_CHUNKS = [f"w{i} " for i in range(20_000)]


def _summary(trials: list[Trial]) -> str:
    seconds = sorted(trial.seconds for trial in trials)
    endings = ", ".join(f"{count} {ending}" for ending, count in Counter(t.ending for t in trials).items())
    return f"p50 {statistics.median(seconds) * 1e3:,.1f} ms, max {seconds[-1] * 1e3:,.1f} ms ({endings})"


async def _smoke_stream() -> None:
    async with LoopbackServer(Reply(chunks=_CHUNKS)) as server, agno_agent(server.base_url) as agent:
        server.push(Reply(chunks=_CHUNKS[:2_000]))  # a warm-up run: the first one pays lazy imports
        await stream_events(server.base_url, agent)
        started = time.perf_counter()
        count = await stream_events(server.base_url, agent)
        elapsed = time.perf_counter() - started
    print(f"stream_events: {count:,} content events in {elapsed:.2f} s = {count / elapsed:,.0f} events/s")


async def _smoke_cancel(state: str, reply: Reply, sequential: int, concurrent: int) -> None:
    async with LoopbackServer(reply) as server:
        alone = [await cancel_trial_detail(server, state) for _ in range(sequential)]
        together = await cancel_trials_detail(server, state, concurrent, concurrent)
    print(f"cancel_trial  {state:<10}  {sequential:>2} sequential:  {_summary(alone)}")
    print(f"cancel_trials {state:<10}  {concurrent:>2} concurrent:  {_summary(together)}")


def _serve(reply: Reply, pipe: Any) -> None:
    """Serve `reply` from a child process until told to stop, so the parent's RSS is Agno's alone."""
    with LoopbackServer(reply) as server:
        pipe.send(server.base_url)
        pipe.recv()


async def _smoke_live(n: int) -> None:
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    server = context.Process(
        target=_serve, args=(Reply(chunks=_CHUNKS[:3_600], pace=1.0), child), daemon=True
    )
    server.start()
    try:
        base_url = await asyncio.to_thread(parent.recv)
        live = await live_runs_detail(base_url, n)
    finally:
        parent.send("stop")
        await asyncio.to_thread(server.join, 10)
    endings = ", ".join(f"{count} {ending}" for ending, count in live.endings.items())
    print(
        f"live_runs n={n:,}: {live.rss_per_run / 1024:,.1f} KiB RSS per live run (all live after "
        f"{live.start_seconds:.1f} s), cancel-all {live.cancel_all_seconds * 1e3:,.0f} ms ({endings})"
    )


async def _smoke() -> None:
    await _smoke_stream()
    await _smoke_cancel("mid-stream", Reply(chunks=_CHUNKS, pace=0.05), 20, 20)
    await _smoke_cancel("mid-stall", Reply(chunks=_CHUNKS, stall=60), 1, 8)
    await _smoke_cancel("in-tool", Reply(), 2, 10)
    await _smoke_live(1_000)


if __name__ == "__main__":
    asyncio.run(_smoke())

"""Cancel latency and upstream close latency, tether next to Agno, in the same run.

Cancel latency: ``cancel_run`` returns -> the terminal event reaches the consumer of the stream, in three
states: mid-stream (a chunk every 50 ms, cancelled after the first), stalled before the first token
(a 5 s stall, cancelled 20 ms into it) and inside a slow async tool (5 s, cancelled 10 ms into it).
Upstream close latency: ``cancel_run`` -> the model server records the client's disconnect (tether).

tether talks to a loopback server in a child process (a provider is another machine; an in-process
server thread would take the GIL at the very moment we measure). Agno's harness (``_agno_side``) uses
an in-process server: its figures are tens of milliseconds to seconds, far above that effect. Agno does
not close the model stream on cancel (see ``_agno_side``); its upstream close is checked separately.

    .venv-bench/bin/python bench/cancel_latency.py [TRIALS]
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time

from _common import RemoteLoopback, machine, percentiles, save

from tether import Agent, RunEvent, RunStream, tool
from tether.models.openai import OpenAIChat
from tether.testing import LoopbackServer, Reply, ScriptedToolCall

STATES = ("mid-stream", "mid-stall", "in-tool")
CHUNKS = [f"w{i} " for i in range(2_000)]
STALL = TOOL = 5.0
REPLIES = {
    "mid-stream": Reply(chunks=CHUNKS, pace=0.05),
    "mid-stall": Reply(chunks=CHUNKS, stall=STALL),
    "in-tool": Reply(chunks=["done"]),
}
CANCEL_AFTER = {
    "mid-stream": RunEvent.run_content,
    "mid-stall": RunEvent.run_started,
    "in-tool": RunEvent.tool_call_started,
}
TOOL_CALL = Reply(chunks=(), tool_calls=(ScriptedToolCall(name="slow", arguments="{}"),))
AGNO_CONCURRENCY = 50  # Agno's trials wait seconds each; see _agno_side.cancel_trials for why it is fair


@tool
async def slow() -> str:
    """Work that takes a while."""
    await asyncio.sleep(TOOL)
    return "slow result"


async def reach(state: str, stream: RunStream) -> None:
    """Read the stream until the run is where ``state`` cancels it."""
    async for event in stream:
        if event.event == CANCEL_AFTER[state]:
            break
    if state != "mid-stream":
        await asyncio.sleep(0.02 if state == "mid-stall" else 0.01)  # into the stall / into the tool's await


async def tether_trial(agent: Agent, server: RemoteLoopback, state: str) -> tuple[float, float | None]:
    """(cancel -> terminal event, cancel -> server saw the disconnect or None if it had no stream)."""
    if state == "in-tool":
        server.push(TOOL_CALL)
    stream = agent.arun("go", stream=True)
    await reach(state, stream)
    agent.cancel_run(stream.run_id)
    cancelled, cancelled_mono = time.perf_counter(), time.monotonic()
    async for event in stream:
        if event.is_terminal:
            latency = time.perf_counter() - cancelled
            break
    else:
        raise AssertionError("no terminal event")
    assert stream.output is not None and stream.output.status == "CANCELLED", stream.output
    if state == "in-tool":
        return latency, None
    return latency, await disconnect_after(server, cancelled_mono)


async def disconnect_after(server: RemoteLoopback, since: float) -> float:
    for _ in range(1000):
        record = server.recorded()[-1]
        if record.disconnected_at is not None:
            return record.disconnected_at - since
        await asyncio.sleep(0.001)
    raise AssertionError("the server never saw the disconnect")


async def tether_state(state: str, trials: int) -> tuple[list[float], list[float]]:
    with RemoteLoopback(REPLIES[state]) as server:
        model = OpenAIChat(id="loopback", base_url=server.base_url, max_retries=0)
        agent = Agent(name="bench", model=model, tools=[slow])
        await tether_trial(agent, server, state)  # warm-up: connection pool, lazy imports
        latencies, closes = [], []
        for _ in range(trials):
            server.reset()
            latency, close = await tether_trial(agent, server, state)
            latencies.append(latency)
            if close is not None:
                closes.append(close)
        return latencies, closes


async def agno_state(state: str, trials: int) -> tuple[list[float], list[str]] | None:
    try:
        import _agno_side
    except ImportError:  # the main venv has no agno: tether's figures only
        return None
    async with LoopbackServer(REPLIES[state]) as server:
        results = await _agno_side.cancel_trials_detail(server, state, trials, AGNO_CONCURRENCY)
    return [r.seconds for r in results], [r.ending for r in results]


async def agno_upstream_close(trials: int = 10, wait: float = 2.0) -> list[float | None]:
    """Agno mid-stream: cancel -> the server sees the disconnect (None: not within ``wait``)."""
    try:
        import _agno_side
    except ImportError:
        return []
    closes: list[float | None] = []
    async with LoopbackServer(REPLIES["mid-stream"]) as server:
        for _ in range(trials):
            server.reset()
            gc.disable()  # the cycle collector would close an abandoned stream; measure Agno itself
            try:
                latency = await _agno_side.cancel_trial(server, "mid-stream")
                cancelled = time.monotonic() - latency  # the trial returns at its terminal event
                seen = await server.await_until(lambda s: bool(s.disconnects), timeout=wait)
                closes.append(server.disconnects[0].disconnected_at - cancelled if seen else None)  # type: ignore[operator]
            finally:
                gc.enable()
                gc.collect()
    return closes


def row(name: str, samples: list[float], note: str = "") -> str:
    p50, p99 = percentiles(samples)
    return f"  {name:<8}{p50:>11.3f}{p99:>11.3f}{max(samples) * 1e3:>11.3f}  {note}"


def ratio(ours: list[float], theirs: list[float]) -> str:
    (p50, p99), (t50, t99) = percentiles(ours), percentiles(theirs)
    return f"tether/agno: {p50 / t50:.5f} at p50, {p99 / t99:.5f} at p99"


async def main(trials: int) -> None:
    print(f"cancel latency (ms), cancel_run -> terminal event at the consumer, {trials} trials; {machine()}")
    print(f"  {'':<8}{'p50':>11}{'p99':>11}{'max':>11}")
    results: dict[str, object] = {"machine": machine(), "trials": trials}
    for state in STATES:
        ours, closes = await tether_state(state, trials)
        agno = await agno_state(state, trials)
        print(f"{state}")
        print(row("tether", ours))
        if agno is not None:
            endings = "/".join(sorted(set(agno[1])))
            print(row("agno", agno[0], f"(runs ended: {endings}) {ratio(ours, agno[0])}"))
        if closes:
            p50, p99 = percentiles(closes)
            print(f"  upstream close (cancel -> server sees the disconnect): p50 {p50:.3f} p99 {p99:.3f}")
        results[state] = {"tether": ours, "agno": agno[0] if agno else None, "close": closes}
    agno_close = await agno_upstream_close()
    if agno_close:
        closed = sorted(c * 1e3 for c in agno_close if c is not None)
        print(
            f"agno upstream close, mid-stream (cycle collector off): {len(closed)} of {len(agno_close)} "
            f"within 2 s, after {', '.join(f'{c:.0f}' for c in closed)} ms"
        )
    results["agno_close"] = agno_close
    save("cancel_latency", results)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 200))

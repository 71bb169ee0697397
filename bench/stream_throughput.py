"""Streamed chunks per second for one long run, side by side in the same run on the loopback server.

- bare: httpx2 line iteration + ``json.loads`` of each chunk (no objects built): the limit;
- openai: the raw ``openai`` SDK's chunk iteration (a pydantic object per chunk);
- tether: ``async for`` over a tether run's events;
- agno: ``async for`` over an Agno 3.1.10 run's events (when the bench venv has it).

The server runs in a child process. Figures: the median wall-clock rate over the trials, and the
client's CPU time per chunk (what a busy neighbour on the machine moves least), both as ratios to bare.

    .venv-bench/bin/python bench/stream_throughput.py [CHUNKS] [TRIALS]
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import sys
import time

import httpx2
import openai
from _common import RemoteLoopback, machine, save

from tether import Agent
from tether.models.openai import OpenAIChat
from tether.testing import Reply

BODY = {"model": "loopback", "messages": [{"role": "user", "content": "go"}], "stream": True}


async def bare(base_url: str) -> int:
    count = 0
    async with (
        httpx2.AsyncClient() as client,
        client.stream("POST", f"{base_url}/chat/completions", json=BODY) as response,
    ):
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                json.loads(line[6:])
                count += 1
    return count


async def raw_openai(base_url: str) -> int:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
    count = 0
    stream = await client.chat.completions.create(
        model="loopback", messages=[{"role": "user", "content": "go"}], stream=True
    )
    async for _ in stream:
        count += 1
    await client.close()
    return count


async def tether_run(agent: Agent) -> int:
    count = 0
    async for _ in agent.arun("go", stream=True):
        count += 1
    return count


async def agno_run(agent: object) -> int:
    import _agno_side

    return await _agno_side.stream_events("", agent)  # type: ignore[arg-type]


async def timed(fn, *args) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(wall seconds, CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    await fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu


async def contenders(base_url: str, stack: contextlib.AsyncExitStack) -> dict[str, tuple[object, ...]]:
    agent = Agent(name="bench", model=OpenAIChat(id="loopback", base_url=base_url, max_retries=0))
    found: dict[str, tuple[object, ...]] = {
        "bare": (bare, base_url),
        "openai": (raw_openai, base_url),
        "tether": (tether_run, agent),
    }
    try:
        import _agno_side
    except ImportError:  # the main venv has no agno
        return found
    found["agno"] = (agno_run, await stack.enter_async_context(_agno_side.agno_agent(base_url)))
    return found


async def main(chunks: int, trials: int) -> None:
    print(f"streaming one run of {chunks:,} chunks, median of {trials}; {machine()}")
    results: dict[str, list[tuple[float, float]]] = {}
    with RemoteLoopback(Reply(chunks=[f"w{i} " for i in range(chunks)])) as server:
        async with contextlib.AsyncExitStack() as stack:
            runners = await contenders(server.base_url, stack)
            for fn, arg in runners.values():
                await fn(arg)  # warm-up: lazy imports, the connection pool
            for _ in range(trials):
                for name, (fn, arg) in runners.items():
                    results.setdefault(name, []).append(await timed(fn, arg))
    bare_wall = statistics.median(w for w, _ in results["bare"])
    bare_cpu = statistics.median(c for _, c in results["bare"])
    print(f"{'':<8}{'chunks/s':>12}{'x bare':>8}{'CPU us/chunk':>14}{'x bare':>8}")
    figures = {}
    for name, samples in results.items():
        wall = statistics.median(w for w, _ in samples)
        cpu = statistics.median(c for _, c in samples)
        figures[name] = {"rate": chunks / wall, "cpu_per_chunk": cpu / chunks}
        print(
            f"{name:<8}{chunks / wall:>12,.0f}{bare_wall / wall:>8.2f}"
            f"{cpu / chunks * 1e6:>14.2f}{bare_cpu / cpu:>8.2f}"
        )
    save("stream_throughput", {"machine": machine(), "chunks": chunks, "figures": figures})


if __name__ == "__main__":
    asyncio.run(
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000, int(sys.argv[2]) if len(sys.argv) > 2 else 5)
    )

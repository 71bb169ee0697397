"""Streamed chunks per second for one long run, side by side in the same run on the loopback server.

- bare: httpx2 line iteration + ``json.loads`` of each chunk (no objects built): the limit;
- openai: the raw ``openai`` SDK's chunk iteration (a pydantic object per chunk);
- tether: ``async for`` over a tether run's events.

    .venv/bin/python bench/stream_throughput.py [CHUNKS] [TRIALS]
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import sys
import time
from datetime import date

import httpx2
import openai

from tether import Agent
from tether.models.openai import OpenAIChat
from tether.testing import LoopbackServer, Reply

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


async def timed(fn, *args) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    await fn(*args)
    return time.perf_counter() - started


async def main(chunks: int, trials: int) -> None:
    machine = f"{platform.node()}, {os.cpu_count()} cores, {date.today()}"
    print(f"streaming {chunks} chunks, median of {trials}; {machine}")
    with LoopbackServer(Reply(chunks=[f"w{i} " for i in range(chunks)])) as server:
        agent = Agent(name="bench", model=OpenAIChat(id="loopback", base_url=server.base_url, max_retries=0))
        results: dict[str, list[float]] = {"bare": [], "openai": [], "tether": []}
        for _ in range(trials):
            results["bare"].append(await timed(bare, server.base_url))
            results["openai"].append(await timed(raw_openai, server.base_url))
            results["tether"].append(await timed(tether_run, agent))
    limit = chunks / statistics.median(results["bare"])
    for name, samples in results.items():
        rate = chunks / statistics.median(samples)
        print(f"{name:<8}{rate:>12,.0f} chunks/s{rate / limit:>8.2f}x bare")


if __name__ == "__main__":
    asyncio.run(
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000, int(sys.argv[2]) if len(sys.argv) > 2 else 5)
    )

"""Cancel latency: ``cancel_run`` returns -> the terminal event reaches the consumer.

Side by side with a baseline measured in the same run on the same loopback server: the raw ``openai``
SDK streaming in an asyncio task, stopped with ``task.cancel()`` (time until the task has finished).
Two states: mid-stream (a chunk every 50 ms) and stalled before the first token.

    .venv/bin/python bench/cancel_latency.py [TRIALS]
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import statistics
import sys
import time
from datetime import date

import openai

from tether import Agent, RunEvent
from tether.models.openai import OpenAIChat
from tether.testing import LoopbackServer, Reply

CHUNKS = [f"w{i} " for i in range(10_000)]


async def tether_trial(agent: Agent, mid_stream: bool) -> float:
    stream = agent.arun("go", stream=True)
    cancelled_at = 0.0
    async for event in stream:
        if event.is_terminal:
            return time.perf_counter() - cancelled_at
        if (event.event == RunEvent.run_content) == mid_stream:
            if not mid_stream:
                await asyncio.sleep(0.02)  # let the request reach the server's stall
            agent.cancel_run(stream.run_id)
            cancelled_at = time.perf_counter()
    raise AssertionError("no terminal event")


async def openai_trial(client: openai.AsyncOpenAI, mid_stream: bool) -> float:
    first = asyncio.Event()

    async def consume() -> None:
        response = await client.chat.completions.create(
            model="loopback", messages=[{"role": "user", "content": "go"}], stream=True
        )
        async for _ in response:
            first.set()

    task = asyncio.create_task(consume())
    if mid_stream:
        await first.wait()
    else:
        await asyncio.sleep(0.02)
    task.cancel()
    cancelled_at = time.perf_counter()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return time.perf_counter() - cancelled_at


def summary(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1e3, ordered[int(0.99 * (len(ordered) - 1))] * 1e3


async def main(trials: int) -> None:
    print(f"cancel latency, {trials} trials each; {platform.node()}, {os.cpu_count()} cores, {date.today()}")
    print(f"{'state':<12}{'tether p50':>12}{'p99':>9}{'baseline p50':>15}{'p99':>9}{'p50 ratio':>11}")
    for state, reply in (
        ("mid-stream", Reply(chunks=CHUNKS, pace=0.05)),
        ("mid-stall", Reply(chunks=CHUNKS, stall=60)),
    ):
        mid = state == "mid-stream"
        with LoopbackServer(reply) as server:
            model = OpenAIChat(id="loopback", base_url=server.base_url, max_retries=0)
            agent = Agent(name="bench", model=model)
            client = openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0)
            ours = [await tether_trial(agent, mid) for _ in range(trials)]
            base = [await openai_trial(client, mid) for _ in range(trials)]
            await client.close()
        (p50, p99), (b50, b99) = summary(ours), summary(base)
        print(f"{state:<12}{p50:>10.3f}ms{p99:>7.3f}ms{b50:>13.3f}ms{b99:>7.3f}ms{p50 / b50:>10.2f}x")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 200))

"""Stop a run from another coroutine: ``async for`` in one task, ``acancel_run`` in another.

python examples/async_cancel.py [SECONDS_BEFORE_CANCEL]
"""

from __future__ import annotations

import asyncio
import sys

from tether import Agent, RunEvent
from tether.testing import demo_model


async def stop_button(agent: Agent, run_id: str, delay: float) -> None:
    await asyncio.sleep(delay)
    accepted = await agent.acancel_run(run_id, reason="user pressed stop")
    print(f"\n\n[stop button] acancel_run({run_id!r}) -> {accepted}")


async def main(delay: float = 2.0) -> None:
    with demo_model() as (model, where):
        print(f"Using {where}\n")
        agent = Agent(name="Storyteller", model=model)
        stream = agent.arun("Write a long story about a dragon who learns to code.", stream=True)
        stopper = asyncio.create_task(stop_button(agent, stream.run_id, delay))
        async for event in stream:
            if event.event == RunEvent.run_content:
                print(event.content, end="", flush=True)
            elif event.is_terminal:
                print(f"\n[{event.event.value}] status={event.status.value}")
        await stopper
        output = stream.output
        assert output is not None
        print(f"run {output.run_id}: {output.status.value}, kept {len(output.content)} characters")
        metrics = output.metrics
        print(f"time to first token: {metrics.time_to_first_token:.3f}s, duration: {metrics.duration:.3f}s")


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1]) if len(sys.argv) > 1 else 2.0))

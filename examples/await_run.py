"""``await agent.arun()`` returns a RunOutput; a cancelled run returns one too (it does not raise).

python examples/await_run.py [SECONDS_BEFORE_CANCEL]
"""

from __future__ import annotations

import asyncio
import sys

from tether import Agent, RunStatus
from tether.testing import demo_model


async def main(delay: float = 1.0) -> None:
    with demo_model() as (model, where):
        print(f"Using {where}\n")
        agent = Agent(name="Storyteller", model=model)

        # Choosing the run id up front lets anyone cancel it before seeing a single event.
        run = asyncio.create_task(agent.arun("Write a long story.", run_id="story-1"))
        await asyncio.sleep(delay)
        print(f"cancel_run('story-1') -> {agent.cancel_run('story-1', reason='took too long')}")
        output = await run

        assert output.status is RunStatus.cancelled
        print(f"status:  {output.status.value} ({output.cancel_source}: {output.cancel_reason})")
        print(f"content: {output.content[:120]!r}...")
        print(f"history: {[(m.role, m.interrupted) for m in output.messages]}")


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1]) if len(sys.argv) > 1 else 1.0))

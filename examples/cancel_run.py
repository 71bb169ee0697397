"""Stop a streaming run from another thread: the "Stop generating" button.

A run streams a long story in one thread; another thread calls ``agent.cancel_run(run_id)`` a few
seconds later. The stream ends with one ``RunCancelled`` event carrying the partial text.

Offline by default (a built-in loopback model streams over real HTTP); with ``OPENAI_API_KEY``
(or ``OPENAI_BASE_URL`` for Ollama, vLLM, llama.cpp) it uses that endpoint.

    python examples/cancel_run.py [SECONDS_BEFORE_CANCEL]
"""

from __future__ import annotations

import sys
import threading
import time

from tether import Agent, BaseRunEvent, RunEvent, RunStatus
from tether.testing import demo_model


def long_running_task(agent: Agent, shared: dict[str, object]) -> None:
    pieces: list[str] = []
    for event in agent.run("Write a very long story about a dragon who learns to code.", stream=True):
        shared.setdefault("run_id", event.run_id)
        if event.event == RunEvent.run_content:
            print(event.content, end="", flush=True)
            pieces.append(event.content or "")
        elif event.event == RunEvent.run_cancelled:
            print(f"\n\nRun was cancelled: {event.run_id} (reason: {event.reason}, source: {event.source})")
            assert event.content == "".join(pieces)  # the partial answer is kept, exactly
        shared["last"] = event


def cancel_after_delay(agent: Agent, shared: dict[str, object], delay: float) -> None:
    time.sleep(delay)
    run_id = str(shared.get("run_id"))
    print(f"\n\nCancelling run {run_id} from {threading.current_thread().name}")
    print(f"cancel_run returned {agent.cancel_run(run_id, reason='user pressed stop')}")


def main(delay: float = 3.0) -> None:
    with demo_model() as (model, where):
        print(f"Using {where}\n")
        agent = Agent(
            name="StorytellerAgent", model=model, description="An agent that writes detailed stories"
        )
        shared: dict[str, object] = {}
        runner = threading.Thread(target=long_running_task, args=(agent, shared), name="AgentRunThread")
        canceller = threading.Thread(
            target=cancel_after_delay, args=(agent, shared, delay), name="CancelThread"
        )
        runner.start()
        canceller.start()
        runner.join()
        canceller.join()

    last = shared["last"]
    assert isinstance(last, BaseRunEvent) and last.is_terminal
    print("\n" + "=" * 50)
    print(f"Run ID:   {shared['run_id']}")
    print(f"Status:   {last.status.value}")
    print(f"Kept:     {len(last.content or '')} characters of partial content")
    print(
        "SUCCESS: the run was cancelled" if last.status is RunStatus.cancelled else "The run completed first"
    )


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 3.0)

"""Stop a run while a slow tool is running, then carry on with the same conversation.

The model asks for a 5-second flight search; the user presses Stop half a second in. The run ends
at once (the tool sees CancelledError), the tool call gets a synthesized result in the history, and
the next run continues from that history without the provider rejecting it.

Offline by default (a scripted loopback model over real HTTP); with ``OPENAI_API_KEY`` (or
``OPENAI_BASE_URL``) it uses that endpoint, and the model decides whether to call the tool.

    python examples/tools_cancel.py
"""

from __future__ import annotations

import asyncio
import time

from tether import Agent, RunEvent
from tether.testing import Reply, ScriptedToolCall, demo_model

SCRIPT = [
    Reply(
        chunks=["Let me search ", "for flights. "],
        tool_calls=[ScriptedToolCall("search_flights", '{"to": "Lisbon"}')],
    ),
    Reply(chunks=["No problem, ", "I stopped the search. ", "Ask me again any time."]),
]


async def search_flights(to: str) -> str:
    """Search flights to a city. Slow: it takes about 5 seconds.

    Args:
        to: The destination city.
    """
    try:
        await asyncio.sleep(5)
    except asyncio.CancelledError:
        print(f"\n  [tool] search_flights({to!r}) was cancelled mid-flight")
        raise
    return f"3 flights to {to}"


async def main() -> None:
    with demo_model(script=SCRIPT) as (model, where):
        print(f"Using {where}\n")
        agent = Agent(name="Travel", model=model, tools=[search_flights], instructions="Use tools to search.")
        stream = agent.arun("Find me a flight to Lisbon.", stream=True)
        async for event in stream:
            if event.event == RunEvent.run_content:
                print(event.content, end="", flush=True)
            elif event.event == RunEvent.tool_call_started:
                print(f"\n  [tool] {event.tool_name}({event.tool_args}) started")  # type: ignore[attr-defined]
                await asyncio.sleep(0.5)
                pressed = time.perf_counter()
                agent.cancel_run(stream.run_id, reason="user pressed stop")
            elif event.event == RunEvent.tool_call_completed:
                print(f"  [tool] completed with error: {event.error}")  # type: ignore[attr-defined]
            elif event.is_terminal:
                print(f"  [{event.event.value}] {1000 * (time.perf_counter() - pressed):.1f} ms after Stop")
        first = stream.output
        assert first is not None
        print("\nHistory kept (valid for the provider):")
        for message in first.messages:
            calls = [c.function.name for c in message.tool_calls or []]
            print(f"  {message.role:<9} {message.content!r} {calls or ''}")

        second = await agent.arun("Never mind. What just happened?", history=first.messages)
        print(f"\nNext run: {second.status.value}: {second.content}")


if __name__ == "__main__":
    asyncio.run(main())

"""Contract points 6 and 7: outer cancellation wins; a consumer that stops early cancels the run."""

from __future__ import annotations

import asyncio
import gc

import anyio
import pytest

from tether import Agent, RunEvent, RunStatus, active_runs
from tether._run import registry
from tether._run._lifecycle import Phase
from tether.testing import ScriptedModel

pytestmark = pytest.mark.anyio

CHUNKS = [f"c{i} " for i in range(100)]


def slow_agent() -> Agent:
    return Agent(name="slow", model=ScriptedModel(CHUNKS, delay=0.01))


async def test_outer_cancel_of_a_streaming_consumer_propagates_and_is_recorded() -> None:
    agent = slow_agent()
    stream = agent.arun("go", stream=True)
    seen: list[str] = []

    async def consume() -> None:
        async for event in stream:
            if event.event == RunEvent.run_content:
                seen.append(event.content or "")

    with anyio.move_on_after(0.1) as scope:
        await consume()
    assert scope.cancelled_caught, "the outer cancellation must reach the consumer"
    # Recorded before the CancelledError reached us.
    out = stream.output
    assert out is not None and out.status is RunStatus.cancelled
    assert (out.cancel_source, out.cancel_reason) == ("outer", None)
    assert seen == CHUNKS[: len(seen)] and seen
    # Delivered means put in the channel: a chunk put in the same loop turn as the consumer's
    # cancellation is in the output, though the cancelled consumer never reads it. Never more.
    unread = out.content[len("".join(seen)) :]
    assert out.content.startswith("".join(seen)) and unread in ("", CHUNKS[len(seen)])
    assert agent.model.open_streams == 0  # type: ignore[attr-defined]
    assert active_runs() == []


async def test_outer_cancel_of_await_arun_propagates_and_ends_the_run() -> None:
    agent = slow_agent()
    task = asyncio.ensure_future(agent.arun("go", run_id="outer-await"))
    await asyncio.sleep(0.05)
    handle = registry.get("outer-await")
    assert handle is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert handle.status is RunStatus.cancelled and handle.cancel_source == "outer"
    assert active_runs() == [] and agent.model.open_streams == 0  # type: ignore[attr-defined]


async def test_outer_cancel_wins_over_a_simultaneous_cancel_run() -> None:
    agent = slow_agent()
    stream = agent.arun("go", stream=True)
    outcome: list[str] = []

    async def consume() -> None:
        try:
            async for _ in stream:
                pass
            outcome.append("finished")
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    task = asyncio.ensure_future(consume())
    await asyncio.sleep(0.05)
    agent.cancel_run(stream.run_id, reason="user stop")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert outcome == ["cancelled"]
    out = stream.output
    assert out is not None and out.status is RunStatus.cancelled and out.cancel_reason == "user stop"


async def test_break_cancels_the_run_as_consumer() -> None:
    agent = slow_agent()
    run_ids = []
    async for event in agent.arun("go", stream=True):
        run_ids.append(event.run_id)
        if event.event == RunEvent.run_content:
            handle = registry.get(event.run_id)
            break
    gc.collect()
    assert handle is not None
    with anyio.fail_after(1):
        await handle.done_event().wait()
    assert handle.status is RunStatus.cancelled and handle.cancel_source == "consumer"
    assert agent.model.open_streams == 0  # type: ignore[attr-defined]


async def test_aclose_and_async_with_cancel_the_run_as_consumer() -> None:
    agent = slow_agent()
    stream = agent.arun("go", stream=True)
    async for event in stream:
        if event.event == RunEvent.run_content:
            break
    await stream.aclose()
    assert stream.output is not None and stream.output.cancel_source == "consumer"
    assert stream.output.status is RunStatus.cancelled

    async with agent.arun("go", stream=True) as second:
        async for event in second:
            if event.event == RunEvent.run_content:
                break
    assert second.output is not None and second.output.cancel_source == "consumer"
    assert agent.model.open_streams == 0  # type: ignore[attr-defined]


async def test_a_stream_that_is_never_read_leaves_nothing_behind() -> None:
    agent = slow_agent()
    stream = agent.arun("go", stream=True, run_id="never-read")
    assert active_runs() == ["never-read"]
    del stream
    gc.collect()
    assert active_runs() == []
    assert agent.model.calls == []  # type: ignore[attr-defined]


async def test_the_done_event_of_an_ended_run_is_set_when_asked_for() -> None:
    agent = slow_agent()
    stream = agent.arun("go", stream=True)
    handle = stream.handle
    output = await stream.collect()
    assert output.status is RunStatus.completed and handle.life.phase is Phase.ENDED
    assert handle.life._done is None  # nobody waited: no event was made
    assert handle.done_event().is_set()

    never_read = agent.arun("go", stream=True)
    waiting = never_read.handle.done_event()
    assert not waiting.is_set()
    await never_read.aclose()  # its run never started: it ends here, and says so
    assert waiting.is_set() and never_read.handle.status is RunStatus.cancelled

"""Failures the property suite found, shrunk to small explicit tests (issue 12).

Each one failed on the engine as it was when the suite was written (issue 12), and passes since the
lifecycle rewrite.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest

from tether import Agent, BaseRunEvent, RunEvent, RunStatus, StreamBusyError, active_runs
from tether.storage import SqliteStorage
from tether.testing import Reply, ScriptedModel, ScriptedToolCall

pytestmark = pytest.mark.anyio


def received_text(events: list[BaseRunEvent]) -> str:
    return "".join(e.content or "" for e in events if e.event == RunEvent.run_content)


async def lookup(x: int) -> str:
    return f"async:{x}"


async def test_outer_cancel_before_the_first_event_keeps_no_chunk() -> None:
    # Shrunk by hypothesis: the chunk and the tool call are put in the channel in the loop turn in
    # which the consumer is cancelled; the consumer never receives the chunk, the output keeps it.
    model = ScriptedModel(turns=[Reply(chunks=["w0 "], tool_calls=[ScriptedToolCall("lookup", '{"x": 0}')])])
    agent = Agent(model=model, tools=[lookup])
    stream = agent.arun("go", stream=True)
    events: list[BaseRunEvent] = []
    with anyio.move_on_after(0) as scope:
        async for event in stream:
            events.append(event)
    assert scope.cancelled_caught
    out = stream.output
    assert out is not None and (out.status, out.cancel_source) == (RunStatus.cancelled, "outer")
    assert out.content == received_text(events) == ""


async def test_a_consumer_that_stops_keeps_exactly_what_it_received() -> None:
    # Three chunks are put before the consumer wakes for RunStarted; it then stops.
    agent = Agent(model=ScriptedModel(["a", "b", "c", "d"], stall=5, stall_at=3))
    stream = agent.arun("go", stream=True)
    events: list[BaseRunEvent] = []
    async for event in stream:
        events.append(event)
        break
    await stream.aclose()
    out = stream.output
    assert out is not None and (out.status, out.cancel_source) == (RunStatus.cancelled, "consumer")
    assert out.content == received_text(events) == ""


def test_a_closed_blocking_iterator_keeps_exactly_what_it_returned() -> None:
    agent = Agent(model=ScriptedModel(["a", "b", "c", "d"], stall=5, stall_at=3))
    events = agent.run("go", stream=True)
    first = next(events)
    events.close()
    assert first.event == RunEvent.run_started
    out = events.output
    assert out is not None and (out.status, out.cancel_source) == (RunStatus.cancelled, "consumer")
    assert out.content == ""


@pytest.mark.parametrize("error", ["KeyboardInterrupt()", "SystemExit(3)"])
def test_an_interrupt_in_a_run_reaches_the_blocking_caller_and_the_api_survives(error: str) -> None:
    # In a process of its own: on failure the blocking bridge is dead for the rest of the process.
    script = textwrap.dedent(f"""
        from tether import Agent
        from tether.testing import ScriptedModel
        try:
            Agent(model=ScriptedModel(["x"], error={error}, error_at=0)).run("hi")
        except BaseException as exc:
            print(type(exc).__name__)
        print(Agent(model=ScriptedModel(["ok"])).run("hi").content)
    """)
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.stdout.split() == [error.split("(")[0], "ok"], proc.stdout + proc.stderr
    assert proc.returncode == 0 and proc.stderr == ""


async def test_two_readers_of_one_stream_never_hang() -> None:
    stream = Agent(model=ScriptedModel([])).arun("go", stream=True)
    seen: list[list[BaseRunEvent] | Exception] = []

    async def read() -> None:
        events: list[BaseRunEvent] = []
        try:
            async for event in stream:
                events.append(event)
        except Exception as exc:  # the second reader may be refused, clearly and at once
            seen.append(exc)
            return
        seen.append(events)

    with anyio.fail_after(2):
        async with anyio.create_task_group() as group:
            group.start_soon(read)
            group.start_soon(read)
    assert len(seen) == 2
    assert all(isinstance(s, Exception) or (s and s[-1].is_terminal) for s in seen)


async def test_a_reader_that_comes_after_the_first_never_sees_a_silent_empty_stream() -> None:
    stream = Agent(model=ScriptedModel(["a"])).arun("go", stream=True)
    first = [event async for event in stream]
    assert first[-1].is_terminal
    # Read again by its reader, an ended stream yields nothing (as any exhausted iterator); its result
    # is in ``output``. Another task is refused, with a reason.
    assert [event async for event in stream] == []
    assert stream.output is not None and stream.output.content == "a"

    async def elsewhere() -> None:
        with pytest.raises(StreamBusyError, match="one reader"):
            await stream.__anext__()

    async with anyio.create_task_group() as group:
        group.start_soon(elsewhere)


async def test_a_lone_surrogate_is_stored_as_streamed(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "runs.db")
    agent = Agent(model=ScriptedModel(["a\ud83d", "b"]), storage=storage)
    stream = agent.arun("go", stream=True, run_id="surrogate-1")
    events = [event async for event in stream]
    stored = await agent.aget_run("surrogate-1")
    await storage.aclose()
    assert stream.output is not None and stored is not None
    assert stored.status is RunStatus.completed
    assert stored.content == stream.output.content == received_text(events) == events[-1].content
    assert stored.content in ("a\ud83db", "a\ufffdb")


async def test_a_model_error_after_a_graceful_stop_is_reported() -> None:
    agent = Agent(model=ScriptedModel(["a", "b"], delay=0.01, error=RuntimeError("boom"), error_at=1))
    stream = agent.arun("go", stream=True)
    async for event in stream:
        if event.event == RunEvent.run_content:
            assert agent.cancel_run(stream.run_id, "stop", mode="after_turn") is True
    out = stream.output
    assert out is not None and out.status is RunStatus.error
    assert out.error == "RuntimeError: boom" and out.content == "a"
    assert active_runs() == []


def _open_files(path: Path) -> int:
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if os.path.realpath(fd) == str(path.resolve()))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files through /proc")
def test_a_closed_store_stays_closed_after_its_runs(tmp_path: Path) -> None:
    # Seen while fuzzing the blocking API: one heartbeat interval after the last run, the bridge
    # loop's heartbeat task writes to the store again, which reopens its (closed) SQLite connection.
    storage = SqliteStorage(tmp_path / "runs.db", heartbeat_interval=0.05)
    agent = Agent(model=ScriptedModel(["x"]), storage=storage)
    assert agent.run("hi").status is RunStatus.completed
    anyio.run(storage.aclose)
    assert _open_files(tmp_path / "runs.db") == 0
    time.sleep(0.3)  # several heartbeat intervals: nothing may happen, so there is no event to wait on
    assert _open_files(tmp_path / "runs.db") == 0, "the closed store was reopened"


async def test_an_attached_reader_gets_the_end_when_the_consumer_leaves_during_tool_calls() -> None:
    # Found by the property suite (issue 13): the consumer closes the stream after two ToolCallStarted
    # events; the run's end closes the open calls (ToolCallCompleted events nobody takes) and the
    # terminal event got an index after them, which the reader's log never reached: it waited forever.
    # Now what is put once the end is decided is logged at once, with indexes in order.
    async def slow(x: int) -> str:
        await anyio.sleep(5)
        return f"slow:{x}"

    calls = [ScriptedToolCall("slow", '{"x": 0}'), ScriptedToolCall("slow", '{"x": 1}')]
    agent = Agent(model=ScriptedModel(turns=[Reply(chunks=["w0 "], tool_calls=calls)]), tools=[slow])
    stream = agent.arun("go", stream=True)
    reader = agent.aattach(stream.run_id)
    events: list[BaseRunEvent] = []
    async for event in stream:
        events.append(event)
        if len(events) == 4:  # RunStarted, w0, two ToolCallStarted
            break
    await stream.aclose()
    with anyio.fail_after(5):
        attached = [event async for event in reader]
    assert [(e.event_index, e.event) for e in attached] == [
        (0, RunEvent.run_started),
        (1, RunEvent.run_content),
        (2, RunEvent.tool_call_started),
        (3, RunEvent.tool_call_started),
        (4, RunEvent.tool_call_completed),
        (5, RunEvent.tool_call_completed),
        (6, RunEvent.run_cancelled),
    ]
    assert attached[-1].content == received_text(events) == "w0 "

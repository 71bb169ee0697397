"""Background runs and attached readers (issue 13): event indexes, many readers, resume after an index."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import anyio
import pytest

from tether import Agent, ConfigurationError, RunEvent, RunNotFoundError, RunStatus
from tether.storage import SqliteStorage
from tether.testing import ScriptedModel

pytestmark = pytest.mark.anyio

WORDS = [f"w{i} " for i in range(20)]
TEXT = "".join(WORDS)


def summary(events: list) -> list[tuple[int, str, str | None]]:
    return [(e.event_index, e.event.value, e.content) for e in events]


def text_of(events: list) -> str:
    return "".join(e.content or "" for e in events if e.event == RunEvent.run_content)


async def read(agent: Agent, run_id: str, after: int | None = None) -> list:
    return [event async for event in agent.aattach(run_id, after=after)]


async def test_a_background_run_returns_at_once_and_runs_with_no_consumer() -> None:
    agent = Agent(name="bg", model=ScriptedModel(WORDS, delay=0.01))
    out = await agent.arun("go", background=True, run_id="bg-1")
    assert (out.run_id, out.status, out.content) == ("bg-1", RunStatus.pending, "")
    events = await read(agent, "bg-1")
    assert [e.event_index for e in events] == list(range(len(WORDS) + 2))
    assert [e.event for e in events] == [
        RunEvent.run_started,
        *[RunEvent.run_content] * len(WORDS),
        RunEvent.run_completed,
    ]
    assert text_of(events) == events[-1].content == TEXT


async def test_two_and_ten_readers_read_the_same_events() -> None:
    agent = Agent(name="many", model=ScriptedModel(WORDS, delay=0.005))
    for readers in (2, 10):
        out = await agent.arun("go", background=True)
        results = await asyncio.gather(*(read(agent, out.run_id) for _ in range(readers)))
        first = summary(results[0])
        assert [summary(r) for r in results] == [first] * readers
        assert first[-1] == (len(WORDS) + 1, "RunCompleted", TEXT)


async def test_resume_mid_run_gets_exactly_the_rest() -> None:
    agent = Agent(name="mid", model=ScriptedModel(WORDS, delay=0.01))
    out = await agent.arun("go", background=True)
    first: list = []
    async for event in agent.aattach(out.run_id):  # a client that reloads after five events
        first.append(event)
        if len(first) == 5:
            break
    rest = await read(agent, out.run_id, after=first[-1].event_index)
    both = first + rest
    assert [e.event_index for e in both] == list(range(len(WORDS) + 2))
    assert text_of(both) == both[-1].content == TEXT


async def test_a_reader_older_than_the_buffer_gets_the_missed_text_at_once() -> None:
    agent = Agent(name="small", model=ScriptedModel(WORDS, delay=0.01), event_buffer=4)
    out = await agent.arun("go", background=True)
    await agent.aattach(out.run_id, after=9).next_batch()  # event 10 is out: 0 to 6 are gone
    events = await read(agent, out.run_id)
    catch_up = events[0]
    assert catch_up.event == RunEvent.run_content and catch_up.event_index >= 6
    assert catch_up.content == "".join(WORDS[: catch_up.event_index])
    assert [e.event_index for e in events] == list(range(catch_up.event_index, len(WORDS) + 2))
    assert text_of(events) == events[-1].content == TEXT


async def test_a_reader_that_leaves_never_cancels_the_run() -> None:
    agent = Agent(name="leave", model=ScriptedModel(WORDS, delay=0.005))
    out = await agent.arun("go", background=True)
    async for _ in agent.aattach(out.run_id):
        break
    reader = agent.aattach(out.run_id)
    await reader.aclose()
    assert [e async for e in reader] == []
    events = await read(agent, out.run_id)
    assert (events[-1].event, events[-1].content) == (RunEvent.run_completed, TEXT)


async def test_a_background_run_cancelled_while_nobody_reads_is_stored(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "runs.db")
    agent = Agent(name="stop", model=ScriptedModel(WORDS, delay=0.02), storage=storage)
    out = await agent.arun("go", background=True, run_id="stop-1")
    await anyio.sleep(0.1)
    assert await agent.acancel_run("stop-1", "enough") is True
    events = await read(agent, "stop-1")  # replayed: the run has ended meanwhile, or read live
    terminal = events[-1]
    assert (terminal.event, terminal.reason, terminal.source) == (RunEvent.run_cancelled, "enough", "user")
    assert text_of(events) == terminal.content and TEXT.startswith(terminal.content)
    assert [e.event_index for e in events] == list(range(len(events)))
    stored = await agent.aget_run(out.run_id)
    assert stored is not None and (stored.status, stored.content) == (RunStatus.cancelled, terminal.content)
    later = await read(agent, "stop-1", after=2)  # long after its end: from storage
    assert summary(later) == summary(events[3:])
    await storage.aclose()


async def test_a_consumer_and_an_attached_reader_see_the_same_indexes() -> None:
    agent = Agent(name="pair", model=ScriptedModel(WORDS, delay=0.005))
    stream = agent.arun("go", stream=True)
    side = asyncio.ensure_future(read(agent, stream.run_id))
    received = [event async for event in stream]
    assert summary(await side) == summary(received)
    assert [e.event_index for e in received] == list(range(len(WORDS) + 2))


async def test_an_outer_cancel_keeps_the_readers_in_step() -> None:
    agent = Agent(name="outer", model=ScriptedModel(WORDS, delay=0.01))
    stream = agent.arun("go", stream=True)
    side = asyncio.ensure_future(read(agent, stream.run_id))
    received: list = []
    with anyio.move_on_after(0.07):
        async for event in stream:
            received.append(event)
    events = await side
    assert summary(events[:-1]) == summary(received)
    assert events[-1].event == RunEvent.run_cancelled and events[-1].content == text_of(received)
    assert stream.output is not None and stream.output.content == text_of(received)


async def test_a_reader_in_another_thread_and_loop() -> None:
    agent = Agent(name="thread", model=ScriptedModel(WORDS, delay=0.005))
    out = await agent.arun("go", background=True)
    got: list = []
    reader = threading.Thread(target=lambda: got.extend(anyio.run(read, agent, out.run_id)))
    reader.start()
    await anyio.to_thread.run_sync(reader.join)
    assert [e.event_index for e in got] == list(range(len(WORDS) + 2)) and got[-1].content == TEXT


def test_the_blocking_api() -> None:
    agent = Agent(name="sync", model=ScriptedModel(WORDS, delay=0.005))
    out = agent.run("go", background=True, run_id="sync-1")
    assert (out.run_id, out.status) == ("sync-1", RunStatus.pending)
    attached = agent.attach("sync-1")
    events = list(attached)
    assert [e.event_index for e in events] == list(range(len(WORDS) + 2))
    assert attached.last_event_index == len(WORDS) + 1 and events[-1].content == TEXT
    stream = agent.run("go", stream=True)
    first = next(iter(stream))
    rest: list = []
    # The run keeps pace with its consumer: the attached reader follows it, in a thread of its own.
    follower = threading.Thread(target=lambda: rest.extend(agent.attach(stream.run_id, after=0)))
    follower.start()
    second = next(stream)
    stream.close()  # the consumer stops: the run is cancelled, the attached reader gets its end
    follower.join(5)
    assert (first.event_index, second.event_index) == (0, 1)
    assert summary(rest) == [(1, "RunContent", "w0 "), (2, "RunCancelled", "w0 ")]
    assert rest[-1].source == "consumer"


async def test_unknown_runs_and_bad_arguments() -> None:
    agent = Agent(name="known", model=ScriptedModel(WORDS, delay=0.01))
    with pytest.raises(RunNotFoundError, match="agent 'known' has no run 'nope', live or stored"):
        await read(agent, "nope")
    out = await agent.arun("go", background=True)
    other = Agent(name="other", model=ScriptedModel())
    with pytest.raises(RunNotFoundError, match=f"agent 'other' has no run '{out.run_id}'"):
        await read(other, out.run_id)
    with pytest.raises(ConfigurationError, match="after must be an event index >= -1, or None"):
        agent.aattach(out.run_id, after=-2)
    with pytest.raises(ConfigurationError, match="background=True returns at once"):
        agent.arun("go", stream=True, background=True)  # type: ignore[call-overload]
    with pytest.raises(ConfigurationError, match="event_buffer must be a positive integer"):
        Agent(model=ScriptedModel(), event_buffer=0)
    assert await agent.acancel_run(out.run_id) is True
    await read(agent, out.run_id)

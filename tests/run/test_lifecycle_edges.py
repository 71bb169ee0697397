"""The run lifecycle at its edges (issue 12 items 1-3, 13; issue 18 item 4).

What the consumer received is what is kept; a KeyboardInterrupt in a run reaches the caller and kills
nothing; one reader at a time; an error after a graceful stop is reported; and "after the current
turn" means the turn the consumer is reading.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import anyio
import pytest

from tether import (
    Agent,
    Message,
    RunEvent,
    RunStatus,
    StreamBusyError,
    active_runs,
)
from tether.models.base import ModelDelta, ModelTurnEnd, ToolSpec
from tether.storage import SqliteStorage
from tether.testing import Reply, ScriptedModel, ScriptedToolCall

pytestmark = pytest.mark.anyio

WORDS = [f"w{k} " for k in range(5)]


def content_of(events: Sequence[object]) -> str:
    return "".join(e.content for e in events if e.event == RunEvent.run_content)  # type: ignore[attr-defined]


class CancelsItsReader:
    """Cancels its reader while the reader waits, then yields a chunk before the reader runs again."""

    id = "cancels-reader"

    def __init__(self) -> None:
        self.reader: anyio.CancelScope | None = None

    def stream(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[ModelDelta]:
        return self._stream()

    async def _stream(self) -> AsyncIterator[ModelDelta]:
        yield "w0 "
        await anyio.sleep(0.05)  # the reader takes "w0 " and waits for more
        assert self.reader is not None
        self.reader.cancel()  # its task is cancelled while it waits...
        yield "w1 "  # ...and this chunk is put before it runs again: it never receives it
        await anyio.sleep(10)
        yield ModelTurnEnd(finish_reason="stop")


async def test_an_outer_cancel_keeps_exactly_what_the_consumer_received(tmp_path: Path) -> None:
    model = CancelsItsReader()
    storage = SqliteStorage(tmp_path / "runs.db")
    agent = Agent(name="a", model=model, storage=storage)
    stream = agent.arun("go", stream=True, run_id="outer-1")
    events = []
    with anyio.CancelScope() as scope:
        model.reader = scope
        async for event in stream:
            events.append(event)
    assert scope.cancelled_caught
    assert content_of(events) == "w0 "
    output = stream.output
    assert output is not None
    assert (output.status, output.cancel_source, output.content) == (RunStatus.cancelled, "outer", "w0 ")
    assert output.messages[-1] == Message(role="assistant", content="w0 ", interrupted=True)
    stored = await agent.aget_run("outer-1")
    assert stored is not None and stored.content == "w0 " and stored.messages == output.messages
    await storage.aclose()


async def test_the_issues_outer_cancel_input_is_exact_in_every_run() -> None:
    """Issue 12 item 1's input, 200 times at once: received == terminal == output, whatever the timing."""

    async def one() -> tuple[str, str, RunStatus]:
        stream = Agent(model=ScriptedModel(WORDS, delay=0.02)).arun("go", stream=True)
        received = []
        with anyio.move_on_after(0.05):
            async for event in stream:
                received.append(event)
        assert stream.output is not None
        return content_of(received), stream.output.content, stream.output.status

    results: list[tuple[str, str, RunStatus]] = []

    async def record() -> None:
        results.append(await one())

    async with anyio.create_task_group() as group:
        for _ in range(200):
            group.start_soon(record)
    assert len(results) == 200
    assert all(received == kept for received, kept, _ in results), [r for r in results if r[0] != r[1]]
    assert {status for _, _, status in results} == {RunStatus.cancelled}


async def test_a_consumer_that_breaks_keeps_what_it_read_even_when_the_run_is_ahead() -> None:
    agent = Agent(model=ScriptedModel([f"c{k} " for k in range(50)]))  # no delay: the run runs ahead
    stream = agent.arun("go", stream=True)
    received = []
    async for event in stream:
        received.append(event)
        if len(received) == 4:  # RunStarted + 3 chunks
            break
    await stream.aclose()
    assert stream.output is not None
    assert stream.output.content == content_of(received) == "c0 c1 c2 "
    assert (stream.output.status, stream.output.cancel_source) == (RunStatus.cancelled, "consumer")


async def test_a_user_cancel_while_the_consumer_lags_drops_what_it_has_not_read() -> None:
    agent = Agent(model=ScriptedModel([f"c{k} " for k in range(50)]))
    stream = agent.arun("go", stream=True)
    received = []
    async for event in stream:
        received.append(event)
        if len(received) == 3:
            await anyio.sleep(0.05)  # the run queues the rest meanwhile
            assert agent.cancel_run(stream.run_id, reason="stop") is True
            await anyio.sleep(0.01)  # the run handles the stop before we read on
    terminal = received[-1]
    assert len(received) == 4
    assert terminal.event == RunEvent.run_cancelled
    assert terminal.content == content_of(received) == "c0 c1 "
    assert stream.output is not None and stream.output.content == "c0 c1 "


# -- KeyboardInterrupt / SystemExit inside a run (item 2) -------------------------------------------


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_a_keyboard_interrupt_inside_a_run_reaches_the_caller_and_the_blocking_api_lives_on(
    tmp_path: Path, exc_type: type[BaseException]
) -> None:
    storage = SqliteStorage(tmp_path / "runs.db")
    agent = Agent(name="k", model=ScriptedModel(["x"], error=exc_type("boom"), error_at=0), storage=storage)
    with pytest.raises(exc_type):
        agent.run("hi", run_id="ki-1")
    stored = agent.get_run("ki-1")
    assert stored is not None
    assert (stored.status, stored.error_type, stored.error) == (
        RunStatus.error,
        exc_type.__name__,
        f"{exc_type.__name__}: boom",
    )
    assert Agent(model=ScriptedModel(["ok"])).run("hi").content == "ok"
    with pytest.raises(exc_type):  # the streaming iterator too, after the terminal event
        events = []
        for event in agent.run("hi", stream=True):
            events.append(event)
    assert [e.event for e in events] == [RunEvent.run_started, RunEvent.run_error]
    assert Agent(model=ScriptedModel(["ok"])).run("again").content == "ok"
    assert active_runs() == []


async def test_a_keyboard_interrupt_in_a_tool_ends_the_run_and_reaches_the_async_caller() -> None:
    def sync_tool() -> str:
        raise KeyboardInterrupt

    async def async_tool() -> str:
        raise SystemExit(3)

    for tool, exc_type in ((sync_tool, KeyboardInterrupt), (async_tool, SystemExit)):
        model = ScriptedModel(turns=[Reply(chunks=["a "], tool_calls=[ScriptedToolCall(tool.__name__)])])
        agent = Agent(model=model, tools=[tool])
        stream = agent.arun("go", stream=True)
        events = []
        with pytest.raises(exc_type):
            async for event in stream:
                events.append(event)
        assert events[-1].event == RunEvent.run_error
        assert stream.output is not None and stream.output.error_type == exc_type.__name__
    assert (await Agent(model=ScriptedModel(["fine"])).arun("x")).content == "fine"


# -- one reader at a time (item 3) ------------------------------------------------------------------


async def test_a_second_reader_fails_at_once_and_the_first_goes_on() -> None:
    agent = Agent(model=ScriptedModel(WORDS, delay=0.02))
    stream = agent.arun("go", stream=True)
    received: list[object] = []
    first_read = anyio.Event()

    async def read() -> None:
        async for event in stream:
            received.append(event)
            first_read.set()

    async with anyio.create_task_group() as group:
        group.start_soon(read)
        await first_read.wait()  # the reading task is the stream's reader from here on
        with anyio.fail_after(1), pytest.raises(StreamBusyError, match="one reader"):
            await stream.__anext__()
    assert content_of(received) == "".join(WORDS)
    assert stream.output is not None and stream.output.status is RunStatus.completed


async def test_reading_a_stream_from_another_event_loop_is_a_clear_error() -> None:
    stream = Agent(model=ScriptedModel(WORDS, stall=5)).arun("go", stream=True)
    await stream.__anext__()  # RunStarted; nothing else is ready for a while
    errors: list[BaseException] = []

    def elsewhere() -> None:
        try:
            asyncio.run(stream.__anext__())  # type: ignore[arg-type]
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=elsewhere)
    thread.start()
    await anyio.to_thread.run_sync(thread.join, 5)
    assert len(errors) == 1 and isinstance(errors[0], StreamBusyError)
    await stream.aclose()


# -- an error after a graceful stop is reported (item 13) -------------------------------------------


async def test_an_error_after_an_after_turn_request_is_reported() -> None:
    model = ScriptedModel(WORDS, delay=0.01, error=RuntimeError("upstream died"), error_at=3)
    agent = Agent(model=model)
    stream = agent.arun("go", stream=True)
    events = []
    async for event in stream:
        events.append(event)
        if event.event == RunEvent.run_content and event.content == "w0 ":
            assert agent.cancel_run(stream.run_id, mode="after_turn") is True
    terminal = events[-1]
    assert terminal.event == RunEvent.run_error
    assert terminal.error == "RuntimeError: upstream died"  # type: ignore[attr-defined]
    assert terminal.content == "w0 w1 w2 "
    assert stream.output is not None and stream.output.status is RunStatus.error


# -- "after the current turn" is the turn the consumer reads (issue 18 item 4) -----------------------


def three_turns() -> ScriptedModel:
    return ScriptedModel(
        turns=[
            Reply(chunks=["t1 "], tool_calls=[ScriptedToolCall("note", '{"n": 1}', id="c1")]),
            Reply(chunks=["t2 "], tool_calls=[ScriptedToolCall("note", '{"n": 2}', id="c2")]),
            Reply(chunks=["t3"]),
        ]
    )


async def note(n: int) -> str:
    return f"noted {n}"


async def test_after_turn_from_a_consumer_still_reading_turn_one_stops_before_turn_two() -> None:
    for _ in range(20):
        model = three_turns()
        agent = Agent(model=model, tools=[note])
        stream = agent.arun("go", stream=True)
        async for event in stream:
            if event.event == RunEvent.tool_call_completed:  # the last event of turn 1
                await anyio.sleep(0.05)  # the consumer's own work on it
                assert agent.cancel_run(stream.run_id, mode="after_turn") is True
        assert len(model.calls) == 1, "the second model request was never sent"
        assert stream.output is not None and stream.output.status is RunStatus.cancelled
        assert stream.output.content == "t1 "
        assert [m.role for m in stream.output.messages] == ["user", "assistant", "tool"]


async def test_after_turn_once_the_consumer_reads_turn_two_lets_turn_two_finish() -> None:
    model = three_turns()
    agent = Agent(model=model, tools=[note])
    stream = agent.arun("go", stream=True)
    kinds = []
    async for event in stream:
        kinds.append(event.event)
        if event.event == RunEvent.run_content and event.content == "t2 ":
            assert agent.cancel_run(stream.run_id, mode="after_turn") is True
    assert len(model.calls) == 2, "turn 2 (its response and its tool call) finished; no third request"
    assert kinds.count(RunEvent.tool_call_completed) == 2
    assert stream.output is not None and stream.output.content == "t1 t2 "
    assert stream.output.status is RunStatus.cancelled


STORAGE_RAISES = """
import asyncio, sys, tempfile, os
from tether import Agent
from tether.storage import SqliteStorage
from tether.testing import ScriptedModel

where = sys.argv[1]

class Raising(SqliteStorage):
    async def start_run(self, output, owner):
        if where == "start_run":
            raise KeyboardInterrupt
        await super().start_run(output, owner)

    async def finish_run(self, output):
        if where == "finish_run":
            raise KeyboardInterrupt
        await super().finish_run(output)

async def main():
    storage = Raising(os.path.join(tempfile.mkdtemp(), "k.db"))
    agent = Agent(model=ScriptedModel(["a ", "b "]), storage=storage)
    events = []
    try:
        async for event in agent.arun("x", stream=True):
            events.append(event.event.value)
    except BaseException as exc:
        events.append(type(exc).__name__)
    print(events, flush=True)
    await storage.aclose()

try:
    asyncio.run(main())
    print("loop lived", flush=True)
except BaseException as exc:
    print("asyncio.run raised", type(exc).__name__, flush=True)
"""


@pytest.mark.parametrize("where", ["start_run", "finish_run"])
def test_a_keyboard_interrupt_from_storage_ends_the_run_with_a_terminal_event_not_the_loop(
    where: str,
) -> None:
    command = [sys.executable, "-c", STORAGE_RAISES, where]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    lines = done.stdout.splitlines()
    assert lines[-1] == "loop lived", done.stdout + done.stderr[-2000:]
    assert "CancelledError" not in lines[0]

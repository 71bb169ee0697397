"""One conformance suite for every Storage backend (SQLite and PostgreSQL, via the ``storage`` fixture)."""

from __future__ import annotations

import random
import time

import anyio
import pytest

from tether import Message, RunMetrics, RunOutput, RunStatus, StorageError, ToolCall, ToolCallFunction
from tether.storage import Storage
from tether.storage._base import CRASHED_ERROR, CRASHED_TYPE, owner_id

from .conftest import writes_locked

pytestmark = pytest.mark.anyio


def output(run_id: str, **changes: object) -> RunOutput:
    base = RunOutput(
        run_id=run_id,
        agent_id="agent-a",
        agent_name="Agent A",
        session_id="s-1",
        model="m",
        status=RunStatus.running,
        messages=[Message(role="system", content="Be brief."), Message(role="user", content="Hi ✓ 日本")],
        created_at=1_700_000_000,
    )
    return base.model_copy(update=changes)


def finished(run_id: str, **changes: object) -> RunOutput:
    call = ToolCall(id="call_1", function=ToolCallFunction(name="lookup", arguments='{"q": "x"}'))
    values: dict[str, object] = {
        "status": RunStatus.cancelled,
        "content": "Partial ✓ answer",
        "messages": [
            Message(role="user", content="Hi", from_history=True),
            Message(role="assistant", content=None, tool_calls=[call]),
            Message(role="tool", content="Cancelled: stop", tool_call_id="call_1"),
            Message(role="assistant", content="Partial ✓ answer", interrupted=True),
        ],
        "cancel_reason": "stop",
        "cancel_source": "user",
        "metrics": RunMetrics(
            duration=1.25, time_to_first_token=0.1, input_tokens=3, output_tokens=4, total_tokens=7
        ),
    }
    return output(run_id, **{**values, **changes})


async def test_open_is_idempotent_and_an_unknown_run_is_none(storage: Storage) -> None:
    await storage.open()
    await storage.open()
    assert await storage.get_run("nope") is None
    assert await storage.list_runs() == []


async def test_start_then_finish_round_trips_exactly(storage: Storage) -> None:
    started = output("r1")
    await storage.start_run(started, owner="owner-1")
    assert await storage.get_run("r1") == started
    done = finished("r1")
    await storage.finish_run(done)
    assert await storage.get_run("r1") == done
    assert (await storage.list_runs()) == [done]


async def test_finish_without_start_is_written(storage: Storage) -> None:
    done = finished("r2", status=RunStatus.error, error="boom", error_type="ModelError", cancel_reason=None)
    await storage.finish_run(done)
    assert await storage.get_run("r2") == done


async def test_list_filters_and_order(storage: Storage) -> None:
    for index, (agent, session, status) in enumerate(
        [
            ("a", "s1", RunStatus.completed),
            ("b", "s1", RunStatus.cancelled),
            ("a", "s2", RunStatus.error),
            ("a", "s1", RunStatus.completed),
        ]
    ):
        await storage.start_run(output(f"run-{index}", agent_id=agent, session_id=session), owner="o")
        await storage.finish_run(output(f"run-{index}", agent_id=agent, session_id=session, status=status))
    ids = lambda runs: [r.run_id for r in runs]  # noqa: E731
    assert ids(await storage.list_runs()) == ["run-0", "run-1", "run-2", "run-3"]
    assert ids(await storage.list_runs(session_id="s1")) == ["run-0", "run-1", "run-3"]
    assert ids(await storage.list_runs(agent_id="a", session_id="s1")) == ["run-0", "run-3"]
    assert ids(await storage.list_runs(status=RunStatus.completed)) == ["run-0", "run-3"]
    assert ids(await storage.list_runs(limit=2)) == ["run-2", "run-3"], "the newest two, oldest first"
    assert ids(await storage.list_runs(agent_id="zzz")) == []


async def test_restarting_a_run_keeps_its_place_in_the_order(storage: Storage) -> None:
    await storage.start_run(output("first"), owner="o")
    await storage.start_run(output("second"), owner="o")
    await storage.finish_run(finished("first"))
    assert [r.run_id for r in await storage.list_runs()] == ["first", "second"]


async def test_reap_marks_runs_of_stale_owners_as_error_only(storage: Storage) -> None:
    await storage.start_run(output("orphan"), owner="dead-owner")
    await storage.start_run(output("done"), owner="dead-owner")
    await storage.finish_run(finished("done"))
    await anyio.sleep(0.3)
    await storage.start_run(output("alive"), owner="live-owner")
    assert await storage.reap(stale_after=30) == []
    assert await storage.reap(stale_after=0.2) == ["orphan"]
    orphan = await storage.get_run("orphan")
    assert orphan is not None
    assert (orphan.status, orphan.error, orphan.error_type) == (RunStatus.error, CRASHED_ERROR, CRASHED_TYPE)
    assert orphan.messages == output("orphan").messages
    alive = await storage.get_run("alive")
    assert alive is not None and alive.status is RunStatus.running
    assert (await storage.get_run("done")) == finished("done")
    assert await storage.reap(stale_after=0.2) == []


async def test_heartbeat_keeps_an_owner_alive(storage: Storage) -> None:
    await storage.start_run(output("kept"), owner="beating")
    await anyio.sleep(0.3)
    await storage.heartbeat("beating")
    assert await storage.reap(stale_after=0.2) == []


async def test_many_concurrent_writes_all_land(storage: Storage) -> None:
    async def one(index: int) -> None:
        await storage.start_run(output(f"c-{index}", session_id="busy"), owner="o")
        await storage.finish_run(finished(f"c-{index}", session_id="busy", content=f"answer {index}"))

    async with anyio.create_task_group() as group:
        for index in range(50):
            group.start_soon(one, index)
    runs = await storage.list_runs(session_id="busy")
    assert sorted(r.content for r in runs) == sorted(f"answer {i}" for i in range(50))
    assert {r.status for r in runs} == {RunStatus.cancelled}


async def test_close_then_use_again(storage: Storage) -> None:
    await storage.finish_run(finished("before"))
    await storage.aclose()
    assert (await storage.get_run("before")) == finished("before")


# -- faults: a locked store, cancellation, closing ----------------------------------------------

WRITES = {
    "start_run": lambda store: store.start_run(output("locked"), owner="o"),
    "finish_run": lambda store: store.finish_run(finished("locked")),
    "heartbeat": lambda store: store.heartbeat("o"),
    "reap": lambda store: store.reap(stale_after=0),
}


@pytest.mark.parametrize("operation", sorted(WRITES))
async def test_a_write_to_a_locked_store_is_abandoned_at_once_and_the_store_works_after(
    storage: Storage, operation: str
) -> None:
    await storage.start_run(output("before"), owner="o")
    async with writes_locked(storage):
        started = time.monotonic()
        with anyio.move_on_after(0.2) as scope:
            await WRITES[operation](storage)
        assert scope.cancelled_caught
        assert time.monotonic() - started < 1
    await storage.finish_run(finished("after"))
    assert await storage.get_run("after") == finished("after")
    assert await storage.get_run("before") == output("before")


async def test_many_abandoned_operations_leave_the_store_usable(storage: Storage) -> None:
    async with writes_locked(storage):
        started = time.monotonic()
        with anyio.move_on_after(0.2) as scope:  # more than a pool's connections, all at once
            async with anyio.create_task_group() as group:
                for index in range(15):
                    group.start_soon(storage.start_run, output(f"abandoned-{index}"), "o")
        assert scope.cancelled_caught
        assert time.monotonic() - started < 1
    with anyio.fail_after(10):
        await storage.finish_run(finished("after"))
        assert await storage.get_run("after") == finished("after")


async def test_an_abandoned_write_never_lands_after_a_later_write_of_the_same_run(storage: Storage) -> None:
    async with anyio.create_task_group() as group, writes_locked(storage):
        with anyio.move_on_after(0.2):
            await storage.start_run(output("r1"), owner="o")  # abandoned while it waits for the lock
        group.start_soon(storage.finish_run, finished("r1"))  # made later: waits for the lock too
        await anyio.sleep(0.2)  # lets the final write queue up behind the lock (either way it must win)
    await storage.heartbeat("o")  # anything still queued in the store has run by now
    assert await storage.get_run("r1") == finished("r1")


async def test_aclose_never_blocks_the_event_loop_and_the_store_reopens(storage: Storage) -> None:
    await storage.start_run(output("r1"), owner="o")
    longest = 0.0
    closed = anyio.Event()

    async def tick() -> None:
        nonlocal longest
        last = time.monotonic()
        while not closed.is_set():
            await anyio.sleep(0.01)
            now = time.monotonic()
            longest, last = max(longest, now - last), now

    async with writes_locked(storage), anyio.create_task_group() as group:
        group.start_soon(tick)
        with anyio.move_on_after(0.2):
            await storage.finish_run(finished("r1"))  # abandoned: the store is busy with it
        started = time.monotonic()
        await storage.aclose()
        assert time.monotonic() - started < 6  # CLOSE_TIMEOUT (5 s) at most
        closed.set()
    assert longest < 0.5, f"the event loop stalled for {longest:.2f} s"
    assert await storage.get_run("r1") == output("r1")


# -- text: every valid Unicode string round-trips; a lone surrogate is refused -------------------

TEXTS = [
    "emoji 😀👩‍👩‍👧 and flags 🇫🇷",
    "line\u2028separators\u2029and\x85next line\r\n\v\f",
    "quotes \"'` backslash \\ \\u0000 \\n literal escapes",
    "bidi \u202eRTL\u202c, bom \ufeff, zero width \u200b, combining e\u0301",
    "planes \U0001f600 \U00010000 \U0010ffff \ue000 \uffff \x01\x1f\x7f",
    "",
]


def every_text_column(text: str, index: int) -> RunOutput:
    call = ToolCall(
        id=f"id {text}", function=ToolCallFunction(name=f"f {text}", arguments=f'{{"q": "{text}"}}')
    )
    return finished(
        f"run {index} {text}",
        agent_id=f"agent {text}",
        agent_name=text,
        session_id=f"session {text}",
        user_id=text,
        parent_run_id=text,
        model=text,
        content=text,
        messages=[
            Message(role="user", content=text, name=text or None),
            Message(role="assistant", content=text, tool_calls=[call], interrupted=True),
            Message(role="tool", content=text, tool_call_id=f"id {text}"),
        ],
        cancel_reason=text,
        error=text,
        error_type=text,
    )


async def test_every_valid_unicode_text_round_trips_in_every_column(storage: Storage) -> None:
    written = [every_text_column(text, index) for index, text in enumerate(TEXTS)]
    for run in written:
        await storage.start_run(run.model_copy(update={"status": RunStatus.running}), owner="o")
        await storage.finish_run(run)
        assert await storage.get_run(run.run_id) == run
    assert await storage.list_runs(status=RunStatus.cancelled) == written


async def test_nul_in_free_text_round_trips(storage: Storage) -> None:
    text = "NUL \x00 and look-alikes of an escape \x01\x02 \x01\x00\x01 \\u0000"
    call = ToolCall(id="c1", function=ToolCallFunction(name="f", arguments=f'{{"q": "{text}"}}'))
    written = finished(
        "nul",
        agent_name=text,
        model=text,
        content=text,
        messages=[Message(role="user", content=text), Message(role="assistant", tool_calls=[call])],
        cancel_reason=text,
        error=text,
        error_type=text,
    )
    await storage.finish_run(written)
    assert await storage.get_run("nul") == written
    assert await storage.list_runs() == [written]


async def test_random_text_from_all_of_unicode_round_trips(storage: Storage) -> None:
    chooser = random.Random(12)
    planes = [(0x01, 0xD7FF), (0xE000, 0xFFFF), (0x10000, 0x3FFFF), (0xE0000, 0x10FFFF)]

    def text() -> str:
        return "".join(chr(chooser.randint(*chooser.choice(planes))) for _ in range(chooser.randint(0, 40)))

    runs = [
        finished(f"random-{n}", content=text(), messages=[Message(role="user", content=text())])
        for n in range(40)
    ]
    for run in runs:
        await storage.finish_run(run)
    assert await storage.list_runs() == runs


LONE = "half an emoji \ud83d"


@pytest.mark.parametrize(
    ("column", "changes"),
    [
        ("content", {"content": LONE}),
        ("error", {"error": LONE}),
        ("agent_name", {"agent_name": LONE}),
        ("messages", {"messages": [Message(role="assistant", content=LONE)]}),
        ("messages", {"messages": [Message(role="tool", content="x", tool_call_id="\udc00")]}),
    ],
)
async def test_a_lone_surrogate_is_a_storage_error_naming_the_run_and_nothing_is_written(
    storage: Storage, column: str, changes: dict[str, object]
) -> None:
    await storage.start_run(output("r1"), owner="o")
    for write in (
        storage.finish_run(finished("r1", **changes)),
        storage.start_run(output("r2", **changes), "o"),
    ):
        with pytest.raises(
            StorageError, match=rf"run '(r1|r2)' cannot be stored: its {column} holds a lone surrogate"
        ):
            await write
    assert await storage.get_run("r1") == output("r1")
    assert await storage.get_run("r2") is None
    await storage.finish_run(finished("r1"))
    assert await storage.get_run("r1") == finished("r1")


# -- the final write: idempotent, and never undone by a reap ---------------------------------------


async def test_finish_run_is_idempotent_and_safe_concurrently_with_reap(storage: Storage) -> None:
    for index in range(10):
        await storage.start_run(output(f"r{index}"), owner="dead-owner")
    await anyio.sleep(0.1)
    async with anyio.create_task_group() as group:
        for index in range(10):
            for _ in range(3):
                group.start_soon(storage.finish_run, finished(f"r{index}", content=f"final {index}"))
                group.start_soon(storage.reap, 0.05)
    runs = await storage.list_runs()
    assert runs == [finished(f"r{index}", content=f"final {index}") for index in range(10)]
    assert await storage.reap(stale_after=0) == []
    await storage.finish_run(finished("r0", content="final 0"))  # once more: still the same row
    assert await storage.list_runs() == runs


async def test_a_reaped_run_is_repaired_by_its_final_write(storage: Storage) -> None:
    await storage.start_run(output("late"), owner="dead-owner")
    await anyio.sleep(0.1)
    assert await storage.reap(stale_after=0.05) == ["late"]
    await storage.finish_run(finished("late"))
    assert await storage.get_run("late") == finished("late")


async def test_reap_never_marks_a_run_of_this_live_process(storage: Storage) -> None:
    await storage.start_run(output("mine"), owner=owner_id())
    await storage.start_run(output("theirs"), owner="dead-owner")
    await anyio.sleep(0.3)  # both heartbeats are older than the stale_after below
    assert await storage.reap(stale_after=0.2) == ["theirs"]
    assert await storage.reap(stale_after=0) == []
    mine = await storage.get_run("mine")
    assert mine == output("mine")

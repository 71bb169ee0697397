"""One conformance suite for every Storage backend (SQLite and PostgreSQL, via the ``storage`` fixture)."""

from __future__ import annotations

import anyio
import pytest

from tether import Message, RunMetrics, RunOutput, RunStatus, ToolCall, ToolCallFunction
from tether.storage import Storage
from tether.storage._base import CRASHED_ERROR, CRASHED_TYPE

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

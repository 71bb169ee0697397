"""Contract point 11: the sync bridge (agent.run) from any thread, and repeated asyncio.run()."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tether import Agent, RunEvent, RunStatus, active_runs
from tether.models.openai import OpenAIChat
from tether.testing import LoopbackServer, Reply, ScriptedModel

STORY = [f"dragon{i} " for i in range(300)]


def test_seed_scenario_stream_in_one_thread_cancel_from_another(loopback_server: LoopbackServer) -> None:
    loopback_server.default = Reply(chunks=STORY, pace=0.01)
    agent = Agent(
        name="StorytellerAgent", model=OpenAIChat(id="gpt-5-mini", base_url=loopback_server.base_url)
    )
    box: dict[str, object] = {}
    pieces: list[str] = []

    def long_running_task() -> None:
        for chunk in agent.run("Write a very long story", stream=True):
            box.setdefault("run_id", chunk.run_id)
            if chunk.event == RunEvent.run_content:
                pieces.append(chunk.content or "")
            elif chunk.event == RunEvent.run_cancelled:
                box["cancelled"] = chunk

    def cancel_after_delay() -> None:
        time.sleep(0.3)
        box["accepted"] = agent.cancel_run(str(box["run_id"]))

    threads = [threading.Thread(target=long_running_task), threading.Thread(target=cancel_after_delay)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert box["accepted"] is True
    cancelled = box["cancelled"]
    assert cancelled.status is RunStatus.cancelled and cancelled.source == "user"  # type: ignore[attr-defined]
    assert cancelled.content == "".join(pieces) and 0 < len(pieces) < len(STORY)  # type: ignore[attr-defined]
    assert loopback_server.wait_until(lambda s: len(s.disconnects) == 1, timeout=2)


def test_run_from_many_threads_at_once(loopback_server: LoopbackServer) -> None:
    loopback_server.default = Reply(chunks=["a", "b", "c"], pace=0.005)
    agent = Agent(name="a", model=OpenAIChat(id="x", base_url=loopback_server.base_url))
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda i: agent.run(f"q{i}", run_id=f"thread-run-{i}"), range(24)))
    assert [(o.run_id, o.status, o.content) for o in outs] == [
        (f"thread-run-{i}", RunStatus.completed, "abc") for i in range(24)
    ]


def test_run_from_a_thread_that_already_runs_an_event_loop() -> None:
    agent = Agent(name="a", model=ScriptedModel(["in", " jupyter"]))

    async def notebook_cell() -> str:
        return agent.run("hi").content  # a blocking call inside a running loop, as in Jupyter

    assert asyncio.run(notebook_cell()) == "in jupyter"


def test_asyncio_run_several_times_with_one_agent(loopback_server: LoopbackServer) -> None:
    loopback_server.default = Reply(chunks=["same", " agent"])
    agent = Agent(name="a", model=OpenAIChat(id="x", base_url=loopback_server.base_url))
    for _ in range(3):
        assert asyncio.run(agent.arun("hi")).content == "same agent"
    gc.collect()  # an unclosed client socket would warn here (warnings are errors)
    assert loopback_server.wait_until(lambda s: s.open_connections == 0, timeout=2)


def test_sync_iterator_closed_or_dropped_cancels_the_run() -> None:
    agent = Agent(name="a", model=ScriptedModel(STORY, delay=0.01))
    with agent.run("go", stream=True) as events:
        for event in events:
            if event.event == RunEvent.run_content:
                break
    assert events.output is not None and events.output.status is RunStatus.cancelled
    assert events.output.cancel_source == "consumer"

    dropped = agent.run("go", stream=True, run_id="dropped-run")
    next(dropped)
    del dropped
    gc.collect()
    deadline = time.monotonic() + 2
    while active_runs() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert active_runs() == []


def test_blocking_call_from_the_bridge_thread_is_a_clear_error() -> None:
    from tether import ConfigurationError
    from tether._background_loop import background_loop as bridge

    agent = Agent(name="a", model=ScriptedModel(["x"]))

    async def inside_bridge() -> None:
        agent.run("nested")

    with pytest.raises(ConfigurationError, match="background event loop thread"):
        bridge.call(inside_bridge)


def test_interpreter_exit_during_a_live_sync_run_is_prompt_and_clean(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    script = tmp_path / "exit_mid_run.py"
    script.write_text(
        "import threading\n"
        "from tether import Agent, RunEvent\n"
        "from tether.testing import ScriptedModel\n"
        "agent = Agent(name='a', model=ScriptedModel(['x'], stall=60))\n"
        "events = agent.run('go', stream=True)\n"
        "print(next(events).event.value, flush=True)\n"
        "threading.Thread(target=lambda: list(events), daemon=True).start()\n"
        "print('exiting', flush=True)\n"
    )
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(script)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["RunStarted", "exiting"]
    assert proc.stderr == ""
    assert time.monotonic() - started < 10

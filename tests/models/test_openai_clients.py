"""OpenAIChat spreads concurrent streams over clients of ``streams_per_client`` connections."""

from __future__ import annotations

import anyio
import openai
import pytest

from tether import Agent, ConfigurationError, RunEvent, RunStatus, RunStream, cancel_run
from tether.models._clients import ClientSet
from tether.models.openai import OpenAIChat
from tether.testing import LoopbackServer, Reply

pytestmark = pytest.mark.anyio


def made(sizes: list[int]) -> ClientSet:
    def make(connections: int) -> openai.AsyncOpenAI:
        sizes.append(connections)
        return openai.AsyncOpenAI(api_key="k", base_url="http://127.0.0.1:9/v1")

    return ClientSet(make, per_client=2)


async def test_leases_fill_the_first_clients_and_refill_freed_room() -> None:
    sizes: list[int] = []
    clients = made(sizes)
    leases = [clients.lease() for _ in range(5)]
    first, second, third = clients.clients
    assert [lease.client for lease in leases] == [first, first, second, second, third]
    assert sizes == [2, 2, 2]  # each client is made with a pool of exactly that many connections
    leases[0].release()
    leases[0].release()  # idempotent: the room is freed once
    again = [clients.lease(), clients.lease()]
    assert [lease.client for lease in again] == [first, third]
    assert len(clients.clients) == 3
    await clients.close()
    assert clients.clients == []
    leases[1].release()  # a stream ending after the loop closed its clients: no error


async def test_concurrent_streams_over_small_clients_all_go_live_and_close(
    loopback_server: LoopbackServer,
) -> None:
    loopback_server.default = Reply(chunks=[f"c{i} " for i in range(50)], pace=0.05)
    model = OpenAIChat(id="loopback", base_url=loopback_server.base_url, api_key="k", streams_per_client=2)
    agent = Agent(name="a", model=model)
    streams = [agent.arun("go", stream=True) for _ in range(5)]
    live = anyio.Event()
    firsts: list[str] = []

    async def consume(stream: RunStream) -> None:
        async for event in stream:
            if event.event == RunEvent.run_content and event.run_id not in firsts:
                firsts.append(event.run_id)
                if len(firsts) == len(streams):
                    live.set()

    async with anyio.create_task_group() as group:
        for stream in streams:
            group.start_soon(consume, stream)
        with anyio.fail_after(5):
            await live.wait()
        assert loopback_server.open_connections == 5  # five live streams at once, one connection each
        assert len((await model._clients.get()).clients) == 3
        for stream in streams:
            assert cancel_run(stream.run_id) is True
    assert [s.output.status for s in streams if s.output] == [RunStatus.cancelled] * 5
    assert loopback_server.wait_until(lambda s: len(s.disconnects) == 5)


def test_streams_per_client_must_be_a_positive_int() -> None:
    for bad in (0, -1, 2.5, "10", True):
        with pytest.raises(ConfigurationError, match="streams_per_client must be an int >= 1"):
            OpenAIChat(id="m", streams_per_client=bad)  # type: ignore[arg-type]

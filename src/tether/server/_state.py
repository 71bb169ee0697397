"""What the app's routes share: the agents, the store, the disconnect policy, the SSE keep-alive, the
relay tasks (and background runs' tasks)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .._agent import Agent
from ..storage import Storage
from ._disconnect import DisconnectPolicy
from ._errors import HTTPProblem
from ._sse import Relays


@dataclass
class ServerState:
    agents: dict[str, Agent]
    storage: Storage
    on_disconnect: DisconnectPolicy
    keepalive: float = 15.0
    relays: Relays = field(default_factory=Relays)

    def agent(self, agent_id: str) -> Agent:
        agent = self.agents.get(agent_id)
        if agent is None:
            raise HTTPProblem(404, "Agent not found")
        return agent

    @classmethod
    def of(
        cls, agents: Sequence[Agent], storage: Storage, on_disconnect: DisconnectPolicy, keepalive: float
    ) -> ServerState:
        return cls({agent.id: agent for agent in agents}, storage, on_disconnect, keepalive)

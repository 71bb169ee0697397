"""What the app's routes share: the agents, the store, the disconnect policy, the relay tasks."""

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
    relays: Relays = field(default_factory=Relays)

    def agent(self, agent_id: str) -> Agent:
        agent = self.agents.get(agent_id)
        if agent is None:
            raise HTTPProblem(404, "Agent not found")
        return agent

    @classmethod
    def of(cls, agents: Sequence[Agent], storage: Storage, on_disconnect: DisconnectPolicy) -> ServerState:
        return cls({agent.id: agent for agent in agents}, storage, on_disconnect)

"""Agent: what a run needs (model, instructions) plus the ways to run and stop it."""

from __future__ import annotations

import functools
from collections.abc import Coroutine, Sequence
from typing import Any, Literal, overload

from ._ids import check_id, new_id, slug
from ._messages import Message
from ._run import RunHandle, RunOutput, RunState, RunStream, registry
from ._sync import SyncRunStream, bridge
from .exceptions import ConfigurationError
from .models.base import Model


class Agent:
    """An agent whose runs can be stopped promptly, from anywhere, with nothing lost.

    Example::

        agent = Agent(name="Storyteller", model=OpenAIChat(id="gpt-5-mini"), instructions="Be vivid.")
        out = await agent.arun("Write a story")              # RunOutput
        async for event in agent.arun("Write a story", stream=True):
            ...
        agent.cancel_run(run_id)                              # from any thread

    ``agent.id`` is the given ``id`` or derived from ``name`` (stable across processes).
    """

    def __init__(
        self,
        *,
        name: str | None = None,
        model: Model | None = None,
        id: str | None = None,
        description: str | None = None,
        instructions: str | Sequence[str] | None = None,
    ) -> None:
        if model is None:
            from .models.openai import OpenAIChat

            model = OpenAIChat()
        if not isinstance(model, Model):
            raise ConfigurationError(f"model must be a tether model (got {type(model).__name__})")
        self.name = name
        self.id = check_id("agent id", id) if id is not None else slug(name or "agent")
        self.model = model
        self.description = description
        self.instructions = [instructions] if isinstance(instructions, str) else list(instructions or [])

    def __repr__(self) -> str:
        return f"Agent(id={self.id!r}, model={self.model.id!r})"

    # -- async ---------------------------------------------------------------------------------

    @overload
    def arun(
        self,
        input: str,
        *,
        stream: Literal[False] = False,
        run_id: str | None = None,
        session_id: str | None = None,
    ) -> Coroutine[Any, Any, RunOutput]: ...
    @overload
    def arun(
        self, input: str, *, stream: Literal[True], run_id: str | None = None, session_id: str | None = None
    ) -> RunStream: ...
    def arun(
        self, input: str, *, stream: bool = False, run_id: str | None = None, session_id: str | None = None
    ) -> RunStream | Coroutine[Any, Any, RunOutput]:
        """Run the agent on ``input``.

        ``stream=True`` returns a :class:`RunStream` to ``async for`` over (no ``await``);
        otherwise ``await`` it for the :class:`RunOutput`. A cancelled or failed run returns its
        output with that status; it does not raise. ``run_id`` may be chosen by the caller (so it can
        cancel before the first event); ``session_id`` groups runs of one conversation.
        """
        if stream:
            return self._open(input, run_id, session_id)
        return self._collect(input, run_id, session_id)

    async def _collect(self, input: str, run_id: str | None, session_id: str | None) -> RunOutput:
        return await self._open(input, run_id, session_id).collect()

    async def acancel_run(self, run_id: str, reason: str | None = None) -> bool:
        """Cancel this agent's run ``run_id``; True iff it is active. See :meth:`cancel_run`."""
        return self.cancel_run(run_id, reason)

    # -- sync ----------------------------------------------------------------------------------

    @overload
    def run(
        self,
        input: str,
        *,
        stream: Literal[False] = False,
        run_id: str | None = None,
        session_id: str | None = None,
    ) -> RunOutput: ...
    @overload
    def run(
        self, input: str, *, stream: Literal[True], run_id: str | None = None, session_id: str | None = None
    ) -> SyncRunStream: ...
    def run(
        self, input: str, *, stream: bool = False, run_id: str | None = None, session_id: str | None = None
    ) -> SyncRunStream | RunOutput:
        """Blocking :meth:`arun`, usable from any thread (a background event loop runs the run).

        ``stream=True`` returns a plain iterator of events. An exception while waiting (e.g.
        ``KeyboardInterrupt``) cancels the run with ``source="outer"`` and propagates.
        """
        if stream:
            return SyncRunStream(self._open(input, run_id, session_id))
        run_id = check_id("run id", run_id) if run_id is not None else new_id()
        try:
            return bridge.call(functools.partial(self._collect, input, run_id, session_id))
        except BaseException:
            registry.cancel(run_id, source="outer", agent_id=self.id)
            raise

    def cancel_run(self, run_id: str, reason: str | None = None) -> bool:
        """Cancel this agent's run ``run_id``; thread-safe, idempotent, never blocks.

        True iff the run is active (pending or running) and belongs to this agent, also when it
        is already being cancelled; False for an unknown or finished run or another agent's run.
        The run stops at its next await and ends with one ``RunCancelled`` event (``source="user"``).
        """
        return registry.cancel(run_id, reason=reason, source="user", agent_id=self.id)

    # -- internals -----------------------------------------------------------------------------

    def _open(self, input: str, run_id: str | None, session_id: str | None) -> RunStream:
        if not isinstance(input, str):
            raise ConfigurationError(f"input must be a str (got {type(input).__name__})")
        run_id = check_id("run id", run_id) if run_id is not None else new_id()
        session_id = check_id("session id", session_id) if session_id is not None else new_id()
        handle = RunHandle(run_id, self.id, self.name, session_id)
        messages = self._initial_messages(input)
        return RunStream(handle, functools.partial(RunState, model=self.model, messages=messages))

    def _initial_messages(self, input: str) -> list[Message]:
        system = "\n\n".join(part for part in [self.description or "", *self.instructions] if part)
        messages = [Message(role="system", content=system)] if system else []
        messages.append(Message(role="user", content=input))
        return messages

"""Agent: what a run needs (model, instructions, tools) plus the ways to run and stop it."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from typing import Any, Literal, Unpack, overload

from ._background_loop import background_loop
from ._cancel import acancel_anywhere, cancel_anywhere
from ._ids import check_id, new_id, slug
from ._messages import Message
from ._options import Options, RunOptions, check_timeout, parse_options
from ._run import (
    CancelMode,
    RunContext,
    RunHandle,
    RunOutput,
    RunReader,
    RunSpec,
    RunState,
    RunStatus,
    RunStream,
    registry,
)
from ._sync import SyncRunReader, SyncRunStream
from ._text import scrub
from .exceptions import ConfigurationError, ToolError
from .models.base import Model
from .storage import Storage
from .tools._tool import Tool, as_tools


class Agent:
    """An agent whose runs can be stopped promptly, from anywhere, with nothing lost.

    Example::

        agent = Agent(name="Storyteller", model=OpenAIChat(id="gpt-5-mini"), tools=[lookup])
        out = await agent.arun("Write a story")              # RunOutput
        async for event in agent.arun("Write a story", stream=True):
            ...
        agent.cancel_run(run_id)                              # from any thread

    ``agent.id`` is the given ``id`` or derived from ``name`` (stable across processes).
    ``tools`` are plain functions (sync or async) or :class:`~tether.tools.Tool` objects; ``max_steps``
    bounds the model requests of one run; ``timeout`` is every run's deadline in seconds.

    With ``storage`` every run is written as RUNNING when it starts and finalised when it ends, and a
    run given a ``session_id`` continues that conversation: the session's earlier runs (the last
    ``history_runs``, default all) are sent as history; cancelled partial answers are kept in it,
    marked interrupted, unless ``keep_interrupted=False``.
    """

    def __init__(
        self,
        *,
        name: str | None = None,
        model: Model | None = None,
        id: str | None = None,
        description: str | None = None,
        instructions: str | Sequence[str] | None = None,
        tools: Sequence[Tool | Callable[..., Any]] | None = None,
        max_steps: int = 20,
        timeout: float | None = None,
        storage: Storage | None = None,
        history_runs: int | None = None,
        keep_interrupted: bool = True,
        event_buffer: int = 1000,
    ) -> None:
        if model is None:
            from .models.openai import OpenAIChat

            model = OpenAIChat()
        if not isinstance(model, Model):
            raise ConfigurationError(f"model must be a tether model (got {type(model).__name__})")
        if not isinstance(max_steps, int) or max_steps < 1:
            raise ConfigurationError(f"max_steps must be a positive integer (got {max_steps!r})")
        self.name = None if name is None else scrub(name)
        self.id = check_id("agent id", id) if id is not None else slug(name or "agent")
        self.model = model
        self.description = None if description is None else scrub(description)
        self.instructions = [instructions] if isinstance(instructions, str) else list(instructions or [])
        self.tools = as_tools(tools)
        self.max_steps = max_steps
        self.timeout = check_timeout(timeout)
        if storage is not None and not isinstance(storage, Storage):
            raise ConfigurationError(f"storage must be a tether Storage (got {type(storage).__name__})")
        self.storage = storage
        self.history_runs = history_runs
        self.keep_interrupted = keep_interrupted
        if not isinstance(event_buffer, int) or event_buffer < 1:
            raise ConfigurationError(f"event_buffer must be a positive integer (got {event_buffer!r})")
        self.event_buffer = event_buffer

    def __repr__(self) -> str:
        return f"Agent(id={self.id!r}, model={self.model.id!r})"

    # -- async ---------------------------------------------------------------------------------

    @overload
    def arun(
        self,
        input: str,
        *,
        stream: Literal[False] = False,
        background: bool = False,
        **options: Unpack[RunOptions],
    ) -> Coroutine[Any, Any, RunOutput]: ...
    @overload
    def arun(self, input: str, *, stream: Literal[True], **options: Unpack[RunOptions]) -> RunStream: ...
    def arun(
        self, input: str, *, stream: bool = False, background: bool = False, **options: Unpack[RunOptions]
    ) -> RunStream | Coroutine[Any, Any, RunOutput]:
        """Run the agent on ``input``.

        ``stream=True`` returns a :class:`RunStream` to ``async for`` over (no ``await``);
        otherwise ``await`` it for the :class:`RunOutput`. A cancelled or failed run returns its
        output with that status; it does not raise. The keyword options (``run_id``, ``session_id``,
        ``timeout``, ``history``) are described in :class:`RunOptions`.

        ``background=True`` (Agno's name): ``await`` returns at once, with the run's output so far
        (status PENDING or RUNNING, its ``run_id``); the run goes on in this event loop with no
        consumer. Read it with :meth:`aattach`, stop it with :meth:`acancel_run`.
        """
        chosen = parse_options(options)
        if background:
            if stream:
                raise ConfigurationError("background=True returns at once: read the run with aattach()")
            return self._start_background(input, chosen)
        if stream:
            return self._open(input, chosen)
        return self._collect(input, chosen)

    async def _collect(self, input: str, options: Options) -> RunOutput:
        if options.run_id is not None and self.storage is not None:
            check_id("run id", options.run_id)
            await self._check_unused(options.run_id)
            options = replace(options, unused_checked=True)
        return await self._open(input, options).collect()

    async def _start_background(self, input: str, options: Options) -> RunOutput:
        if options.run_id is not None and self.storage is not None:
            check_id("run id", options.run_id)
            await self._check_unused(options.run_id)
            options = replace(options, unused_checked=True)
        return self._open(input, options).start_background()

    def aattach(self, run_id: str, *, after: int | None = None) -> RunReader:
        """Read run ``run_id``: its events with ``event_index > after`` (all when None), then the live
        ones, ending with the terminal event; ``async for`` over it.

        Any number of readers at once, from any task, loop or thread; leaving early never cancels the
        run. A live run is read from its buffer of the last ``event_buffer`` events: a reader whose
        ``after`` is older gets the text it missed as one catch-up ``RunContent`` (so the texts it
        reads still join to the run's content); with storage a run keeps every event (to store them).
        A run that has ended is replayed from its stored events. Raises
        :class:`~tether.exceptions.RunNotFoundError` at the first read if this agent has no such run,
        live in this process or stored.
        """
        check_id("run id", run_id)
        if after is not None and (not isinstance(after, int) or isinstance(after, bool) or after < -1):
            raise ConfigurationError(f"after must be an event index >= -1, or None (got {after!r})")
        return RunReader(run_id, self.id, self.storage, after)

    def attach(self, run_id: str, *, after: int | None = None) -> SyncRunReader:
        """Blocking :meth:`aattach`: a plain iterator, usable from any thread."""
        return SyncRunReader(self.aattach(run_id, after=after))

    async def _check_unused(self, run_id: str) -> None:
        """A caller-chosen run id that a stored run already has is refused (it would overwrite it)."""
        assert self.storage is not None
        if registry.get(run_id) is None and await self.storage.get_run(run_id) is not None:
            raise ConfigurationError(f"run id {run_id!r} is already used by a stored run")

    async def acancel_run(
        self,
        run_id: str,
        reason: str | None = None,
        *,
        mode: CancelMode = "immediate",
        grace: float | None = None,
    ) -> bool:
        """Cancel this agent's run ``run_id``; True iff it is active. See :meth:`cancel_run`."""
        return await acancel_anywhere(run_id, reason=reason, mode=mode, grace=grace, agent_id=self.id)

    # -- sync ----------------------------------------------------------------------------------

    @overload
    def run(
        self,
        input: str,
        *,
        stream: Literal[False] = False,
        background: bool = False,
        **options: Unpack[RunOptions],
    ) -> RunOutput: ...
    @overload
    def run(self, input: str, *, stream: Literal[True], **options: Unpack[RunOptions]) -> SyncRunStream: ...
    def run(
        self, input: str, *, stream: bool = False, background: bool = False, **options: Unpack[RunOptions]
    ) -> SyncRunStream | RunOutput:
        """Blocking :meth:`arun`, usable from any thread (a background event loop runs the run).

        ``stream=True`` returns a plain iterator of events. An exception while waiting (e.g.
        ``KeyboardInterrupt``) cancels the run with ``source="outer"`` and propagates.
        ``background=True`` returns once the run has started (read it with :meth:`attach`).
        """
        chosen = parse_options(options)
        if background:
            if stream:
                raise ConfigurationError("background=True returns at once: read the run with attach()")
            return background_loop.call(functools.partial(self._start_background, input, chosen))
        if stream:
            return SyncRunStream(self._open(input, chosen))
        if chosen.run_id is not None and self.storage is not None:
            check_id("run id", chosen.run_id)
            background_loop.call(functools.partial(self._check_unused, chosen.run_id))
            chosen = replace(chosen, unused_checked=True)
        background_loop.check_caller()
        opened = self._open(input, chosen)  # registered here: a bad id or input raises before anything
        try:
            return background_loop.call(opened.collect)
        except BaseException:
            opened.handle.request_cancel(None, "outer")  # only this call's own run (started or not)
            raise

    def cancel_run(
        self,
        run_id: str,
        reason: str | None = None,
        *,
        mode: CancelMode = "immediate",
        grace: float | None = None,
    ) -> bool:
        """Cancel this agent's run ``run_id``; thread-safe, idempotent, never blocks.

        True iff the run is active (pending or running) and belongs to this agent, also when it
        is already being cancelled; False for an unknown or finished run or another agent's run.
        ``mode="immediate"`` interrupts whatever the run awaits; ``mode="after_turn"`` lets the
        current model response and its tool calls finish and stops before the next model request;
        ``grace`` (seconds) escalates a graceful stop to immediate. The run ends with one
        ``RunCancelled`` event (``source="user"``); live sub-agent runs are cancelled first. A run owned by
        another process is cancelled through the attached remote canceller (``source="remote"``).

        A cancel may overtake the start of the run it names (a client that chose the ``run_id``): for a
        run id nothing has yet, the answer is False, but the intent is kept for a short time
        (``cancel_memory``, 60 s by default; in every worker when Redis is attached). A run of this agent
        that starts with that id then starts cancelled: ``RunStarted``, then ``RunCancelled``
        (``source="user"``, this ``reason``), and its model is never called.
        """
        return cancel_anywhere(run_id, reason=reason, mode=mode, grace=grace, agent_id=self.id)

    # -- stored runs ---------------------------------------------------------------------------

    async def aget_run(self, run_id: str) -> RunOutput | None:
        """This agent's stored run ``run_id`` (None if unknown or another agent's)."""
        storage = self._storage()
        run = registry.ended_output(run_id) or await storage.get_run(run_id)
        return run if run is not None and run.agent_id == self.id else None

    async def aget_session_runs(self, session_id: str) -> list[RunOutput]:
        """This agent's stored runs of ``session_id``, oldest first (a final write under way included)."""
        runs = await self._storage().list_runs(agent_id=self.id, session_id=session_id)
        return [registry.ended_output(run.run_id) or run for run in runs]

    def get_run(self, run_id: str) -> RunOutput | None:
        """Blocking :meth:`aget_run`."""
        return background_loop.call(functools.partial(self.aget_run, run_id))

    def get_session_runs(self, session_id: str) -> list[RunOutput]:
        """Blocking :meth:`aget_session_runs`."""
        return background_loop.call(functools.partial(self.aget_session_runs, session_id))

    def _storage(self) -> Storage:
        if self.storage is None:
            raise ConfigurationError(
                f"agent {self.id!r} has no storage: pass Agent(storage=SqliteStorage(...))"
            )
        return self.storage

    def as_tool(self, *, name: str | None = None, description: str | None = None) -> Tool:
        """This agent as a tool another agent can call (a sub-agent).

        Each call is a run of its own in the registry, with ``parent_run_id`` set. Cancelling the
        parent cancels the child first (``source="parent"``); cancelling the child alone gives the
        parent a tool error result, and the parent goes on.
        """
        agent = self

        async def ask(input: str, context: RunContext) -> str:
            """Ask the sub-agent.

            Args:
                input: What to ask the agent, in plain language.
            """
            return await _ask_subagent(agent, input, context)

        return Tool(
            ask,
            name=name or f"ask_{slug(self.name or self.id).replace('.', '_').replace(':', '_')}"[:64],
            description=description or self.description or f"Ask the {self.name or self.id} agent.",
        )

    # -- internals -----------------------------------------------------------------------------

    def _open(self, input: str, options: Options) -> RunStream:
        if not isinstance(input, str):
            raise ConfigurationError(f"input must be a str (got {type(input).__name__})")
        run_id = check_id("run id", options.run_id) if options.run_id is not None else new_id()
        session_id = (
            check_id("session id", options.session_id) if options.session_id is not None else new_id()
        )
        timeout = check_timeout(options.timeout) if options.timeout is not None else self.timeout
        handle = RunHandle(
            run_id,
            self.id,
            self.name,
            session_id,
            parent_run_id=options.parent_run_id,
            timeout=timeout,
            user_id=options.user_id,
            event_buffer=self.event_buffer,
            keep_events=self.storage is not None,
        )
        spec = RunSpec(
            model=self.model,
            messages=tuple(self._initial_messages(input, options.history)),
            tools=tuple(self.tools),
            max_steps=self.max_steps,
            storage=self.storage,
            continue_session=self.storage is not None and options.session_id is not None,
            history_runs=self.history_runs,
            keep_interrupted=self.keep_interrupted,
            refuse_stored=options.run_id is not None and not options.unused_checked,
        )
        return RunStream(handle, functools.partial(RunState, spec=spec))

    def _initial_messages(self, input: str, history: Sequence[Message] | None) -> list[Message]:
        system = "\n\n".join(part for part in [self.description or "", *self.instructions] if part)
        messages = [Message(role="system", content=scrub(system))] if system else []
        # An earlier run's system prompt is replaced by this agent's current one.
        messages.extend(
            m.model_copy(update={"from_history": True, "content": m.content and scrub(m.content)})
            for m in history or ()
            if m.role != "system"
        )
        messages.append(Message(role="user", content=scrub(input)))
        return messages


async def _ask_subagent(agent: Agent, input: str, context: RunContext) -> str:
    output = await agent._open(input, Options(parent_run_id=context.run_id)).collect()
    if output.status is RunStatus.cancelled:
        raise ToolError(
            f"Cancelled: {output.cancel_reason or output.cancel_source or 'the sub-agent was stopped'}"
        )
    if output.status is RunStatus.error:
        raise ToolError(f"the {agent.name or agent.id} agent failed: {output.error}")
    return output.content

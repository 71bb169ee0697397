"""What the property tests generate: model scripts, tools, cancel actions, storage faults.

A :class:`Scenario` is plain data (readable in a shrunk failure report). :func:`build` turns it into
live objects for one run: an :class:`Agent` on a :class:`TurnsModel` (one ``ScriptedModel`` per model
request), fresh exception instances, and the tools' side-effect records.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.lowlevel

from tether import Agent, tool
from tether.models import ToolSpec
from tether.storage import SqliteStorage
from tether.testing import ScriptedModel, ScriptedToolCall
from tether.tools import Tool

PROMPT = "go"
RUN_ID = "fuzz-run"

# -- model scripts -----------------------------------------------------------------------------

LINE_BREAKS = ["\u2028", "\u2029", "\u0085", "\r", "\n", "\x00", "\ufeff", "\ufffd", "\x1b"]


class ProviderGlitch(Exception):
    """An exception type of the user's own (not a builtin, not tether's)."""


ERRORS = {
    "RuntimeError": lambda: RuntimeError("model blew up"),
    "ValueError": lambda: ValueError("bad delta"),
    "OSError": lambda: ConnectionResetError(104, "connection reset"),
    "ProviderGlitch": lambda: ProviderGlitch("glitch"),
}
INTERRUPTS = {
    "KeyboardInterrupt": KeyboardInterrupt,
    "SystemExit": lambda: SystemExit(3),
}


@dataclass(frozen=True)
class Call:
    """A tool call the model asks for: which tool (by kind) and its argument."""

    kind: str
    x: int = 1

    def scripted(self, index: str) -> ScriptedToolCall:
        name, arguments = TOOL_CALLS[self.kind](self.x)
        return ScriptedToolCall(name, arguments, id=f"call_{index}")


@dataclass(frozen=True)
class Turn:
    """One model response: its chunks, timing, how it fails (an ``ERRORS`` name), its tool calls."""

    chunks: tuple[str, ...] = ()
    delay: float = 0.0
    stall: float = 0.0
    stall_at: int = 0
    error: str | None = None
    error_at: int = 0
    calls: tuple[Call, ...] = ()

    def deltas(self) -> list[str]:
        """The non-empty chunks this response delivers (up to its error)."""
        chunks = self.chunks[: self.error_at] if self.error else self.chunks
        return [chunk for chunk in chunks if chunk]


@dataclass(frozen=True)
class Script:
    turns: tuple[Turn, ...]

    def effective(self) -> tuple[Turn, ...]:
        """The turns a run that nobody stops requests: up to the first that fails or calls no tool."""
        taken: list[Turn] = []
        for turn in self.turns:
            taken.append(turn)
            if turn.error or not turn.calls:
                break
        return tuple(taken)

    def deltas(self) -> list[str]:
        return [delta for turn in self.effective() for delta in turn.deltas()]

    @property
    def fails(self) -> bool:
        return any(turn.error for turn in self.effective())


# -- cancel actions ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    """Something done to a run: ``kind`` and, for a cancel, its mode and grace.

    Kinds: ``cancel`` (agent.cancel_run), ``cancel_any`` (tether.cancel_run), ``acancel``
    (await agent.acancel_run), ``cancel_thread`` (cancel_run from another thread); consumer stops
    ``break`` (then drop the stream), ``break_aclose``, ``aclose`` (then keep iterating); outer
    cancel ``task_cancel``.
    """

    kind: str
    mode: str = "immediate"
    grace: float | None = None

    @property
    def is_cancel(self) -> bool:
        return self.kind.startswith(("cancel", "acancel"))

    @property
    def graceful(self) -> bool:
        """A user cancel that never interrupts (after_turn without grace)."""
        return self.is_cancel and self.mode == "after_turn" and self.grace is None


@dataclass(frozen=True)
class Trigger:
    """When an action happens: after the consumer received ``events`` events, or ``after`` seconds."""

    action: Action
    events: int | None = None
    after: float | None = None


@dataclass(frozen=True)
class Scenario:
    script: Script
    consumer: str = "for"  # for | async_with | collect | sync_for | sync_with | sync_run
    triggers: tuple[Trigger, ...] = ()
    outer: tuple[str, float] | None = None  # ("move_on_after" | "wait_for", seconds)
    timeout: float | None = None
    storage: str | None = None  # None | "sqlite" | "locked"
    lock: tuple[float, float] = (0.0, 0.0)  # (start after, hold for) seconds, with storage="locked"

    @property
    def actions(self) -> list[Action]:
        return [trigger.action for trigger in self.triggers]

    @property
    def only_graceful(self) -> bool:
        """Nothing but graceful user cancels can stop this run (no deadline, no outer, no consumer stop)."""
        return self.timeout is None and self.outer is None and all(a.graceful for a in self.actions)


# -- tools -------------------------------------------------------------------------------------

TOOL_CALLS = {
    "async": lambda x: ("lookup", json.dumps({"x": x})),
    "sync": lambda x: ("compute", json.dumps({"x": x})),
    "shielded": lambda x: ("pay", json.dumps({"x": x})),
    "raising": lambda x: ("broken", json.dumps({"x": x})),
    "invalid": lambda x: ("lookup", json.dumps({"x": "not a number"})),
    "not_json": lambda x: ("lookup", "{not json"),
    "slow": lambda x: ("slow", json.dumps({"x": x})),
    "slow_sync": lambda x: ("slow_sync", json.dumps({"x": x})),
    "timing_out": lambda x: ("stuck", json.dumps({"x": x})),
    "unknown": lambda x: ("missing", "{}"),
}


def expected_result(call: Call) -> str:
    """The tool message content of a call that ran to its end, uncancelled (a prefix for errors)."""
    x = call.x
    return {
        "async": f"async:{x}",
        "sync": f"sync:{x}",
        "shielded": f"paid:{x}",
        "raising": f"Error: RuntimeError: broken:{x}",
        "invalid": "Error: invalid arguments for lookup: x: ",
        "not_json": "Error: invalid arguments for lookup: not JSON",
        "slow": f"slow:{x}",
        "slow_sync": f"slow_sync:{x}",
        "timing_out": "Error: tool stuck timed out after 0.01 s",
        "unknown": "Error: unknown tool 'missing'",
    }[call.kind]


PAID: list[int] = []
"""What the shielded tool charged during the current example (examples run one at a time)."""


def make_tools(paid: list[int]) -> list[Tool]:
    async def lookup(x: int) -> str:
        await anyio.lowlevel.checkpoint()
        return f"async:{x}"

    def compute(x: int) -> str:
        return f"sync:{x}"

    @tool(shield=True)
    async def pay(x: int) -> str:
        await anyio.sleep(0.01)
        paid.append(x)
        return f"paid:{x}"

    def broken(x: int) -> str:
        raise RuntimeError(f"broken:{x}")

    async def slow(x: int) -> str:
        await anyio.sleep(0.02)
        return f"slow:{x}"

    def slow_sync(x: int) -> str:
        time.sleep(0.01)
        return f"slow_sync:{x}"

    @tool(timeout=0.01)
    async def stuck(x: int) -> str:
        await anyio.sleep(1)
        return "never"

    made = (lookup, compute, pay, broken, slow, slow_sync, stuck)
    return [f if isinstance(f, Tool) else Tool(f) for f in made]


_TOOLS = make_tools(PAID)  # built once: a Tool's schema costs milliseconds to build


class TurnsModel:
    """A model whose n-th request is answered by a fresh ``ScriptedModel`` playing turn n."""

    def __init__(self, turns: Sequence[Turn], errors: Sequence[BaseException | None]) -> None:
        self.turns = list(turns)
        self.errors = list(errors)
        self.played: list[ScriptedModel] = []

    @property
    def id(self) -> str:
        return "fuzz"

    def stream(self, messages: Sequence[object], tools: Sequence[ToolSpec] = ()) -> object:
        index = min(len(self.played), len(self.turns) - 1)
        turn = self.turns[index]
        error = self.errors[index]
        model = ScriptedModel(
            turn.chunks,
            id="fuzz",
            delay=turn.delay,
            stall=turn.stall,
            stall_at=turn.stall_at,
            error=error,
            error_at=turn.error_at if error is not None else None,
            tool_calls=[call.scripted(f"{index}_{i}") for i, call in enumerate(turn.calls)],
        )
        self.played.append(model)
        stream: object = model.stream(messages, tools)  # type: ignore[arg-type]
        return stream

    @property
    def open_streams(self) -> int:
        return sum(model.open_streams for model in self.played)

    def raised(self) -> BaseException | None:
        """The scripted error if the model actually raised it (a raised exception has a traceback)."""
        return next((e for e in self.errors if e is not None and e.__traceback__ is not None), None)


@dataclass
class Built:
    """The live objects of one scenario's run."""

    agent: Agent
    model: TurnsModel
    storage: SqliteStorage | None
    paid: list[int] = field(default_factory=list)


def build(scenario: Scenario, folder: Path | None, interrupts: bool = False) -> Built:
    table = {**ERRORS, **INTERRUPTS} if interrupts else ERRORS
    errors = [table[turn.error]() if turn.error else None for turn in scenario.script.turns]
    model = TurnsModel(scenario.script.turns, errors)
    PAID.clear()
    storage = None
    if scenario.storage is not None:
        assert folder is not None
        storage = SqliteStorage(folder / "runs.db", busy_timeout=5.0)
    agent = Agent(
        name="fuzz",
        model=model,  # type: ignore[arg-type]
        tools=_TOOLS,
        max_steps=len(scenario.script.turns) + 1,
        storage=storage,
    )
    return Built(agent, model, storage, PAID)

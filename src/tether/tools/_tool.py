"""Tool: a Python function the model can call, and the ``@tool`` decorator."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any, overload

from pydantic import BaseModel

from ..exceptions import ConfigurationError
from ._schema import build_args_model, describe, json_schema

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Tool:
    """A function the model may call, with its JSON schema. Calling the Tool calls the function.

    ``shield=True`` marks non-idempotent work (a payment, a write): once started it runs to
    completion before a cancel takes effect, and its result is recorded. ``timeout`` bounds one call
    (the model gets an error result past it).
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        shield: bool = False,
        timeout: float | None = None,
    ) -> None:
        self.fn = fn
        self.name: str = name or str(getattr(fn, "__name__", ""))
        if not _NAME.match(self.name):
            raise ConfigurationError(f"invalid tool name {self.name!r}: use 1 to 64 of A-Z a-z 0-9 _ -")
        if timeout is not None and timeout <= 0:
            raise ConfigurationError(f"tool {self.name!r}: timeout must be positive")
        self.description = description if description is not None else describe(fn)[0]
        self.shield = shield
        self.timeout = timeout
        self.is_async = inspect.iscoroutinefunction(fn)
        self.args_model: type[BaseModel]
        self.args_model, self.context_param = build_args_model(fn, self.name)
        self.parameters = json_schema(self.args_model)

    def spec(self) -> dict[str, Any]:
        """The tool as an OpenAI ``tools`` entry."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Tool({self.name!r}, shield={self.shield})"


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...
@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    shield: bool = False,
    timeout: float | None = None,
) -> Callable[[Callable[..., Any]], Tool]: ...
def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    shield: bool = False,
    timeout: float | None = None,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a function a :class:`Tool`; plain functions passed to ``Agent(tools=...)`` need no decorator.

    Example::

        @tether.tool(shield=True)
        async def charge(customer_id: str, cents: int) -> str:
            \"\"\"Charge a customer. Runs to completion even if the run is cancelled.\"\"\"
            ...
    """

    def wrap(function: Callable[..., Any]) -> Tool:
        return Tool(function, name=name, description=description, shield=shield, timeout=timeout)

    return wrap(fn) if fn is not None else wrap


def as_tools(items: Any) -> list[Tool]:
    """Normalise ``Agent(tools=...)``: Tool objects and plain callables; names must be unique."""
    tools = [item if isinstance(item, Tool) else Tool(item) for item in (items or [])]
    seen: set[str] = set()
    for item in tools:
        if item.name in seen:
            raise ConfigurationError(f"two tools are named {item.name!r}; give one a name= of its own")
        seen.add(item.name)
    return tools

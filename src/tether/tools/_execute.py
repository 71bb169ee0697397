"""Executing one tool call: validate the arguments, run the function, turn the outcome into text.

Failures become the tool's error result for the model, never a crashed run. Cancellation policy:
an async tool is cancelled at once; a sync tool's thread is abandoned (and told through its
RunContext) so the run ends at once; a shielded tool runs to completion first.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from typing import Any

import anyio
from pydantic import BaseModel, ValidationError

from .._messages import ToolCall
from .._run._context import RunContext
from ..exceptions import ToolError
from ._tool import Tool

logger = logging.getLogger("tether.tools")


@dataclass(slots=True)
class ToolOutcome:
    """What a tool call produced: ``content`` goes to the model; ``error`` is set when it failed."""

    content: str
    error: str | None = None


def parse_arguments(call: ToolCall) -> dict[str, Any]:
    """The call's JSON arguments as a dict ({} when they are not a JSON object)."""
    try:
        value = json.loads(call.function.arguments or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


async def execute(
    tool: Tool | None, call: ToolCall, context: RunContext, available: list[str]
) -> ToolOutcome:
    """Run one tool call to an outcome; cancellation (unless shielded) propagates."""
    name = call.function.name
    if tool is None:
        return _failed(f"unknown tool {name!r}; available tools: {', '.join(available) or 'none'}")
    try:
        raw = json.loads(call.function.arguments or "{}")
        arguments = tool.args_model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in exc.errors()
        )
        return _failed(f"invalid arguments for {name}: {problems}")
    except ValueError as exc:
        return _failed(f"invalid arguments for {name}: not JSON ({exc})")
    kwargs = {field: getattr(arguments, field) for field in type(arguments).model_fields}
    if tool.context_param is not None:
        kwargs[tool.context_param] = context
    try:
        if tool.shield:
            with anyio.CancelScope(shield=True):
                result = await _invoke(tool, kwargs, context)
        else:
            result = await _invoke(tool, kwargs, context)
    except ToolError as exc:
        return _failed(str(exc))
    except TimeoutError:
        return _failed(f"tool {name} timed out after {tool.timeout} s")
    except Exception as exc:
        logger.warning("tool %s raised %s: %s", name, type(exc).__name__, exc, exc_info=exc)
        return _failed(f"{type(exc).__name__}: {exc}")
    return ToolOutcome(content=to_text(result))


async def _invoke(tool: Tool, kwargs: dict[str, Any], context: RunContext) -> Any:
    with anyio.fail_after(tool.timeout) if tool.timeout is not None else _no_deadline():
        if tool.is_async:
            return await tool.fn(**kwargs)
        call = functools.partial(_in_thread, tool, kwargs, context)
        return await anyio.to_thread.run_sync(call, abandon_on_cancel=not tool.shield)


def _in_thread(tool: Tool, kwargs: dict[str, Any], context: RunContext) -> Any:
    result = tool.fn(**kwargs)
    if context.cancelled and not tool.shield:
        logger.info("discarded the late result of tool %s: run %s was cancelled", tool.name, context.run_id)
    return result


def _no_deadline() -> anyio.CancelScope:
    return anyio.CancelScope()


def _failed(message: str) -> ToolOutcome:
    return ToolOutcome(content=f"Error: {message}", error=message)


def to_text(value: Any) -> str:
    """A tool's return value as the text the model sees."""
    if isinstance(value, str):
        return value
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    return json.dumps(value, default=str, ensure_ascii=False)

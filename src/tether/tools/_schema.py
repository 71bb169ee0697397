"""A tool's argument model and JSON schema, derived from its signature, type hints and docstring.

pydantic builds the model (and so validates what the model sends); we only collect the fields.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.fields import FieldInfo

from .._run._context import RunContext
from ..exceptions import ConfigurationError


class ArgsBase(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=False)


_SECTION = re.compile(r"^(Args|Arguments|Parameters|Returns|Raises|Yields|Examples?|Notes?):\s*$", re.M)
_ARG_LINE = re.compile(r"^\s+(\w+)(?:\s*\([^)]*\))?\s*:\s*(.+)$")


def describe(fn: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    """The docstring's text before its first section, and the notes of its ``Args:`` section."""
    doc = inspect.getdoc(fn) or ""
    first = _SECTION.search(doc)
    summary = doc[: first.start()] if first else doc
    notes: dict[str, str] = {}
    args = re.search(r"^(?:Args|Arguments|Parameters):\s*$", doc, re.M)
    if args:
        for line in doc[args.end() :].splitlines()[1:]:
            match = _ARG_LINE.match(line)
            if match:
                notes[match.group(1)] = match.group(2).strip()
            elif line.strip() and not line[0].isspace():
                break  # the next section
    return summary.strip(), notes


def build_args_model(fn: Callable[..., Any], name: str) -> tuple[type[BaseModel], str | None]:
    """Return the argument model of ``fn`` and the name of its RunContext parameter, if any."""
    hints = _parameter_hints(fn, name)
    _, notes = describe(fn)
    fields: dict[str, Any] = {}
    context_param: str | None = None
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ConfigurationError(f"tool {name!r}: *args and **kwargs cannot be described to a model")
        annotation = hints.get(param.name, Any)
        if _is_context(annotation):
            context_param = param.name
            continue
        default = ... if param.default is param.empty else param.default
        if isinstance(default, FieldInfo):
            fields[param.name] = (annotation, default)
        else:
            fields[param.name] = (annotation, Field(default=default, description=notes.get(param.name)))
    model = create_model(f"{name}_arguments", __base__=ArgsBase, **fields)
    return model, context_param


def _parameter_hints(fn: Callable[..., Any], name: str) -> dict[str, Any]:
    """Parameter annotations, with string ones (``from __future__ import annotations``) resolved.

    The return annotation is not needed and is never evaluated, so it may name anything.
    """
    hints = dict(inspect.get_annotations(fn))
    hints.pop("return", None)
    namespace = getattr(inspect.unwrap(fn), "__globals__", {})
    for param, annotation in hints.items():
        if isinstance(annotation, str):
            try:
                hints[param] = eval(annotation, namespace)  # what typing.get_type_hints does
            except Exception as exc:
                raise ConfigurationError(
                    f"tool {name!r}: cannot resolve the type of parameter {param!r} ({annotation}): {exc}"
                ) from exc
    return hints


def _is_context(annotation: Any) -> bool:
    """``RunContext``, also inside ``Optional``/``Union`` or ``Annotated``."""
    if annotation is RunContext:
        return True
    return any(_is_context(arg) for arg in typing.get_args(annotation))


def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    return schema

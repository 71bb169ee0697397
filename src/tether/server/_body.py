"""Reading a request body as JSON, urlencoded or multipart form, within a size limit; its OpenAPI doc."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from .._wire import MAX_BODY_BYTES
from ._errors import HTTPProblem, describe_errors

try:  # what Starlette's form parser reads the header with (it tries the two in this order too)
    from python_multipart.multipart import parse_options_header
except ModuleNotFoundError:  # python-multipart before 0.0.13  # pragma: no cover
    from multipart.multipart import parse_options_header  # type: ignore[no-redef,import-untyped,unused-ignore]

M = TypeVar("M", bound=BaseModel)
FORMS = ("multipart/form-data", "application/x-www-form-urlencoded")


def openapi_body(model: type[BaseModel], *, required: bool) -> dict[str, Any]:
    """The ``requestBody`` of an operation reading ``model`` as JSON or as a form.

    A form field is a string, never null: in the forms' schema an optional field is its non-null
    alternative (absent means None), so a client generated from the spec never sends ``"null"``.
    """
    schema = model.model_json_schema()
    form = {**schema, "properties": {k: _not_null(v) for k, v in schema.get("properties", {}).items()}}
    content = {"application/json": {"schema": schema}}
    content.update({kind: {"schema": form} for kind in FORMS})
    return {"requestBody": {"required": required, "content": content}}


def _not_null(field: dict[str, Any]) -> dict[str, Any]:
    alternatives = [a for a in field.get("anyOf", ()) if a != {"type": "null"}]
    if len(alternatives) != 1:
        return field
    rest = {k: v for k, v in field.items() if k not in ("anyOf", "default")}
    return {**alternatives[0], **rest}


async def read(request: Request, model: type[M], *, required: bool = True) -> M:
    """Parse the body into ``model``; every problem is a 422 with a readable detail."""
    data = await _fields(request, required=required)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise HTTPProblem(422, describe_errors(exc.errors())) from exc


async def _fields(request: Request, *, required: bool) -> dict[str, Any]:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise HTTPProblem(422, f"request body too large (at most {MAX_BODY_BYTES} bytes)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise HTTPProblem(422, f"request body too large (at most {MAX_BODY_BYTES} bytes)")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not body and not required:
        return {}
    if kind == "application/json":
        return _json_object(bytes(body))
    if kind in FORMS:
        request._body = bytes(body)  # let Starlette's form parser read what we already read
        try:
            form = await request.form()
        except Exception as exc:  # python-multipart's parse errors
            if _no_parts(request, body):
                return {}
            raise HTTPProblem(422, f"body is not a valid form: {exc}") from exc
        try:
            return {key: value for key, value in form.items() if isinstance(value, str)}
        finally:
            await form.close()  # uploaded files (which we ignore) are temporary files
    raise HTTPProblem(
        422, "Content-Type must be application/json, application/x-www-form-urlencoded or multipart/form-data"
    )


def _no_parts(request: Request, body: bytearray) -> bool:
    """Whether a multipart body is only its closing delimiter (an epilogue may follow): no fields.

    Browsers send that for a form whose only field is an unchecked checkbox; python-multipart reads
    it as no fields from 0.0.20 on and refuses it before (its issue #38), so the versions this
    package allows all answer alike. The boundary is read as the form parser reads it (the last
    ``boundary`` parameter; quotes only around the whole value).
    """
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        return False
    return bytes(body).lstrip(b" \t\r\n").startswith(b"--" + boundary + b"--")


def _json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; whatever the bytes are, a failure is a 422, never a 500.

    ``json.loads`` raises ValueError for bad syntax, bad UTF-8 (UnicodeDecodeError) and integers of
    more than 4300 digits, and RecursionError for nesting deeper than the interpreter's stack allows
    (about 1,000 levels, fewer on a deep stack). Duplicate keys are accepted, the last one wins.
    """
    try:
        data = json.loads(body)
    except RecursionError as exc:
        raise HTTPProblem(422, "body is not valid JSON: nested too deeply") from exc
    except ValueError as exc:
        raise HTTPProblem(422, f"body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise HTTPProblem(422, "body must be a JSON object")
    return data

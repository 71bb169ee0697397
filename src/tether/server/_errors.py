"""Error bodies (``{"detail": ..., "error_code": ...}``), their OpenAPI schemas, and the handlers."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

logger = logging.getLogger("tether.server")

CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    422: "VALIDATION_ERROR",
    500: "INTERNAL_SERVER_ERROR",
}


class HTTPProblem(Exception):
    """An error answered as ``{"detail", "error_code"}`` with this status."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _schema(name: str, detail: str, code: str) -> type[BaseModel]:
    """One of the error schemas of the AgentOS contract: the same shape under its own name."""
    model_config = ConfigDict(
        title=name, json_schema_extra={"example": {"detail": detail, "error_code": code}}
    )
    return type(
        name,
        (BaseModel,),
        {
            "__annotations__": {"detail": str, "error_code": str | None},
            "model_config": model_config,
            "detail": Field(title="Detail", description="Error detail message"),
            "error_code": Field(
                default=None, title="Error Code", description="Error code for categorization"
            ),
            "__module__": __name__,
        },
    )


BadRequestResponse = _schema("BadRequestResponse", "Bad request", "BAD_REQUEST")
UnauthenticatedResponse = _schema("UnauthenticatedResponse", "Unauthenticated access", "UNAUTHENTICATED")
NotFoundResponse = _schema("NotFoundResponse", "Not found", "NOT_FOUND")
ValidationErrorResponse = _schema("ValidationErrorResponse", "Validation error", "VALIDATION_ERROR")
InternalServerErrorResponse = _schema(
    "InternalServerErrorResponse", "Internal server error", "INTERNAL_SERVER_ERROR"
)

_DOCS: dict[int, tuple[type[BaseModel], str]] = {
    400: (BadRequestResponse, "Bad Request"),
    401: (UnauthenticatedResponse, "Unauthorized"),
    404: (NotFoundResponse, "Not Found"),
    422: (ValidationErrorResponse, "Validation Error"),
    500: (InternalServerErrorResponse, "Internal Server Error"),
}


def responses(*statuses: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses (``descriptions``: ``d404="Agent not found"``)."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        model, description = _DOCS[status]
        out[status] = {"model": model, "description": descriptions.get(f"d{status}", description)}
    return out


def error_body(status: int, detail: str) -> dict[str, Any]:
    return {"detail": detail, "error_code": CODES.get(status, "ERROR")}


def install(app: FastAPI) -> None:
    """Every error becomes ``{"detail": str, "error_code": str}``; nothing internal leaks."""

    @app.exception_handler(HTTPProblem)
    async def api_error(request: Request, exc: HTTPProblem) -> JSONResponse:
        return JSONResponse(error_body(exc.status, exc.detail), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else "HTTP error"
        return JSONResponse(
            error_body(exc.status_code, detail), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # Raised by any read of the body (ours, Starlette's form parser) when the client closed the
        # connection before sending all of it: no run started, nothing failed here. The answer is
        # for the ASGI server to drop (the connection is gone).
        logger.info(
            "client disconnected during %s %s before its body was read", request.method, request.url.path
        )
        return JSONResponse(error_body(400, "the client disconnected before sending the whole body"), 400)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(422, describe_errors(exc.errors())), status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error in %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(error_body(500, "Internal server error"), status_code=500)


def describe_errors(errors: Any) -> str:
    """Validation errors as one readable line: ``path.agent_id: String should match pattern ...``."""
    parts = []
    for error in errors:
        location = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        parts.append(
            f"{location}: {error.get('msg', 'invalid')}" if location else str(error.get("msg", "invalid"))
        )
    return "; ".join(parts) or "Validation error"

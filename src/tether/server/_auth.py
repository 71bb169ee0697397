"""Bearer-token auth: every route but ``/health`` needs ``Authorization: Bearer <key>`` when a key is set."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ._errors import HTTPProblem

# auto_error=False: FastAPI's own 403 for a missing header must not leak; we answer 401 ourselves.
# The dependency still declares the HTTPBearer security scheme in OpenAPI.
bearer = HTTPBearer(auto_error=False)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]


def require_key(key: str | None) -> Callable[..., Awaitable[None]]:
    """A dependency checking the bearer token against ``key`` (in constant time); open when None."""
    expected = key.encode() if key else None

    async def check(request: Request, credentials: Credentials) -> None:
        if expected is None:
            return
        header = request.headers.get("authorization")
        if not header:
            raise HTTPProblem(401, "Authorization header required")
        scheme, _, token = header.partition(" ")  # read ourselves: HTTPBearer hides a wrong scheme
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
            raise HTTPProblem(401, "Invalid authentication token")

    return check

"""The API's description: ``/openapi.json``, and the pages showing it, ``/docs`` and ``/redoc``.

FastAPI would serve these itself, open to anyone; here they are routes like the others, so a server
with a security key asks for it on them too (``create_app`` mounts them behind the same dependency).
A browser does not send the header by itself: with a key, fetch ``/openapi.json`` with it (``curl -H
'Authorization: Bearer <key>'``), or view the pages through something that adds the header.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, JSONResponse

OPENAPI_URL = "/openapi.json"
DOCS_URL = "/docs"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
REDOC_URL = "/redoc"


def build(app: FastAPI) -> APIRouter:
    """The description routes of ``app`` (created with ``openapi_url=None``), as FastAPI serves them."""
    router = APIRouter(include_in_schema=False)

    @router.get(OPENAPI_URL)
    async def openapi(request: Request) -> JSONResponse:
        schema = app.openapi()
        root = _root_path(request)
        if root and root not in {server.get("url") for server in schema.get("servers", [])}:
            schema = {**schema, "servers": [{"url": root}, *schema.get("servers", [])]}
        return JSONResponse(schema)

    @router.get(DOCS_URL)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = _root_path(request)
        return get_swagger_ui_html(
            openapi_url=root + OPENAPI_URL,
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=root + OAUTH2_REDIRECT_URL,
        )

    @router.get(OAUTH2_REDIRECT_URL)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @router.get(REDOC_URL)
    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(openapi_url=_root_path(request) + OPENAPI_URL, title=f"{app.title} - ReDoc")

    return router


def _root_path(request: Request) -> str:
    """The prefix a proxy mounts the app under (uvicorn's ``--root-path``), without a trailing slash."""
    return str(request.scope.get("root_path", "")).rstrip("/")

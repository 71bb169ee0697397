"""The HTTP server: ``create_app`` (FastAPI, Agno AgentOS-compatible routes and cancel contract).

Needs the ``server`` extra: ``pip install tether[server]``.
"""

from ._app import create_app

__all__ = ["create_app"]

"""The non-streaming answer of ``POST /agents/{agent_id}/runs``: the RunOutput, once the run ended.

While the run goes on, the connection is watched: a client that goes away gets the
``on_disconnect`` policy (:mod:`._disconnect`), as a streaming one does, so a run nobody waits for
any more is not left generating (and billing) upstream. The run is read by the request's own task,
to its end in every case: with ``"cancel"`` that end comes at once; with ``"continue"`` the task
reads the run in the background, its answer dropped.
"""

from __future__ import annotations

import asyncio
import contextlib

from fastapi.responses import JSONResponse
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .._run import RunStream
from ._disconnect import DisconnectPolicy, client_gone, until_disconnect


class RunOutputResponse(Response):
    """The run's :class:`RunOutput` as JSON (200) once it ended; nothing if the client went first."""

    media_type = "application/json"

    def __init__(self, stream: RunStream, on_disconnect: DisconnectPolicy) -> None:
        super().__init__(status_code=200)
        self.stream = stream
        self.on_disconnect = on_disconnect
        self.gone = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A plain task, not a task group: an error reading the run reaches the error handlers as is.
        watcher = asyncio.get_running_loop().create_task(
            self._watch(receive), name=f"tether-watch-{self.stream.run_id}"
        )
        try:
            output = await self.stream.collect()
        finally:
            watcher.cancel()
        if not self.gone:
            with contextlib.suppress(OSError):  # gone after the run ended (ASGI 2.4 servers raise it)
                await JSONResponse(output.model_dump(mode="json"))(scope, receive, send)

    async def _watch(self, receive: Receive) -> None:
        await until_disconnect(receive)
        self.gone = True
        client_gone(self.stream, self.on_disconnect)

"""The non-streaming answer of ``POST /agents/{agent_id}/runs``: the RunOutput, once the run ended.

As for a stream, the run is read to its end by a task the server owns (:class:`._sse.Relays`), and
the response watches the connection meanwhile: a client that goes away first gets the
``on_disconnect`` policy (:mod:`._disconnect`), so a run nobody waits for any more is not left
generating (and billing) upstream. With ``"cancel"`` the run stops at once; with ``"continue"`` it
finishes in the background, its answer dropped. Either way the request ends when the client leaves.
"""

from __future__ import annotations

import asyncio
import contextlib

from fastapi.responses import JSONResponse
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .._run import RunOutput, RunStream
from ._disconnect import DisconnectPolicy, client_gone, until_disconnect
from ._errors import logger
from ._sse import Relays


async def _read(stream: RunStream) -> RunOutput:
    """The run's output; a KeyboardInterrupt or SystemExit raised inside the run (which ends it with a
    RunError) is logged here, not raised in a server task, where it would stop the server's loop."""
    try:
        return await stream.collect()
    except (KeyboardInterrupt, SystemExit) as exc:
        logger.error("run %s raised %s; it ended with a RunError", stream.run_id, type(exc).__name__)
        assert stream.output is not None
        return stream.output


class RunOutputResponse(Response):
    """The run's :class:`RunOutput` as JSON (200) once it ended; nothing if the client went first."""

    media_type = "application/json"

    def __init__(self, stream: RunStream, relays: Relays, on_disconnect: DisconnectPolicy) -> None:
        super().__init__(status_code=200)
        self.stream = stream
        self.relays = relays
        self.on_disconnect = on_disconnect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        run_id = self.stream.run_id
        run = self.relays.spawn(_read(self.stream), f"tether-collect-{run_id}")
        watcher = asyncio.get_running_loop().create_task(
            until_disconnect(receive), name=f"tether-watch-{run_id}"
        )
        try:
            await asyncio.wait((run, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not run.done():
                run.add_done_callback(self._log_failure)  # nobody else will look at the run's end now
        if run.done():
            output = run.result()  # an error reading the run reaches the app's error handlers
            with contextlib.suppress(OSError):  # gone as the run ended (ASGI 2.4 servers raise it)
                await JSONResponse(output.model_dump(mode="json"))(scope, receive, send)
            return
        client_gone(self.stream, self.on_disconnect)
        watcher.result()  # None: the client has gone (or what receive() raised)

    def _log_failure(self, run: asyncio.Task[RunOutput]) -> None:
        if not run.cancelled() and (error := run.exception()) is not None:
            logger.error("reading run %s failed after its client left", self.stream.run_id, exc_info=error)

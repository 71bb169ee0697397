"""What the server does when a client goes away before its run ended: the ``on_disconnect`` policy.

``"cancel"`` (the default): the run is cancelled with ``source="consumer"`` and the reason
``"client disconnected"``; it stops at once, closes its model stream and is stored CANCELLED.
``"continue"``: the run finishes in the background, fetchable with GET and cancellable with POST cancel.
Both answers of ``POST /agents/{agent_id}/runs`` apply it: the event stream (:mod:`._sse`) and the
RunOutput sent once the run ended (:mod:`._collect`). Each watches the connection with
:func:`until_disconnect` while the run goes on, and calls :func:`client_gone` when it closes.
"""

from __future__ import annotations

from typing import Literal

from starlette.types import Receive

from .._run import RunStream

DisconnectPolicy = Literal["cancel", "continue"]
REASON = "client disconnected"


async def until_disconnect(receive: Receive) -> None:
    """Return once the client has closed the connection (ASGI ``http.disconnect``).

    Call it only after the request body was read: any other message is dropped.
    """
    while (await receive())["type"] != "http.disconnect":
        pass


def client_gone(stream: RunStream, policy: DisconnectPolicy) -> None:
    """Apply ``policy`` to the run of a client that went away (does not wait for the run to end)."""
    if policy == "cancel":
        stream.handle.request_cancel(REASON, "consumer")

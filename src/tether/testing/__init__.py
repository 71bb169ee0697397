"""The test kit: a scripted model and a loopback OpenAI-compatible server, for your tests too.

Example::

    from tether.testing import LoopbackServer, Reply, ScriptedModel

    with LoopbackServer(Reply(chunks=["Hi", " there"], pace=0.01)) as server:
        agent = Agent(model=OpenAIChat(id="loopback", base_url=server.base_url, api_key="test"))
"""

from ._demo import demo_model, story_chunks
from ._loopback import LoopbackServer, RecordedRequest, Reply, ScriptedToolCall
from ._scripted import ScriptedModel

__all__ = [
    "LoopbackServer",
    "RecordedRequest",
    "Reply",
    "ScriptedModel",
    "ScriptedToolCall",
    "demo_model",
    "story_chunks",
]
